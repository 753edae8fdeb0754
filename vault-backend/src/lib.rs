//! One Backup Key Vault replica: the OPAQUE server, the per-account guess
//! counter, sealed durable records, and the mutually authenticated QUIC
//! listener the gateways talk to.
//!
//! Layering: [`account`] is the pure record state machine; [`store`] makes its
//! transitions durable (one fsync'd redb transaction each); [`service`] runs
//! OPAQUE around them and never answers before the store has committed;
//! [`server`] only moves frames between QUIC streams and the service.

pub mod account;
pub mod config;
pub mod error;
pub mod observability;
pub mod pki;
pub mod raft;
pub mod replica;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;

pub use error::VaultError;

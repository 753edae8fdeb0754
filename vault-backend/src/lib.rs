//! One Backup Key Vault replica: the OPAQUE server, the per-account guess
//! counter, sealed durable records, and the mutually authenticated QUIC
//! listener the gateways talk to.
//!
//! Layering: [`account`] is the pure record state machine; [`raft`] replicates
//! its transitions as log entries across the cluster (openraft over redb,
//! QUIC peer links); [`ledger`] is the service's view of that (commit on a
//! majority, linearizable reads, "ask the leader"); [`service`] runs OPAQUE
//! around it and never answers before the ledger has committed; [`server`]
//! only moves frames between QUIC streams and the service; [`replica`] wires
//! a replica together from its config and state folder.

pub mod account;
pub mod admin;
pub mod config;
pub mod error;
pub mod keyprotect;
pub mod ledger;
pub mod memory_ledger;
pub mod pending;
pub mod provision;
pub mod raft;
pub mod replica;
pub mod request;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

pub use error::VaultError;

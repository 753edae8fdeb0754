//! The public gateway ("ChatD"): QUIC + TLS 1.3 endpoint, Noise device
//! authentication bound to the connection, and relaying of each request,
//! tagged with the authenticated account id, to the vault.
//!
//! The gateway holds no user secrets: everything that could reveal a password
//! or key is protected end to end by OPAQUE between client and vault.

pub mod admin;
pub mod admission;
pub mod budget;
pub mod config;
pub mod connections;
pub mod health;
pub mod keys;
pub mod placement;
pub mod relay;
pub mod retry;
pub mod server;
pub mod telemetry;
pub mod udp;
pub mod vault_client;

//! The system under test: the whole stack on loopback ([`local_stack`]),
//! the `local-stack` command built on it, the helpers the whole-system
//! tests share ([`helpers`]), and how those tests find the other packages'
//! binaries ([`bins`]). The tests themselves (`tests/`) drive real QUIC,
//! Noise, OPAQUE, Raft and redb, and real processes where they kill one.
//!
//! Must never: be a dependency of a production crate (gateway, vault
//! replica, client); listen beyond loopback.

pub mod bins;
pub mod chaos;
pub mod gateway_process;
pub mod helpers;
pub mod local_stack;
pub mod netsplit;
pub mod softhsm;

pub use local_stack::{LocalStack, StackOptions, PROFILE_FILE};

//! What the servers (vault replica, gateway) and the tools (client, load
//! generator, local stack) share and that is not protocol: certificate
//! files and TLS configurations ([`pki`]), owner-only files ([`files`]),
//! logging and metrics set-up ([`observability`]), the servers' counted
//! allocator ([`heap`]), and closing a QUIC
//! endpoint ([`quic`]).
//!
//! Must never: hold protocol logic or message formats (those live in
//! `protocol-spec`), or depend on a server crate. The phone's client takes
//! only [`files`] and [`tls`] (`default-features = false`), so nothing here
//! that a phone does not need may move into those modules.

#[cfg(feature = "cli")]
pub mod cli;
pub mod files;
#[cfg(feature = "observability")]
pub mod heap;
#[cfg(feature = "observability")]
pub mod observability;
#[cfg(feature = "pki")]
pub mod pki;
#[cfg(feature = "quic")]
pub mod quic;
pub mod report;
#[cfg(feature = "tls")]
pub mod tls;

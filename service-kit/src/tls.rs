//! The one rustls crypto provider of the workspace: aws-lc-rs, with the
//! post-quantum hybrid X25519MLKEM768 preferred and X25519 as the fallback
//! (SPEC §2). Every TLS endpoint (phone to gateway, gateway to vault,
//! replica to replica) builds its configuration from [`crypto_provider`].
//!
//! Must never: offer a key exchange outside [`KX_GROUPS`] (a classical-only
//! group first would let an active attacker downgrade a phone that supports
//! the hybrid; P-256 and P-384 are left out because nothing here needs
//! them), or pick a provider from process-wide state (rustls panics when two
//! are compiled in and none was installed).

use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::NamedGroup;

/// The key-exchange groups offered and accepted, most preferred first.
pub const KX_GROUPS: [NamedGroup; 2] = [NamedGroup::X25519MLKEM768, NamedGroup::X25519];

/// The workspace's provider: aws-lc-rs's cipher suites, key exchange
/// restricted to [`KX_GROUPS`] in that order.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    with_groups(&[
        aws_lc_rs::kx_group::X25519MLKEM768,
        aws_lc_rs::kx_group::X25519,
    ])
}

/// The workspace's provider with only classical X25519: for measuring what
/// the hybrid costs (`loadtest floor`) and for testing the fallback. Not
/// for serving.
pub fn classical_provider() -> Arc<CryptoProvider> {
    with_groups(&[aws_lc_rs::kx_group::X25519])
}

fn with_groups(groups: &[&'static dyn SupportedKxGroup]) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: groups.to_vec(),
        ..aws_lc_rs::default_provider()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_offers_the_hybrid_first_then_x25519_only() {
        let names: Vec<NamedGroup> = crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(names, KX_GROUPS);
        let classical: Vec<NamedGroup> = classical_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(classical, [NamedGroup::X25519]);
    }
}

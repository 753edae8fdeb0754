//! Where a request goes, as plain functions: which cluster holds an
//! account (rendezvous hashing over the configured cluster names), and
//! whether a replica's "ask the leader at A" may be followed.
//!
//! Must never: move an account between existing clusters when one is
//! added, or follow a redirect to an address outside the cluster's
//! membership (a compromised replica must not steer the gateway).

use std::net::SocketAddr;

use sha2::{Digest, Sha256};

/// Rendezvous (highest random weight) hashing: the index of the cluster
/// whose `SHA-256(len(name) || name || account)` is highest. Adding a cluster
/// moves only the accounts that now score highest on it (about 1/n of them).
pub fn place<'a>(account_id: &str, names: impl Iterator<Item = &'a str>) -> usize {
    let mut best = (0usize, [0u8; 32]);
    for (i, name) in names.enumerate() {
        let mut h = Sha256::new();
        h.update((name.len() as u32).to_be_bytes());
        h.update(name.as_bytes());
        h.update(account_id.as_bytes());
        let score: [u8; 32] = h.finalize().into();
        if i == 0 || score > best.1 {
            best = (i, score);
        }
    }
    best.0
}

/// Where a "not the leader" answer from `from` may send the next attempt:
/// only to another replica of this cluster (`member`: configured, or in the
/// membership learned from its replicas). A replica naming any other
/// address (misconfigured, or of another cluster, whose replicas hold
/// certificates of the same fleet) would otherwise have this cluster's
/// accounts served by a cluster that does not hold them.
pub fn redirect(
    member: impl Fn(SocketAddr) -> bool,
    from: SocketAddr,
    named: Option<SocketAddr>,
) -> Option<SocketAddr> {
    named.filter(|n| *n != from && member(*n))
}

#[cfg(test)]
mod tests {
    use super::{place, redirect};
    use crate::vault_client::ClusterConfig;

    #[test]
    fn redirects_go_only_to_another_configured_replica_of_the_cluster() {
        let addr = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        let cluster = ClusterConfig {
            name: "east".into(),
            replicas: vec![addr(7801), addr(7802), addr(7803)],
            server_name: "replica.bkv.internal".into(),
        };
        let member = |a| cluster.replicas.contains(&a);
        assert_eq!(
            redirect(member, addr(7801), Some(addr(7802))),
            Some(addr(7802))
        );
        assert_eq!(redirect(member, addr(7801), Some(addr(7801))), None);
        assert_eq!(redirect(member, addr(7801), None), None);
        // A replica of another cluster, or any other address.
        assert_eq!(redirect(member, addr(7801), Some(addr(9801))), None);
    }

    #[test]
    fn rendezvous_moves_only_accounts_that_land_on_a_new_cluster() {
        let two = ["east", "west"];
        let three = ["east", "west", "north"];
        let mut moved = 0;
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let a = format!("account-{i}");
            let before = place(&a, two.iter().copied());
            let after = place(&a, three.iter().copied());
            counts[after] += 1;
            if before != after {
                assert_eq!(after, 2, "an account moved between existing clusters");
                moved += 1;
            }
        }
        // About a third moves, all of it to the new cluster; load is even.
        assert!((800..1200).contains(&moved), "{moved}");
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}

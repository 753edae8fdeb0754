//! A replica as the Raft membership records it: the address its peers reach
//! it on, and the addresses gateways and operators reach it on. Keeping them
//! in the membership itself, not in each replica's config, is what lets a
//! `NotLeader` answer and a gateway's replica list follow a membership
//! change: add a learner, promote it, remove a member.
//!
//! Encoded as one string, so that what release 0.1.0 wrote (openraft's
//! `BasicNode { addr }`, a bare peer address) keeps its meaning: a bare
//! address is a member known only by its peer address (its gateway-facing
//! address then comes from the replica's config); anything else is a JSON
//! object with a version field. Release 0.1.0 reads the JSON form as an
//! address it cannot connect to, so membership changes wait until every
//! replica runs 0.2.0 (README, "Upgrading").
//!
//! Must never: change the meaning of a field of version 1 (add fields, which
//! older readers ignore).

use std::fmt;
use std::net::SocketAddr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One member of a cluster's Raft group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaNode {
    /// Its peer (Raft) address, `host:port`.
    pub peer: String,
    /// Its gateway-facing address.
    pub serve: Option<SocketAddr>,
    /// Its admin HTTP address.
    pub admin: Option<SocketAddr>,
}

impl ReplicaNode {
    /// A member with all three addresses.
    pub fn new(peer: SocketAddr, serve: SocketAddr, admin: Option<SocketAddr>) -> Self {
        Self {
            peer: peer.to_string(),
            serve: Some(serve),
            admin,
        }
    }

    /// A member known by its peer address alone (tests and benchmarks of
    /// the Raft group without gateways).
    pub fn peer_only(peer: SocketAddr) -> Self {
        Self {
            peer: peer.to_string(),
            serve: None,
            admin: None,
        }
    }

    /// Peer-only members from a table of peer addresses.
    pub fn peers(
        peers: &std::collections::BTreeMap<u64, SocketAddr>,
    ) -> std::collections::BTreeMap<u64, Self> {
        peers
            .iter()
            .map(|(id, a)| (*id, Self::peer_only(*a)))
            .collect()
    }

    /// The peer address, if it is one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.parse().ok()
    }
}

impl fmt::Display for ReplicaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.peer)
    }
}

/// The JSON form (version 1).
#[derive(Serialize, Deserialize)]
struct V1 {
    v: u32,
    peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    serve: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin: Option<SocketAddr>,
}

impl Serialize for ReplicaNode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.serve.is_none() && self.admin.is_none() {
            return s.serialize_str(&self.peer);
        }
        let json = serde_json::to_string(&V1 {
            v: 1,
            peer: self.peer.clone(),
            serve: self.serve,
            admin: self.admin,
        })
        .map_err(serde::ser::Error::custom)?;
        s.serialize_str(&json)
    }
}

impl<'de> Deserialize<'de> for ReplicaNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if !text.starts_with('{') {
            return Ok(Self {
                peer: text,
                serve: None,
                admin: None,
            });
        }
        let v: V1 = serde_json::from_str(&text).map_err(D::Error::custom)?;
        Ok(Self {
            peer: v.peer,
            serve: v.serve,
            admin: v.admin,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn release_0_1_0_nodes_read_as_peer_addresses() {
        let old = postcard::to_allocvec(&openraft::BasicNode::new("127.0.0.1:7901")).unwrap();
        let n: ReplicaNode = postcard::from_bytes(&old).unwrap();
        assert_eq!(n.peer_addr(), Some("127.0.0.1:7901".parse().unwrap()));
        assert_eq!((n.serve, n.admin), (None, None));
        // And are written back the same way.
        assert_eq!(postcard::to_allocvec(&n).unwrap(), old);
    }

    #[test]
    fn full_nodes_round_trip() {
        let a = |p: u16| SocketAddr::from(([10, 0, 0, 1], p));
        for n in [
            ReplicaNode::new(a(7901), a(7801), Some(a(8001))),
            ReplicaNode::new(a(7901), a(7801), None),
        ] {
            let b = postcard::to_allocvec(&n).unwrap();
            assert_eq!(postcard::from_bytes::<ReplicaNode>(&b).unwrap(), n);
        }
        let bad = postcard::to_allocvec(&"{not json").unwrap();
        assert!(postcard::from_bytes::<ReplicaNode>(&bad).is_err());
    }
}

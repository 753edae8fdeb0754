//! The freshness anchor (DESIGN.md invariant 11): a replica restarted from
//! an older copy of its data folder must not vote or serve as if current,
//! or rolling back disks would hand back guesses that were counted.
//!
//! The anchor records the replica's vote and the last log id it has made
//! durable and acknowledged, behind the key-protection seam (a PKCS#11 token
//! object, or a file in the key folder: `keyprotect::AnchorStore`), sealed
//! under the replica's key so that it cannot be forged. The log store
//! raises it after each durable vote and each durable append batch, before
//! acknowledging (so no acknowledged entry is ever outside it: the window is
//! zero, and one anchor write serves a whole group-committed batch); it is
//! lowered only by a truncation openraft orders, and then before the data.
//! On start, data older than the anchor (a lower vote, or a last log id
//! below the anchored one) is refused: the replica stops, says why, and can
//! only come back as a new member with an empty folder.
//!
//! Must never: acknowledge an append or a vote before the anchor covers
//! it, or accept an anchor it cannot unseal.

use std::cmp::Ordering;
use std::sync::{Arc, Mutex};

use openraft::{LogId, Vote};
use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::keyprotect::{AnchorStore, KeyProtectError, KeyProtector};

/// What the anchor records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// The replica's vote.
    pub vote: Vote<NodeId>,
    /// The last log id it has made durable.
    pub last_log: Option<LogId<NodeId>>,
}

/// Data older than the anchor.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "replica {node}'s data folder is older than its freshness anchor (data: vote {data_vote}, \
     last log {data_log}; anchor in {anchor}: vote {anchor_vote}, last log {anchor_log}): it was \
     restored from an old copy or its disk lost acknowledged writes, so it must not vote or serve; \
     move its data folder away and add the replica back as a new member (README, \"Replacing a \
     replica\")"
)]
pub struct Stale {
    node: NodeId,
    anchor: String,
    data_vote: String,
    data_log: String,
    anchor_vote: String,
    anchor_log: String,
}

/// Why the anchor could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The data folder is older than the anchor.
    #[error(transparent)]
    Stale(#[from] Box<Stale>),
    /// The anchor store failed.
    #[error("freshness anchor: {0}")]
    Store(#[from] KeyProtectError),
    /// The record does not decode or unseal.
    #[error("freshness anchor in {0} is unreadable ({1}); it was not written by this replica")]
    Corrupt(String, String),
}

/// Whether `data` is at least as fresh as `anchored`: its vote is not
/// lower, and its log reaches the anchored log id.
pub fn check(data: &Freshness, anchored: &Freshness) -> bool {
    let vote_ok = matches!(
        data.vote.partial_cmp(&anchored.vote),
        Some(Ordering::Greater | Ordering::Equal)
    );
    vote_ok && data.last_log >= anchored.last_log
}

/// A replica's anchor, open.
pub struct Anchor {
    node: NodeId,
    store: Box<dyn AnchorStore>,
    protector: Arc<dyn KeyProtector>,
    current: Mutex<Freshness>,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor").field("node", &self.node).finish()
    }
}

/// Version of the sealed record.
const RECORD_VERSION: u8 = 1;

fn aad(node: NodeId) -> Vec<u8> {
    format!("bkv freshness anchor v{RECORD_VERSION} replica {node}").into_bytes()
}

fn show_log(l: &Option<LogId<NodeId>>) -> String {
    l.map(|l| format!("{}-{}", l.leader_id.term, l.index))
        .unwrap_or_else(|| "none".into())
}

impl Anchor {
    /// Opens replica `node`'s anchor in `store` and checks `data` (what its
    /// data folder holds) against it. A replica that never had an anchor
    /// (new, or upgraded from release 0.1.0) starts one from `data`.
    pub fn open(
        node: NodeId,
        store: Box<dyn AnchorStore>,
        protector: Arc<dyn KeyProtector>,
        data: Freshness,
    ) -> Result<Self, AnchorError> {
        let corrupt = |e: String| AnchorError::Corrupt(store.describe(), e);
        let anchored = match store.read()? {
            None => None,
            Some(sealed) => {
                let plain = protector
                    .unseal(&sealed, &aad(node))
                    .map_err(|e| corrupt(e.to_string()))?;
                match plain.split_first() {
                    Some((&RECORD_VERSION, body)) => Some(
                        postcard::from_bytes::<Freshness>(body)
                            .map_err(|e| corrupt(e.to_string()))?,
                    ),
                    _ => return Err(corrupt("unknown record version".into())),
                }
            }
        };
        let anchor = Self {
            node,
            current: Mutex::new(anchored.unwrap_or(data)),
            store,
            protector,
        };
        match anchored {
            Some(a) if !check(&data, &a) => {
                return Err(Box::new(Stale {
                    node,
                    anchor: anchor.store.describe(),
                    data_vote: data.vote.to_string(),
                    data_log: show_log(&data.last_log),
                    anchor_vote: a.vote.to_string(),
                    anchor_log: show_log(&a.last_log),
                })
                .into())
            }
            Some(_) => {}
            None => {
                tracing::info!(node, anchor = %anchor.store.describe(), "freshness anchor started");
                anchor.persist(&data)?;
            }
        }
        Ok(anchor)
    }

    /// The anchored state.
    pub fn get(&self) -> Freshness {
        match self.current.lock() {
            Ok(c) => *c,
            Err(p) => *p.into_inner(),
        }
    }

    fn persist(&self, f: &Freshness) -> Result<(), KeyProtectError> {
        let mut plain = vec![RECORD_VERSION];
        plain.extend(postcard::to_allocvec(f).map_err(|e| KeyProtectError::Config(e.to_string()))?);
        let sealed = self.protector.seal(&plain, &aad(self.node))?;
        self.store.write(&sealed)
    }

    /// Applies `change` to the anchored state and writes it if it changed;
    /// returns after the write is durable.
    fn update(&self, change: impl FnOnce(&mut Freshness)) -> Result<(), KeyProtectError> {
        let mut cur = self
            .current
            .lock()
            .map_err(|_| KeyProtectError::Config("anchor lock poisoned".into()))?;
        let mut next = *cur;
        change(&mut next);
        if next != *cur {
            self.persist(&next)?;
            *cur = next;
        }
        Ok(())
    }

    /// The replica durably saved `vote`.
    pub fn saw_vote(&self, vote: Vote<NodeId>) -> Result<(), KeyProtectError> {
        self.update(|f| {
            if matches!(vote.partial_cmp(&f.vote), Some(Ordering::Greater)) {
                f.vote = vote;
            }
        })
    }

    /// The replica durably appended (or, installing a snapshot, jumped to)
    /// entries up to `log_id`.
    pub fn saw_log(&self, log_id: LogId<NodeId>) -> Result<(), KeyProtectError> {
        self.update(|f| {
            if Some(log_id) > f.last_log {
                f.last_log = Some(log_id);
            }
        })
    }

    /// openraft is about to truncate the log after `last_kept` (uncommitted
    /// entries of an old leader); lowered first, so that a crash between
    /// this and the truncation leaves the data ahead of the anchor.
    pub fn will_truncate_to(
        &self,
        last_kept: Option<LogId<NodeId>>,
    ) -> Result<(), KeyProtectError> {
        self.update(|f| {
            if last_kept < f.last_log {
                f.last_log = last_kept;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::testing::log_id;

    use super::*;
    use crate::keyprotect::KeyProtection;

    fn fresh(term: u64, voted: u64, last: u64) -> Freshness {
        Freshness {
            vote: Vote::new_committed(term, voted),
            last_log: Some(log_id(term, voted, last)),
        }
    }

    #[test]
    fn older_data_is_stale() {
        let a = fresh(5, 2, 300);
        assert!(check(&a, &a));
        assert!(check(&fresh(6, 3, 310), &a));
        assert!(!check(&fresh(5, 2, 299), &a), "entries lost");
        assert!(!check(&fresh(4, 2, 300), &a), "vote rolled back");
        let mut earlier = a;
        earlier.vote = Vote::new(5, 2);
        assert!(
            !check(&earlier, &a),
            "the vote before its leader was committed"
        );
        let empty = Freshness {
            vote: Vote::default(),
            last_log: None,
        };
        assert!(!check(&empty, &a), "a wiped folder");
        // A newer term's entries after a truncation are fresher.
        assert!(check(&fresh(6, 1, 200), &fresh(5, 1, 300)));
    }

    #[test]
    // Forges and tears files on purpose.
    #[allow(clippy::disallowed_methods)]
    fn the_anchor_survives_a_reopen_and_refuses_older_data() {
        let dir = tempfile::tempdir().unwrap();
        let kp = KeyProtection::default();
        let open = |data: Freshness| {
            let protector: Arc<dyn KeyProtector> = Arc::from(kp.open(dir.path(), true).unwrap());
            Anchor::open(
                7,
                kp.open_anchor(dir.path(), "freshness-7").unwrap(),
                protector,
                data,
            )
        };
        let a = open(fresh(1, 1, 10)).unwrap();
        a.saw_vote(Vote::new_committed(2, 3)).unwrap();
        a.saw_log(log_id(2, 3, 20)).unwrap();
        a.saw_log(log_id(2, 3, 15)).unwrap(); // never lowers
        drop(a);
        let now = fresh(2, 3, 20);
        assert_eq!(open(now).unwrap().get(), now);
        let err = open(fresh(1, 1, 10)).unwrap_err().to_string();
        assert!(err.contains("older than its freshness anchor"), "{err}");
        // A truncation lowers it, before the data.
        let a = open(now).unwrap();
        a.will_truncate_to(Some(log_id(2, 3, 18))).unwrap();
        drop(a);
        assert!(open(fresh(2, 3, 18)).is_ok());
        // Another replica's anchor, or a forged file, does not open.
        std::fs::write(dir.path().join("freshness-7.anchor"), b"forged").unwrap();
        let err = open(now).unwrap_err().to_string();
        assert!(err.contains("no valid record"), "{err}");
    }
}

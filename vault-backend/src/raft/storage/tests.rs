//! Every persisted value through a real close and reopen; openraft's
//! storage suite.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use openraft::testing::log_id;
use openraft::Membership;

use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
    Vote,
};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::gated::Db;

use super::db::*;
use super::log_store::*;
use super::state_machine::*;
use crate::account::Authorization;
use crate::raft::member::ReplicaNode;
use crate::raft::Proposal;
use crate::raft::{codec, Command, NodeId, TypeConfig};
use crate::store::ACCOUNTS;

type E = Entry<TypeConfig>;

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> E {
    Entry {
        log_id: log_id(term, 1, index),
        payload,
    }
}

fn register(account: &str, id: u8) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Proposal::current(Command::Register {
        account_id: account.into(),
        authorization: Authorization::None,
        registration_id: vec![id; 16],
        sealed_record: vec![id; 40],
    }))
}

fn v2(c: Command) -> EntryPayload<TypeConfig> {
    EntryPayload::Normal(Proposal::new(2, c))
}

fn start_at(account: &str, now_ms: u64) -> Command {
    Command::LoginStartAt {
        account_id: account.into(),
        rules: crate::account::GuessRules {
            max_attempts: 2,
            pacing: crate::account::Pacing::default(),
            now_ms,
            session_ttl_ms: 120_000,
        },
    }
}

fn membership(ids: &[u64]) -> EntryPayload<TypeConfig> {
    let nodes: BTreeMap<u64, ReplicaNode> = ids
        .iter()
        .map(|i| {
            let a = |p: u64| std::net::SocketAddr::from(([127, 0, 0, 1], (p + i) as u16));
            (*i, ReplicaNode::new(a(7900), a(7800), None))
        })
        .collect();
    EntryPayload::Membership(Membership::new(vec![ids.iter().copied().collect()], nodes))
}

/// Everything openraft can ask of a store after a restart.
#[derive(Debug, PartialEq)]
struct Seen {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    log: (Option<LogId<NodeId>>, Option<LogId<NodeId>>),
    entries: Vec<String>,
    applied: (Option<LogId<NodeId>>, StoredMembership<NodeId, ReplicaNode>),
    snapshot: Option<(SnapshotMeta<NodeId, ReplicaNode>, Vec<u8>)>,
    accounts: Vec<(String, Vec<u8>)>,
}

async fn seen(db: &Arc<Db>) -> Seen {
    let mut log = LogStore::new(db.clone(), false).unwrap();
    let mut sm = StateMachine::new(db.clone()).unwrap();
    let st = log.get_log_state().await.unwrap();
    let entries = log
        .try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    let snapshot = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .map(|s| (s.meta, s.snapshot.into_inner()));
    let txn = db.begin_read().unwrap();
    let accounts = rows(&txn.open_table(ACCOUNTS).unwrap());
    Seen {
        vote: log.read_vote().await.unwrap(),
        committed: log.read_committed().await.unwrap(),
        log: (st.last_purged_log_id, st.last_log_id),
        entries,
        applied: sm.applied_state().await.unwrap(),
        snapshot,
        accounts,
    }
}

/// A snapshot built as openraft builds one.
async fn build(sm: &mut StateMachine) -> openraft::storage::Snapshot<TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Every account row, copied out.
fn rows(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Vec<(String, Vec<u8>)> {
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value().to_owned(), v.value().to_vec())
        })
        .collect()
}

/// Closes the database for real: every handle is dropped, and redb lets
/// the file be opened again only once the last one is gone.
fn reopen(db: Arc<Db>, path: &Path) -> Arc<Db> {
    assert_eq!(Arc::strong_count(&db), 1, "a handle still holds the file");
    drop(db);
    open_database(path).unwrap()
}

#[tokio::test]
async fn every_persisted_value_survives_a_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    let db = open_database(&path).unwrap();
    {
        let mut log = LogStore::new(db.clone(), false).unwrap();
        let mut sm = StateMachine::new(db.clone()).unwrap();
        log.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        let first: Vec<E> = vec![
            entry(1, 1, membership(&[1, 2, 3])),
            entry(2, 2, EntryPayload::Blank),
            entry(2, 3, register("alice", 1)),
            entry(2, 4, register("bob", 2)),
            entry(
                3,
                5,
                EntryPayload::Normal(Proposal::current(Command::LoginStart {
                    account_id: "alice".into(),
                    max_attempts: 10,
                })),
            ),
            entry(3, 6, register("carol", 3)),
            // Version 2's commands and the row fields they write: pacing's
            // last guess time, a last guess on hold with its session, a
            // pending replacement.
            entry(3, 7, v2(Command::UseVersion { version: 2 })),
            entry(3, 8, v2(start_at("bob", 1_000))),
            entry(3, 9, v2(start_at("bob", 2_000))),
            entry(
                3,
                10,
                v2(Command::HoldSession {
                    account_id: "bob".into(),
                    seq: 2,
                    session_id: vec![9; 16],
                    sealed_state: vec![8; 50],
                }),
            ),
            entry(
                3,
                11,
                v2(Command::RegisterAt {
                    account_id: "carol".into(),
                    authorization: Authorization::ReplaceExisting,
                    registration_id: vec![7; 16],
                    sealed_record: vec![7; 40],
                    replace: crate::account::ReplaceRequest {
                        device_key: vec![6; 32],
                        now_ms: 3_000,
                        wait_ms: 604_800_000,
                    },
                }),
            ),
        ];
        log.write_entries(first.clone()).await.unwrap();
        log.save_committed(Some(log_id(3, 1, 11))).await.unwrap();
        sm.apply(first).await.unwrap();
        build(&mut sm).await;
        log.purge(log_id(2, 1, 4)).await.unwrap();
        // Written after the snapshot and purge, one of them then truncated.
        log.write_entries(vec![
            entry(3, 12, register("dave", 4)),
            entry(3, 13, register("erin", 5)),
            entry(3, 14, register("frank", 6)),
        ])
        .await
        .unwrap();
        log.truncate(log_id(3, 1, 14)).await.unwrap();
    }
    let before = seen(&db).await;
    assert_eq!(before.log, (Some(log_id(2, 1, 4)), Some(log_id(3, 1, 13))));
    assert_eq!(before.entries.len(), 9, "{:?}", before.entries);
    assert_eq!(before.accounts.len(), 3);
    let row = |name: &str| {
        let (_, b) = before.accounts.iter().find(|(k, _)| k == name).unwrap();
        codec::decode_row(b).unwrap()
    };
    let bob = row("bob");
    assert_eq!(
        (bob.version, bob.last_guess_ms, bob.guesses_used),
        (2, 2_000, 2)
    );
    assert_eq!(bob.hold.unwrap().session_id, vec![9; 16]);
    let pending = row("carol").replacement.unwrap();
    assert_eq!(pending.completes_ms, 3_000 + 604_800_000);
    assert!(before.snapshot.is_some());
    let db = reopen(db, &path);
    assert_eq!(seen(&db).await, before);
    // And a second time, with nothing written in between.
    let db = reopen(db, &path);
    assert_eq!(seen(&db).await, before);
}

#[tokio::test]
async fn an_installed_snapshot_survives_a_close_and_reopen() {
    for version in [codec::LEGACY_VERSION, codec::MAX_VERSION] {
        let dir = tempfile::tempdir().unwrap();
        // A snapshot built on one replica, in the cluster's version ...
        let src = open_database(&dir.path().join("a.redb")).unwrap();
        let mut entries = vec![entry(1, 1, membership(&[1, 2, 3]))];
        if version > 0 {
            let up = Command::UseVersion { version };
            entries.push(entry(1, 2, EntryPayload::Normal(Proposal::current(up))));
        } else {
            entries.push(entry(1, 2, EntryPayload::Blank));
        }
        entries.push(entry(1, 3, register("alice", 1)));
        entries.push(entry(1, 4, register("bob", 2)));
        let mut sm = StateMachine::new(src.clone()).unwrap();
        sm.apply(entries).await.unwrap();
        assert_eq!(sm.active_version().get(), version);
        let snap = build(&mut sm).await;
        assert_eq!(
            codec::snapshot_version(snap.snapshot.get_ref()).unwrap().0,
            version
        );
        // ... installed on an empty one, as openraft does: install, then purge.
        let path = dir.path().join("b.redb");
        let db = open_database(&path).unwrap();
        {
            let mut sm = StateMachine::new(db.clone()).unwrap();
            let mut log = LogStore::new(db.clone(), false).unwrap();
            sm.install_snapshot(&snap.meta, snap.snapshot)
                .await
                .unwrap();
            assert_eq!(sm.active_version().get(), version);
            log.purge(log_id(1, 1, 4)).await.unwrap();
        }
        let before = seen(&db).await;
        assert_eq!(before.log, (Some(log_id(1, 1, 4)), Some(log_id(1, 1, 4))));
        assert_eq!(before.applied.0, Some(log_id(1, 1, 4)));
        assert_eq!(before.accounts.len(), 2);
        let db = reopen(db, &path);
        assert_eq!(seen(&db).await, before);
        let sm = StateMachine::new(db.clone()).unwrap();
        assert_eq!(sm.active_version().get(), version, "survives the reopen");
        let row = crate::store::Store::from_db(db)
            .get("alice")
            .unwrap()
            .unwrap();
        assert_eq!(row.version, version);
    }
}

/// Rows of `n` accounts with `record` bytes of sealed record each.
async fn filled(db: &Arc<Db>, n: u32, record: usize) -> StateMachine {
    let mut sm = StateMachine::new(db.clone()).unwrap();
    let mut entries = vec![entry(1, 1, membership(&[1, 2, 3]))];
    for i in 0..n {
        entries.push(entry(
            1,
            2 + u64::from(i),
            EntryPayload::Normal(Proposal::current(Command::Register {
                account_id: format!("account-{i:05}"),
                authorization: Authorization::None,
                registration_id: i.to_le_bytes().repeat(4),
                sealed_record: vec![i as u8; record],
            })),
        ));
    }
    sm.apply(entries).await.unwrap();
    sm
}

#[tokio::test]
async fn a_streamed_snapshot_is_byte_for_byte_the_released_layout() {
    // Replicas of the older release install what this one sends (and the
    // other way round) during an upgrade: the snapshot encoded from the
    // table must be exactly the layout's serde encoding.
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(&dir.path().join("a.redb")).unwrap();
    let mut sm = filled(&db, 300, 200).await;
    let (last_applied, membership) = sm.applied_state().await.unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(ACCOUNTS).unwrap();
    let accounts = rows(&t);
    assert_eq!(accounts.len(), 300);
    let v0 = codec::encode_snapshot(
        codec::LEGACY_VERSION,
        &SnapshotV0 {
            last_applied,
            membership: membership.clone(),
            accounts: accounts.clone(),
        },
    )
    .unwrap();
    let streamed = encode_snapshot_of(&t, codec::LEGACY_VERSION, &last_applied, &membership);
    assert_eq!(streamed.unwrap(), v0);
    for version in 1..=codec::MAX_VERSION {
        let v = codec::encode_snapshot(
            version,
            &SnapshotV1 {
                last_applied,
                membership: membership.clone(),
                accounts: accounts.clone(),
                command_version: version,
            },
        )
        .unwrap();
        let streamed = encode_snapshot_of(&t, version, &last_applied, &membership).unwrap();
        assert_eq!(streamed.len(), streamed.capacity(), "sized exactly");
        assert_eq!(streamed, v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_while_entries_are_applied_holds_exactly_what_its_log_id_says() {
    // openraft builds snapshots in a task of their own while the state
    // machine goes on applying. Every guess is one entry here, so a
    // snapshot taken at log index i must hold exactly i - 2 guesses: more,
    // and a follower installing it counts the later ones twice.
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(&dir.path().join("a.redb")).unwrap();
    let mut sm = StateMachine::new(db.clone()).unwrap();
    sm.apply(vec![
        entry(1, 1, membership(&[1, 2, 3])),
        entry(1, 2, register("alice", 1)),
    ])
    .await
    .unwrap();
    let mut applier = sm.clone();
    let guesses = tokio::spawn(async move {
        for i in 0..400u64 {
            let start = Command::LoginStart {
                account_id: "alice".into(),
                max_attempts: 1_000_000,
            };
            let e = entry(1, 3 + i, EntryPayload::Normal(Proposal::current(start)));
            applier.apply(vec![e]).await.unwrap();
        }
    });
    let mut built = 0;
    while !guesses.is_finished() {
        let snap = build(&mut sm).await;
        let index = snap.meta.last_log_id.unwrap().index;
        let data = snap.snapshot.into_inner();
        let (version, body) = codec::snapshot_version(&data).unwrap();
        let accounts = if version == codec::LEGACY_VERSION {
            postcard::from_bytes::<SnapshotV0<Vec<(String, Vec<u8>)>>>(body)
                .unwrap()
                .accounts
        } else {
            postcard::from_bytes::<SnapshotV1<Vec<(String, Vec<u8>)>>>(body)
                .unwrap()
                .accounts
        };
        let row = decode_row(&accounts[0].1).unwrap();
        assert_eq!(
            row.guesses_counted,
            index - 2,
            "snapshot {built} at index {index}"
        );
        built += 1;
    }
    guesses.await.unwrap();
    assert!(built > 0);
}

#[tokio::test]
async fn a_snapshot_of_many_chunks_survives_a_close_and_reopen_and_an_old_one_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    let db = open_database(&path).unwrap();
    // Three chunks or more, the last one short.
    let mut sm = filled(&db, 700, 200).await;
    let snap = build(&mut sm).await;
    let data = snap.snapshot.into_inner();
    assert!(data.len() > 2 * SNAPSHOT_CHUNK && data.len() % SNAPSHOT_CHUNK != 0);
    drop(sm);
    let db = reopen(db, &path);
    let mut sm = StateMachine::new(db.clone()).unwrap();
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot.into_inner(), data);
    // A file of release 0.3.0 holds its snapshot as one value: still read,
    // and replaced by chunks at the next snapshot.
    let txn = db.begin_write().unwrap();
    {
        txn.open_table(SNAPSHOT_CHUNKS)
            .unwrap()
            .retain(|_, _| false)
            .unwrap();
        let mut t = txn.open_table(SNAPSHOT).unwrap();
        t.insert(K_SNAP_DATA, data.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    drop(sm);
    let db = reopen(db, &path);
    let mut sm = StateMachine::new(db.clone()).unwrap();
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.snapshot.into_inner(), data);
    build(&mut sm).await;
    let txn = db.begin_read().unwrap();
    let old = txn.open_table(SNAPSHOT).unwrap();
    assert!(
        old.get(K_SNAP_DATA).unwrap().is_none(),
        "the old value is gone"
    );
    let chunks = txn.open_table(SNAPSHOT_CHUNKS).unwrap().len().unwrap();
    assert_eq!(chunks as usize, data.len().div_ceil(SNAPSHOT_CHUNK));
}

#[tokio::test]
async fn a_file_of_a_newer_storage_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    let db = open_database(&path).unwrap();
    let txn = db.begin_write().unwrap();
    FORMAT.write(&txn, &(codec::STORAGE_FORMAT + 1)).unwrap();
    txn.commit().unwrap();
    drop(db);
    let err = open_database(&path).unwrap_err().to_string();
    assert!(err.contains("newer release"), "{err}");
}

struct OnDisk;

impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
    for OnDisk
{
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), SErr> {
        let dir = tempfile::tempdir().map_err(w)?;
        let db = open_database(&dir.path().join("vault.redb")).map_err(w)?;
        let log = LogStore::new(db.clone(), false).map_err(w)?;
        Ok((dir, log, StateMachine::new(db)?))
    }
}

/// openraft's own conformance suite for storage implementations.
#[test]
fn openraft_storage_suite() {
    openraft::testing::Suite::test_all(OnDisk).unwrap();
}

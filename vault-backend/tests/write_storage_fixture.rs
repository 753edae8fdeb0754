#![allow(clippy::unwrap_used)]
//! Writes `tests/fixtures/<release>/vault-redb.txt`: every row of a replica
//! database after a fixed history (vote, a log with every command, applies,
//! a snapshot, a purge, more appends), as this release encodes it.
//!
//! Run by hand when a release changes an encoding:
//! `cargo test -p vault-backend --test write_storage_fixture -- --ignored`.
//! The fixture of an older release is never rewritten: `storage_upgrade.rs`
//! checks that the current release reads it.

use std::collections::BTreeMap;
use std::io::Write as _;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftSnapshotBuilder, Vote,
};
use prost::Message;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use vault_backend::account::{Authorization, StoredAccount, STATE_ACTIVE};
use vault_backend::raft::codec::MAX_VERSION;
use vault_backend::raft::member::ReplicaNode;
use vault_backend::raft::storage::{open_database, LogStore, StateMachine};
use vault_backend::raft::{Command, Proposal};

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(
    term: u64,
    index: u64,
    payload: EntryPayload<vault_backend::raft::TypeConfig>,
) -> Entry<vault_backend::raft::TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

#[tokio::test]
#[ignore = "writes a fixture; run by hand for a new release"]
async fn write_fixture() {
    let release = env!("CARGO_PKG_VERSION");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    let db = open_database(&path).unwrap();
    let mut log = LogStore::new(db.clone(), false).unwrap();
    let mut sm = StateMachine::new(db.clone()).unwrap();

    log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    let reg = |acct: &str, id: u8, auth: Authorization| {
        normal(Command::Register {
            account_id: acct.into(),
            authorization: auth,
            registration_id: vec![id; 16],
            sealed_record: vec![0xA0 | id; 24],
        })
    };
    let start = |acct: &str| {
        normal(Command::LoginStart {
            account_id: acct.into(),
            max_attempts: 3,
        })
    };
    // Carol's row before her last guess, as the leader holds it.
    let held = StoredAccount {
        state: STATE_ACTIVE,
        registration_id: vec![5; 16],
        guesses_used: 2,
        sealed_record: vec![0xA5; 24],
        guesses_counted: 2,
        version: 0,
        ..Default::default()
    };
    let a = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
    let members = BTreeMap::from([(1u64, ReplicaNode::new(a(7901), a(7801), Some(a(8001))))]);
    let entries = vec![
        entry(
            1,
            1,
            EntryPayload::Membership(Membership::new(vec![[1u64].into()], members)),
        ),
        // The cluster switches to the newest command version at once.
        entry(
            2,
            2,
            EntryPayload::Normal(Proposal::current(Command::UseVersion {
                version: MAX_VERSION,
            })),
        ),
        entry(2, 3, reg("alice", 1, Authorization::None)),
        entry(2, 4, start("alice")),
        entry(
            2,
            5,
            normal(Command::LoginVerified {
                account_id: "alice".into(),
                registration_id: vec![1; 16],
                held: None,
                seq: 1,
            }),
        ),
        entry(2, 6, reg("bob", 2, Authorization::None)),
        entry(2, 7, reg("bob", 3, Authorization::ReplaceExisting)),
        entry(
            2,
            8,
            reg(
                "bob",
                4,
                Authorization::VerifiedLogin {
                    registration_id: vec![3; 16],
                },
            ),
        ),
        entry(2, 9, reg("carol", 5, Authorization::None)),
        entry(2, 10, start("carol")),
        entry(2, 11, start("carol")),
        entry(2, 12, start("carol")),
        entry(
            2,
            13,
            normal(Command::LoginVerified {
                account_id: "carol".into(),
                registration_id: vec![5; 16],
                held: Some(held.encode_to_vec()),
                seq: 3,
            }),
        ),
        entry(2, 14, reg("dave", 6, Authorization::None)),
        entry(
            2,
            15,
            normal(Command::Disable {
                account_id: "dave".into(),
                registration_id: vec![6; 16],
            }),
        ),
        entry(2, 16, reg("erin", 7, Authorization::None)),
        entry(2, 17, start("erin")),
    ];
    let (applied, later): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|e| e.log_id.index <= 15);
    append(&mut log, applied.clone()).await;
    log.save_committed(Some(log_id(2, 15))).await.unwrap();
    sm.apply(applied).await.unwrap();
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    log.purge(log_id(2, 12)).await.unwrap();
    append(&mut log, later.clone()).await;
    log.save_committed(Some(log_id(2, 16))).await.unwrap();
    sm.apply(later.into_iter().take(1)).await.unwrap();
    drop((log, sm));

    // Every table, every row, in key order.
    let txn = db.begin_read().unwrap();
    let mut out = String::new();
    out.push_str(&format!(
        "# vault.redb rows written by vault-backend {release} (tests/write_storage_fixture.rs)\n\
         # table<TAB>key (hex)<TAB>value (hex)\n"
    ));
    for t in txn.list_tables().unwrap() {
        let name = t.name().to_owned();
        if name == "raft_log" {
            let table = txn
                .open_table(TableDefinition::<u64, &[u8]>::new(&name))
                .unwrap();
            for row in table.iter().unwrap() {
                let (k, v) = row.unwrap();
                out.push_str(&format!(
                    "{name}\t{}\t{}\n",
                    hex::encode(k.value().to_be_bytes()),
                    hex::encode(v.value())
                ));
            }
        } else {
            let table = txn
                .open_table(TableDefinition::<&str, &[u8]>::new(&name))
                .unwrap();
            for row in table.iter().unwrap() {
                let (k, v) = row.unwrap();
                out.push_str(&format!(
                    "{name}\t{}\t{}\n",
                    hex::encode(k.value()),
                    hex::encode(v.value())
                ));
            }
        }
    }
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("release-{release}"));
    std::fs::create_dir_all(&fixtures).unwrap();
    let file = fixtures.join("vault-redb.txt");
    assert!(
        !file.exists(),
        "{} exists: a released fixture is never rewritten",
        file.display()
    );
    std::fs::File::create(&file)
        .unwrap()
        .write_all(out.as_bytes())
        .unwrap();
}

/// A command entry as this release's leader writes it.
fn normal(c: Command) -> EntryPayload<vault_backend::raft::TypeConfig> {
    EntryPayload::Normal(Proposal::current(c))
}

async fn append(log: &mut LogStore, entries: Vec<Entry<vault_backend::raft::TypeConfig>>) {
    log.write_entries(entries).await.unwrap();
}

#![allow(clippy::unwrap_used)]
//! The current release reads every row an older release wrote: each fixture
//! under `tests/fixtures/release-*/vault-redb.txt` (written by that release's
//! `write_storage_fixture.rs`, never rewritten) is loaded into a fresh redb
//! file, read back through the storage layer, and a real Raft node is
//! started on it, serves the old rows and commits a new entry.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{EntryPayload, Vote};
use redb::{Database, TableDefinition};
use vault_backend::account::{StoredAccount, STATE_ACTIVE, STATE_LOCKED_OUT};
use vault_backend::pki::{self, Usage};
use vault_backend::raft::node::{bind_peer_endpoint, RaftNode, RaftTuning};
use vault_backend::raft::storage::{LogStore, StateMachine};
use vault_backend::raft::{Command, CommandResult};
use vault_backend::store::Store;

/// Rebuilds a database file from a fixture's rows.
fn load_fixture(release: &str, path: &Path) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(format!("release-{release}"))
            .join("vault-redb.txt"),
    )
    .unwrap();
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut f = line.split('\t');
        let (table, key, value) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let (key, value) = (hex::decode(key).unwrap(), hex::decode(value).unwrap());
        if table == "raft_log" {
            let k = u64::from_be_bytes(key.try_into().unwrap());
            txn.open_table(TableDefinition::<u64, &[u8]>::new(table))
                .unwrap()
                .insert(k, value.as_slice())
                .unwrap();
        } else {
            let k = String::from_utf8(key).unwrap();
            txn.open_table(TableDefinition::<&str, &[u8]>::new(table))
                .unwrap()
                .insert(k.as_str(), value.as_slice())
                .unwrap();
        }
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn release_0_1_0_storage_is_read_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    load_fixture("0.1.0", &path);

    {
        let db = vault_backend::raft::storage::open_database(&path).unwrap();
        let mut log = LogStore::new(db.clone(), false).unwrap();
        let mut sm = StateMachine::new(db.clone());
        assert_eq!(
            log.read_vote().await.unwrap(),
            Some(Vote::new_committed(2, 1))
        );
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 1, 16)));
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(log_id(2, 1, 12)));
        assert_eq!(st.last_log_id, Some(log_id(2, 1, 17)));
        let entries = log.try_get_log_entries(13..18).await.unwrap();
        assert_eq!(entries.len(), 5);
        assert!(matches!(
            &entries[0].payload,
            EntryPayload::Normal(Command::LoginVerified {
                held: Some(_),
                seq: 3,
                ..
            })
        ));
        assert!(matches!(
            &entries[2].payload,
            EntryPayload::Normal(Command::Disable { .. })
        ));
        assert!(matches!(
            &entries[4].payload,
            EntryPayload::Normal(Command::LoginStart {
                max_attempts: 3,
                ..
            })
        ));
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2, 1, 16)));
        assert_eq!(
            membership.membership().voter_ids().collect::<Vec<_>>(),
            vec![1]
        );
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 1, 15)));
        let store = Store::from_db(db.clone());
        let alice = store.get("alice").unwrap().unwrap();
        assert_eq!((alice.state, alice.guesses_used), (STATE_ACTIVE, 0));
        let carol = store.get("carol").unwrap().unwrap();
        assert_eq!(
            (
                carol.state,
                carol.guesses_counted,
                carol.sealed_record.len()
            ),
            (STATE_ACTIVE, 3, 24),
            "the verified last guess restored the held record"
        );
        assert!(store.get("dave").unwrap().is_none(), "disabled");
        assert_eq!(
            store.get("bob").unwrap().unwrap().registration_id,
            vec![4; 16]
        );
    }

    // A replica of this release starts on the old file, re-applies what was
    // committed but not applied, and commits new entries after the old ones.
    let ca = pki::new_ca("upgrade test CA").unwrap();
    let id = pki::issue(
        &ca,
        "replica 1",
        &[pki::REPLICA_ROLE_NAME, "127.0.0.1"],
        Usage::Peer,
    )
    .unwrap();
    let ep = bind_peer_endpoint("127.0.0.1:0".parse().unwrap(), &id, &ca.cert_pem).unwrap();
    let members = BTreeMap::from([(1, ep.local_addr().unwrap())]);
    let node = RaftNode::start(1, &members, ep, &path, &RaftTuning::default())
        .await
        .unwrap();
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "the single replica leads")
        .await
        .unwrap();
    let out = node
        .raft
        .client_write(Command::LoginStart {
            account_id: "erin".into(),
            max_attempts: 3,
        })
        .await
        .unwrap();
    assert!(out.log_id.index > 17, "{:?}", out.log_id);
    // Entry 17 (erin's first guess) was committed by the new leader's
    // term and applied on start; this is her second.
    match out.data {
        CommandResult::Guess { attempts_left, .. } => assert_eq!(attempts_left, 1),
        other => panic!("{other:?}"),
    }
    let store = Store::from_db(node.db.clone());
    let carol: StoredAccount = store.get("carol").unwrap().unwrap();
    assert_ne!(carol.state, STATE_LOCKED_OUT);
    node.shutdown().await;
}

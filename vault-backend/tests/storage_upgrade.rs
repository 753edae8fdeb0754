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
use service_kit::pki::{self, Usage};
use vault_backend::account::{StoredAccount, STATE_ACTIVE, STATE_LOCKED_OUT};
use vault_backend::raft::codec::{snapshot_version, Body, MAX_VERSION};
use vault_backend::raft::member::ReplicaNode;
use vault_backend::raft::node::{bind_peer_endpoint, RaftNode, RaftTuning};
use vault_backend::raft::storage::{LogStore, StateMachine};
use vault_backend::raft::{Command, CommandResult, Proposal};
use vault_backend::store::Store;

/// Rebuilds a database file from a fixture's rows (no replica runs on it
/// yet, so no scrubber's gate to pass).
#[allow(clippy::disallowed_methods)]
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
    read_and_serve("0.1.0", 0).await;
}

#[tokio::test]
async fn release_0_2_0_storage_is_read_and_served() {
    read_and_serve("0.2.0", 1).await;
}

/// The fixture of `release`, whose cluster wrote command `version`: every
/// value reads back as written, and a replica of this release serves it.
async fn read_and_serve(release: &str, version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault.redb");
    load_fixture(release, &path);

    {
        let db = vault_backend::raft::storage::open_database(&path).unwrap();
        let mut log = LogStore::new(db.clone(), false).unwrap();
        let mut sm = StateMachine::new(db.clone()).unwrap();
        assert_eq!(sm.active_version().get(), version);
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
        let command = |i: usize| match &entries[i].payload {
            EntryPayload::Normal(p) => {
                assert_eq!(p.version, version, "{release} wrote version {version}");
                p.command().unwrap().clone()
            }
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            command(0),
            Command::LoginVerified {
                held: Some(_),
                seq: 3,
                ..
            }
        ));
        assert!(matches!(command(2), Command::Disable { .. }));
        assert!(matches!(
            command(4),
            Command::LoginStart {
                max_attempts: 3,
                ..
            }
        ));
        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(2, 1, 16)));
        assert_eq!(
            membership.membership().voter_ids().collect::<Vec<_>>(),
            vec![1]
        );
        // Release 0.1.0 knew members by their peer address alone.
        let node = membership.nodes().next().unwrap().1.clone();
        assert_eq!(node.peer, "127.0.0.1:7901");
        assert_eq!(node.serve.is_some(), version > 0, "{node:?}");
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(snap.meta.last_log_id, Some(log_id(2, 1, 15)));
        let data = snap.snapshot.into_inner();
        assert_eq!(snapshot_version(&data).unwrap().0, version);
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
        assert_eq!(carol.version, version);
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
    let node = RaftNode::start(
        1,
        Some(&ReplicaNode::peers(&members)),
        ep,
        &path,
        &RaftTuning::default(),
        None,
    )
    .await
    .unwrap();
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "the single replica leads")
        .await
        .unwrap();
    let out = node
        .raft
        .client_write(Proposal::new(
            node.version.get(),
            Command::LoginStart {
                account_id: "erin".into(),
                max_attempts: 3,
            },
        ))
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
    // Alone in its cluster, every member reads the newest command version,
    // so the replica switches its cluster to it; rows follow.
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while node.version.get() < MAX_VERSION {
        assert!(
            std::time::Instant::now() < until,
            "the cluster never switched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.raft
        .client_write(Proposal::current(Command::LoginStart {
            account_id: "alice".into(),
            max_attempts: 3,
        }))
        .await
        .unwrap();
    let alice = store.get("alice").unwrap().unwrap();
    assert_eq!((alice.version, alice.guesses_used), (MAX_VERSION, 1));
    assert_eq!(
        store.get("bob").unwrap().unwrap().version,
        version,
        "untouched"
    );
    node.shutdown().await;
}

fn single_replica_identity() -> (pki::CertAndKey, pki::CertAndKey) {
    let ca = pki::new_ca("upgrade test CA").unwrap();
    let id = pki::issue(
        &ca,
        "replica 1",
        &[pki::REPLICA_ROLE_NAME, "127.0.0.1"],
        Usage::Peer,
    )
    .unwrap();
    (ca, id)
}

/// A leader that is handed an entry of a newer release (as a replica of
/// an older release would be by a newer leader) stops before applying it,
/// and says why.
#[tokio::test]
async fn an_entry_of_a_newer_version_stops_the_replica_before_it_applies_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, id) = single_replica_identity();
    let ep = bind_peer_endpoint("127.0.0.1:0".parse().unwrap(), &id, &ca.cert_pem).unwrap();
    let members = BTreeMap::from([(1, ep.local_addr().unwrap())]);
    let path = dir.path().join("vault.redb");
    let node = RaftNode::start(
        1,
        Some(&ReplicaNode::peers(&members)),
        ep,
        &path,
        &RaftTuning::default(),
        None,
    )
    .await
    .unwrap();
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .current_leader(1, "the single replica leads")
        .await
        .unwrap();
    let future = Proposal {
        version: 9,
        body: Body::Unsupported(b"a command of release 9".to_vec()),
    };
    let err = node.raft.client_write(future).await.unwrap_err();
    assert!(matches!(err, openraft::error::RaftError::Fatal(_)), "{err}");
    let why = tokio::time::timeout(Duration::from_secs(10), node.stopped())
        .await
        .unwrap();
    assert!(why.contains("newer release (version 9"), "{why}");
    node.shutdown().await;
}

/// The same on restart, as the `vault-backend` process: a committed entry
/// of a newer version in its log makes it exit non-zero, saying so in one
/// line, without serving.
#[tokio::test]
async fn a_replica_process_with_a_newer_entry_in_its_log_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let member = vault_backend::config::Member {
        id: 1,
        serve: free(),
        peer: free(),
        admin: None,
    };
    let init = vault_backend::provision::init_cluster(
        dir.path(),
        "upgrade-fleet",
        &[member],
        &["127.0.0.1"],
        10,
        None,
        &Default::default(),
    )
    .unwrap();
    let cfg = &init.replicas[0];
    let config = cfg.state_dir.join(vault_backend::config::files::CONFIG);
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_vault-backend"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A first run bootstraps the cluster and commits its first entries.
    let child = run();
    let db_path = cfg.database_path();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(std::time::Instant::now() < until, "never bootstrapped");
        if db_path.exists() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let out = child.wait_with_output().unwrap();
    // What a replica keeps is owner-only: its folders 0700, its files 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let data = db_path.parent().unwrap();
        assert_eq!(mode(&cfg.state_dir), 0o700);
        assert_eq!(mode(data), 0o700);
        assert_eq!(mode(&db_path), 0o600);
        let anchor = cfg.state_dir.join(format!("{}.anchor", cfg.anchor_name()));
        assert_eq!(mode(&anchor), 0o600, "{}", anchor.display());
        assert_eq!(mode(&cfg.state_dir.join("master.key")), 0o600);
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A newer release's entry is committed in its log.
    {
        let db = vault_backend::raft::storage::open_database(&db_path).unwrap();
        let mut log = LogStore::new(db.clone(), false).unwrap();
        let last = log.get_log_state().await.unwrap().last_log_id.unwrap();
        let mut next = last;
        next.index += 1;
        let future = Proposal {
            version: 9,
            body: Body::Unsupported(b"a command of release 9".to_vec()),
        };
        log.write_entries(vec![openraft::Entry {
            log_id: next,
            payload: EntryPayload::Normal(future),
        }])
        .await
        .unwrap();
        log.save_committed(Some(next)).await.unwrap();
        // Made durable by a durable write after it.
        let vote = log.read_vote().await.unwrap().unwrap();
        log.save_vote(&vote).await.unwrap();
    }
    let child = run();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not run: {stderr}");
    assert!(stderr.contains("newer release (version 9"), "{stderr}");
    eprintln!("{stderr}");
}

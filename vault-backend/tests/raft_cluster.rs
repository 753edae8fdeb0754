#![allow(clippy::unwrap_used)]
//! A Raft group of real replicas on loopback: QUIC with mutual TLS between
//! them, redb logs and state machines on disk. Commands commit on a
//! majority, survive the loss of the leader, and a restarted replica catches
//! up — by log, or by snapshot once the log was purged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use service_kit::pki::{self, CertAndKey, Usage};
use vault_backend::account::{Authorization, StoredAccount, STATE_ACTIVE};
use vault_backend::raft::codec::MAX_VERSION;
use vault_backend::raft::member::ReplicaNode;
use vault_backend::raft::node::{bind_peer_endpoint, RaftNode, RaftTuning};
use vault_backend::raft::{Command, CommandResult, NodeId, Proposal};
use vault_backend::store::Store;

struct Cluster {
    dir: tempfile::TempDir,
    ca: CertAndKey,
    ids: Vec<CertAndKey>,
    members: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, RaftNode>,
    tuning: RaftTuning,
    /// Per-replica tuning that differs from `tuning`.
    overrides: BTreeMap<NodeId, RaftTuning>,
}

impl Cluster {
    async fn start(n: u64, tuning: RaftTuning) -> Self {
        Self::start_with(n, tuning, BTreeMap::new()).await
    }

    async fn start_with(
        n: u64,
        tuning: RaftTuning,
        overrides: BTreeMap<NodeId, RaftTuning>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = pki::new_ca("test cluster CA").unwrap();
        let mut ids = Vec::new();
        let mut endpoints = BTreeMap::new();
        let mut members = BTreeMap::new();
        for i in 1..=n {
            let id = pki::issue(
                &ca,
                &format!("replica {i}"),
                &[pki::REPLICA_ROLE_NAME, "127.0.0.1"],
                Usage::Peer,
            )
            .unwrap();
            let ep = bind_peer_endpoint("127.0.0.1:0".parse().unwrap(), &id, &ca.cert_pem).unwrap();
            members.insert(i, ep.local_addr().unwrap());
            endpoints.insert(i, ep);
            ids.push(id);
        }
        let mut c = Self {
            dir,
            ca,
            ids,
            members,
            nodes: BTreeMap::new(),
            tuning,
            overrides,
        };
        for (i, ep) in endpoints {
            let node = RaftNode::start(
                i,
                c.bootstrap(i).as_ref(),
                ep,
                &c.db_path(i),
                c.tuning_of(i),
                None,
            )
            .await
            .unwrap();
            c.nodes.insert(i, node);
        }
        c
    }

    fn db_path(&self, i: NodeId) -> std::path::PathBuf {
        self.dir.path().join(format!("replica-{i}.redb"))
    }

    /// Replica 1 creates the cluster.
    fn bootstrap(&self, i: NodeId) -> Option<BTreeMap<NodeId, ReplicaNode>> {
        (i == 1).then(|| ReplicaNode::peers(&self.members))
    }

    fn tuning_of(&self, i: NodeId) -> &RaftTuning {
        self.overrides.get(&i).unwrap_or(&self.tuning)
    }

    async fn restart(&mut self, i: NodeId) {
        let id = &self.ids[(i - 1) as usize];
        // The stopped node's socket closes once its connections drain.
        let mut ep = bind_peer_endpoint(self.members[&i], id, &self.ca.cert_pem);
        for _ in 0..50 {
            if ep.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            ep = bind_peer_endpoint(self.members[&i], id, &self.ca.cert_pem);
        }
        let ep = ep.unwrap();
        let node = RaftNode::start(
            i,
            self.bootstrap(i).as_ref(),
            ep,
            &self.db_path(i),
            self.tuning_of(i),
            None,
        )
        .await
        .unwrap();
        self.nodes.insert(i, node);
    }

    /// A leader every running replica agrees on. Writing only to a settled
    /// leader keeps the counts in these tests exact: a write that fails while
    /// leadership moves may still commit later (Raft's usual at-least-once
    /// on retry), which for a guess counter errs on the safe side.
    async fn leader(&self) -> NodeId {
        for _ in 0..400 {
            let leaders: Vec<Option<NodeId>> = self
                .nodes
                .values()
                .map(|n| n.raft.metrics().borrow().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if self.nodes.contains_key(l) && leaders.iter().all(|x| x == &Some(*l)) {
                    return *l;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader elected");
    }

    async fn write(&self, cmd: Command) -> CommandResult {
        for _ in 0..200 {
            let l = self.leader().await;
            // As the ledger does: in the cluster's active version.
            let p = Proposal::new(self.nodes[&l].version.get(), cmd.clone());
            match self.nodes[&l].raft.client_write(p).await {
                Ok(r) => return r.data,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("write never committed");
    }

    fn row(&self, i: NodeId, account: &str) -> Option<StoredAccount> {
        Store::from_db(self.nodes[&i].db.clone())
            .get(account)
            .unwrap()
    }

    async fn wait_applied_everywhere(&self, account: &str, want: &Option<StoredAccount>) {
        for _ in 0..400 {
            if self.nodes.keys().all(|&i| &self.row(i, account) == want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state: Vec<_> = self
            .nodes
            .iter()
            .map(|(&i, n)| {
                let m = n.raft.metrics().borrow().clone();
                (
                    i,
                    self.row(i, account).map(|r| r.guesses_used),
                    m.current_leader,
                    m.last_applied.map(|l| l.index),
                    m.last_log_index,
                )
            })
            .collect();
        panic!(
            "replicas did not converge: want {:?}, have {state:?}",
            want.as_ref().map(|r| r.guesses_used)
        );
    }

    async fn shutdown(self) {
        for (_, n) in self.nodes {
            n.shutdown().await;
        }
    }
}

fn register(account: &str) -> Command {
    Command::Register {
        account_id: account.into(),
        authorization: Authorization::None,
        registration_id: vec![7; 16],
        sealed_record: vec![0xab; 64],
    }
}

fn guess(account: &str) -> Command {
    Command::LoginStart {
        account_id: account.into(),
        max_attempts: 10,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_commit_on_a_majority_and_survive_the_leader() {
    let mut c = Cluster::start(3, RaftTuning::default()).await;
    assert_eq!(c.write(register("alice")).await, CommandResult::Done);
    for left in (7..10).rev() {
        match c.write(guess("alice")).await {
            CommandResult::Guess { attempts_left, .. } => assert_eq!(attempts_left, left),
            other => panic!("{other:?}"),
        }
    }
    let want = c.row(c.leader().await, "alice");
    assert_eq!(
        want.as_ref().map(|r| (r.state, r.guesses_used)),
        Some((STATE_ACTIVE, 3))
    );
    c.wait_applied_everywhere("alice", &want).await;

    // The leader goes away; the two others elect a new one and go on counting.
    let old = c.leader().await;
    c.nodes.remove(&old).unwrap().shutdown().await;
    match c.write(guess("alice")).await {
        CommandResult::Guess { attempts_left, .. } => assert_eq!(attempts_left, 6),
        other => panic!("{other:?}"),
    }
    assert_ne!(c.leader().await, old);

    // The old leader comes back from its database and catches up.
    c.restart(old).await;
    let want = c.row(c.leader().await, "alice");
    c.wait_applied_everywhere("alice", &want).await;
    assert_eq!(want.unwrap().guesses_used, 4);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_a_purged_log_catches_up_by_snapshot() {
    let tuning = RaftTuning {
        snapshot_every: 20,
        ..Default::default()
    };
    let mut c = Cluster::start(3, tuning).await;
    c.write(register("bob")).await;
    let leader = c.leader().await;
    let lagger = *c.nodes.keys().find(|&&i| i != leader).unwrap();
    c.nodes.remove(&lagger).unwrap().shutdown().await;
    for i in 0..60 {
        c.write(register(&format!("user{i}"))).await;
    }
    // The leader snapshotted and purged the entries the lagger misses.
    let leader = c.leader().await;
    for _ in 0..200 {
        let m = c.nodes[&leader].raft.metrics().borrow().clone();
        if m.purged.is_some_and(|p| p.index > 10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(c.nodes[&leader]
        .raft
        .metrics()
        .borrow()
        .purged
        .is_some_and(|p| p.index > 10));
    c.restart(lagger).await;
    let want = c.row(leader, "user59");
    assert!(want.is_some());
    c.wait_applied_everywhere("user59", &want).await;
    c.wait_applied_everywhere("bob", &c.row(leader, "bob"))
        .await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_gateway_certificate_cannot_join_the_raft_group() {
    let c = Cluster::start(1, RaftTuning::default()).await;
    c.leader().await;
    let gw = pki::issue(
        &c.ca,
        "bkv gateway",
        &["gateway.bkv.internal"],
        Usage::Client,
    )
    .unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(
        vault_backend::raft::network::client_config(&gw, &c.ca.cert_pem).unwrap(),
    );
    let conn = ep
        .connect(
            c.members[&1],
            vault_backend::raft::network::PEER_SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    // TLS succeeds (same CA) but the replica closes: not a replica.
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(reason.to_string().contains("not a replica"), "{reason}");
    c.shutdown().await;
}

/// A rolling upgrade, with a replica held at the old command version
/// standing in for one still on the old release: the cluster keeps writing
/// the old encodings while any member does not read the new one, and
/// switches by itself, without losing a count, once every member does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_switches_command_version_only_when_every_member_reads_it() {
    let held = RaftTuning {
        max_command_version: 0,
        ..Default::default()
    };
    let mut c = Cluster::start_with(3, RaftTuning::default(), BTreeMap::from([(3, held)])).await;
    assert_eq!(c.write(register("alice")).await, CommandResult::Done);
    c.write(guess("alice")).await;
    // Well past several upgrade checks (every 2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    for n in c.nodes.values() {
        assert_eq!(n.version.get(), 0, "replica {} switched early", n.id);
    }
    let l = c.leader().await;
    assert_eq!(c.row(l, "alice").unwrap().version, 0);

    // Replica 3 is "upgraded": restarted without the hold.
    c.overrides.clear();
    c.nodes.remove(&3).unwrap().shutdown().await;
    c.restart(3).await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while c.nodes.values().any(|n| n.version.get() < MAX_VERSION) {
        assert!(
            std::time::Instant::now() < until,
            "the cluster never switched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match c.write(guess("alice")).await {
        CommandResult::Guess { attempts_left, .. } => assert_eq!(attempts_left, 8),
        other => panic!("{other:?}"),
    }
    let want = c.row(c.leader().await, "alice");
    assert_eq!(want.as_ref().map(|r| r.version), Some(MAX_VERSION));
    c.wait_applied_everywhere("alice", &want).await;
    c.shutdown().await;
}

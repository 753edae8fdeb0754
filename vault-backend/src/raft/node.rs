//! One replica's Raft node: opens the database, binds the peer port, starts
//! openraft with the redb storage and the QUIC network, and bootstraps a new
//! cluster from the lowest-numbered member.
//!
//! Must never: initialize a cluster whose log already has entries (that
//! would fork it), or serve peers without mutual TLS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::raft::storage::Db;
use openraft::{Config, SnapshotPolicy};

use super::erasure;
use super::freshness::Anchor;
use super::member::ReplicaNode;
use super::network::PeerClient;
use super::network::{self, Network};
use super::storage::{self, ActiveVersion, LogStore, StateMachine};
use super::{codec, Command, NodeId, Proposal, Raft};
use crate::keyprotect::{AnchorStore, KeyProtector};
use service_kit::pki::CertAndKey;

/// Timing and compaction knobs of the Raft group.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// Leader heartbeat.
    pub heartbeat: Duration,
    /// Election timeout range start (end is twice this).
    pub election_timeout: Duration,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// How long one snapshot chunk may take to reach a follower and, for
    /// the last one, to be installed there (openraft's default, 200 ms,
    /// is shorter than installing a few thousand accounts takes on a busy
    /// machine: the soak saw a leader resend the same snapshot 66,000
    /// times to followers that installed it each time).
    pub snapshot_timeout: Duration,
    /// Acknowledge appends from a separate flusher thread's fsync instead of
    /// fsyncing each batched append in place (see `storage`); off by default.
    pub async_flush: bool,
    /// How long the erasure scrubber gathers erasures before one pass of
    /// snapshot, purge and free-page overwrite (see `erasure`).
    pub erasure_delay: Duration,
    /// The newest command version this replica says it reads (at most
    /// [`codec::MAX_VERSION`]); lower it to hold a cluster on an older one.
    pub max_command_version: u32,
    /// The database's page cache, in bytes: what the replica keeps in
    /// memory of its file beyond what a transaction holds.
    pub cache_bytes: usize,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(400),
            snapshot_every: 5000,
            snapshot_timeout: Duration::from_secs(10),
            async_flush: false,
            erasure_delay: Duration::from_secs(30),
            max_command_version: codec::MAX_VERSION,
            cache_bytes: storage::DEFAULT_CACHE_BYTES,
        }
    }
}

/// Where a replica's freshness anchor is kept, and the key that seals it.
pub struct AnchorSeam {
    /// The record (a token object or a file in the key folder).
    pub store: Box<dyn AnchorStore>,
    /// The replica's key protector.
    pub protector: Arc<dyn KeyProtector>,
}

impl std::fmt::Debug for AnchorSeam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.store.describe())
    }
}

/// A running Raft node.
pub struct RaftNode {
    /// This replica's id.
    pub id: NodeId,
    /// The openraft handle.
    pub raft: Raft,
    /// The replica database (log, state machine, accounts).
    pub db: Arc<Db>,
    /// The cluster's command version, as applied here.
    pub version: ActiveVersion,
    endpoint: quinn::Endpoint,
    server: tokio::task::JoinHandle<()>,
    scrubber: tokio::task::JoinHandle<()>,
    upgrader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Binds a peer endpoint (server and client) on `listen`.
pub fn bind_peer_endpoint(
    listen: SocketAddr,
    identity: &CertAndKey,
    cluster_ca_pem: &str,
) -> anyhow::Result<quinn::Endpoint> {
    peer_endpoint_on(std::net::UdpSocket::bind(listen)?, identity, cluster_ca_pem)
}

/// A peer endpoint (server and client) on an already bound socket.
pub fn peer_endpoint_on(
    socket: std::net::UdpSocket,
    identity: &CertAndKey,
    cluster_ca_pem: &str,
) -> anyhow::Result<quinn::Endpoint> {
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(network::server_config(identity, cluster_ca_pem)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    ep.set_default_client_config(network::client_config(identity, cluster_ca_pem)?);
    Ok(ep)
}

impl RaftNode {
    /// Starts node `id` on an endpoint from [`bind_peer_endpoint`], with its
    /// database at `db_path`. With `bootstrap`, a node whose log is empty
    /// creates the cluster with those members; a node joining an existing
    /// cluster (as a learner) passes `None` and waits to be added.
    ///
    /// With `seam` (the replica's key protection), the data is checked
    /// against the replica's freshness anchor before anything starts, and
    /// the anchor is kept up to date (see `freshness`); a stale data folder
    /// is refused with [`super::freshness::Stale`].
    pub async fn start(
        id: NodeId,
        bootstrap: Option<&BTreeMap<NodeId, ReplicaNode>>,
        endpoint: quinn::Endpoint,
        db_path: &Path,
        tuning: &RaftTuning,
        seam: Option<AnchorSeam>,
    ) -> anyhow::Result<Self> {
        if let Some(members) = bootstrap {
            anyhow::ensure!(
                members.contains_key(&id),
                "replica {id} is not in the member list"
            );
        }
        let db = storage::open_database_with_cache(db_path, tuning.cache_bytes)?;
        let election = tuning.election_timeout.as_millis() as u64;
        let config = Config {
            cluster_name: "bkv-vault".into(),
            heartbeat_interval: tuning.heartbeat.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            snapshot_max_chunk_size: 1024 * 1024,
            install_snapshot_timeout: tuning.snapshot_timeout.as_millis() as u64,
            ..Default::default()
        }
        .validate()?;
        let anchor = match seam {
            None => None,
            Some(seam) => {
                let data = LogStore::new(db.clone(), false)?.freshness().await?;
                Some(Arc::new(Anchor::open(
                    id,
                    seam.store,
                    seam.protector,
                    data,
                )?))
            }
        };
        let log = LogStore::with_anchor(db.clone(), tuning.async_flush, anchor)?;
        let (erased_tx, erased_rx) = tokio::sync::mpsc::unbounded_channel();
        let sm = StateMachine::new(db.clone())?.with_erasure_notices(erased_tx);
        let version = sm.active_version();
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network::new(endpoint.clone()),
            log,
            sm,
        )
        .await?;
        let reads = tuning.max_command_version.min(codec::MAX_VERSION);
        let server = network::serve(endpoint.clone(), raft.clone(), reads);
        let upgrader =
            spawn_version_upgrader(raft.clone(), endpoint.clone(), version.clone(), reads);
        let scrubber = erasure::spawn_scrubber(
            raft.clone(),
            db.clone(),
            db_path.to_path_buf(),
            erased_rx,
            tuning.erasure_delay,
        );
        let node = Self {
            id,
            raft,
            db,
            version,
            endpoint,
            server,
            scrubber,
            upgrader,
        };
        if let Some(members) = bootstrap {
            if !node.raft.is_initialized().await? {
                if let Err(e) = node.raft.initialize(members.clone()).await {
                    tracing::info!(error = %e, "cluster already initialized");
                }
            }
        }
        Ok(node)
    }

    /// Resolves when the consensus engine has stopped on its own (a storage
    /// error, such as an entry of a newer release), with why.
    pub async fn stopped(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "the consensus engine ended".into();
            }
        }
    }

    /// The peer address this node listens on.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops Raft and the peer listener.
    pub async fn shutdown(self) {
        self.scrubber.abort();
        self.upgrader.abort();
        let _ = self.raft.shutdown().await;
        self.server.abort();
        service_kit::quic::close_endpoint(&self.endpoint, 0, b"shutting down").await;
    }
}

/// How often a leader whose cluster writes an older command version asks
/// the members whether they all read the newest.
const UPGRADE_CHECK: Duration = Duration::from_secs(2);
/// As often during a leader's first seconds, so that a new cluster (whose
/// members all start together) writes the newest version, with its rules,
/// within about a second of electing a leader.
const UPGRADE_CHECK_AT_START: Duration = Duration::from_millis(200);
/// How long the fast rate lasts, counted from when this replica became
/// leader (not from its start: on a loaded machine the election itself can
/// take most of that time; CI once saw no switch within 20 s).
const UPGRADE_START_PERIOD: Duration = Duration::from_secs(15);

/// Raises the cluster's command version once every member reads it: while
/// this replica leads and the active version is below
/// [`codec::MAX_VERSION`], it asks each member (voters and learners) which
/// versions it reads, and when all say the newest, commits
/// `UseVersion`. So a rolling upgrade needs no last step, and a replica of
/// the older release never receives an entry it cannot read. Ends once the
/// cluster writes the newest version.
fn spawn_version_upgrader(
    raft: Raft,
    endpoint: quinn::Endpoint,
    version: ActiveVersion,
    reads: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // The term in which this replica last became leader, and when.
        let mut leading: Option<(u64, tokio::time::Instant)> = None;
        loop {
            let fast = leading.is_none_or(|(_, since)| since.elapsed() < UPGRADE_START_PERIOD);
            tokio::time::sleep(if fast {
                UPGRADE_CHECK_AT_START
            } else {
                UPGRADE_CHECK
            })
            .await;
            if version.get() >= codec::MAX_VERSION {
                return;
            }
            let m = raft.metrics().borrow().clone();
            if m.current_leader != Some(m.id) {
                leading = None;
                continue;
            }
            if leading.is_none_or(|(term, _)| term != m.current_term) {
                leading = Some((m.current_term, tokio::time::Instant::now()));
            }
            // Asked all at once: one slow or absent member costs one
            // timeout per round, not one per member.
            let peers = m
                .membership_config
                .nodes()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, node)| {
                    let endpoint = endpoint.clone();
                    let (id, addr) = (*id, node.peer_addr());
                    async move {
                        let addr = addr?;
                        let mut peer = PeerClient::to(endpoint, id, addr);
                        let max = peer.max_version().await;
                        peer.close();
                        max
                    }
                });
            let mut members = futures::future::join_all(peers).await;
            members.push(Some(reads));
            let Some(target) = switch_to(version.get(), &members) else {
                continue;
            };
            let cmd = Command::UseVersion { version: target };
            match raft.client_write(Proposal::new(target, cmd)).await {
                Ok(_) => tracing::info!(
                    version = target,
                    "every member reads command version {target}; the cluster switched to it"
                ),
                Err(e) => tracing::info!(error = %e, "switching the command version: will retry"),
            }
        }
    })
}

/// The version a cluster writing `active` may switch to, given what each
/// member says it reads (`None`: no answer, which an older release gives):
/// the highest all of them read, if that is higher than `active`.
fn switch_to(active: u32, members: &[Option<u32>]) -> Option<u32> {
    let all = members
        .iter()
        .map(|m| m.unwrap_or(codec::LEGACY_VERSION))
        .min()?
        .min(codec::MAX_VERSION);
    (all > active).then_some(all)
}

#[cfg(test)]
mod tests {
    use super::switch_to;

    #[test]
    fn the_cluster_switches_only_when_every_member_reads_the_version() {
        assert_eq!(switch_to(0, &[Some(1), Some(1), Some(1)]), Some(1));
        assert_eq!(
            switch_to(0, &[Some(1), None, Some(1)]),
            None,
            "an old release"
        );
        assert_eq!(switch_to(0, &[Some(1), Some(0)]), None, "held back");
        assert_eq!(switch_to(1, &[Some(1), Some(1)]), None, "already there");
        assert_eq!(
            switch_to(0, &[Some(7), Some(9)]),
            Some(crate::raft::codec::MAX_VERSION),
            "never past this release"
        );
        assert_eq!(switch_to(1, &[Some(0)]), None, "never down");
    }
}

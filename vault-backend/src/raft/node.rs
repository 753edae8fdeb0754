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

use openraft::{BasicNode, Config, SnapshotPolicy};
use redb::Database;

use super::erasure;
use super::network::{self, Network};
use super::storage::{self, LogStore, StateMachine};
use super::{NodeId, Raft};
use crate::pki::CertAndKey;

/// Timing and compaction knobs of the Raft group.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    /// Leader heartbeat.
    pub heartbeat: Duration,
    /// Election timeout range start (end is twice this).
    pub election_timeout: Duration,
    /// Build a snapshot (and purge the log before it) every this many entries.
    pub snapshot_every: u64,
    /// Acknowledge appends from a separate flusher thread's fsync instead of
    /// fsyncing each batched append in place (see `storage`); off by default.
    pub async_flush: bool,
    /// How long the erasure scrubber gathers erasures before one pass of
    /// snapshot, purge and free-page overwrite (see `erasure`).
    pub erasure_delay: Duration,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(400),
            snapshot_every: 5000,
            async_flush: false,
            erasure_delay: Duration::from_secs(30),
        }
    }
}

/// A running Raft node.
pub struct RaftNode {
    /// This replica's id.
    pub id: NodeId,
    /// The openraft handle.
    pub raft: Raft,
    /// The replica database (log, state machine, accounts).
    pub db: Arc<Database>,
    endpoint: quinn::Endpoint,
    server: tokio::task::JoinHandle<()>,
    scrubber: tokio::task::JoinHandle<()>,
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
    /// Starts node `id` of the cluster `members` (id → peer address) on an
    /// endpoint from [`bind_peer_endpoint`], with its database at `db_path`.
    pub async fn start(
        id: NodeId,
        members: &BTreeMap<NodeId, SocketAddr>,
        endpoint: quinn::Endpoint,
        db_path: &Path,
        tuning: &RaftTuning,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            members.contains_key(&id),
            "replica {id} is not in the member list"
        );
        let db = storage::open_database(db_path)?;
        let election = tuning.election_timeout.as_millis() as u64;
        let config = Config {
            cluster_name: "bkv-vault".into(),
            heartbeat_interval: tuning.heartbeat.as_millis() as u64,
            election_timeout_min: election,
            election_timeout_max: election * 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        }
        .validate()?;
        let log = LogStore::new(db.clone(), tuning.async_flush)?;
        let (erased_tx, erased_rx) = tokio::sync::mpsc::unbounded_channel();
        let sm = StateMachine::new(db.clone()).with_erasure_notices(erased_tx);
        let raft = Raft::new(
            id,
            Arc::new(config),
            Network::new(endpoint.clone()),
            log,
            sm,
        )
        .await?;
        let server = network::serve(endpoint.clone(), raft.clone());
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
            endpoint,
            server,
            scrubber,
        };
        let first = members.keys().next().copied();
        if first == Some(id) && !node.raft.is_initialized().await? {
            let nodes: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|(k, a)| (*k, BasicNode::new(a.to_string())))
                .collect();
            if let Err(e) = node.raft.initialize(nodes).await {
                tracing::info!(error = %e, "cluster already initialized");
            }
        }
        Ok(node)
    }

    /// The peer address this node listens on.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops Raft and the peer listener.
    pub async fn shutdown(self) {
        self.scrubber.abort();
        let _ = self.raft.shutdown().await;
        self.endpoint.close(0u32.into(), b"shutting down");
        self.server.abort();
        // Close frames are sent; waiting out every peer's draining period
        // (up to 3 PTOs each) only delays the caller.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            self.endpoint.wait_idle(),
        )
        .await;
    }
}

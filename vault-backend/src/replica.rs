//! A running replica: [`Replica::start`] opens the state folder (secrets
//! through the key-protection seam, the database in its owner-only data
//! folder), starts Raft and the peer port, and binds the gateway listener
//! and the admin port; [`Replica::shutdown`] stops them in order.
//! Provisioning (making the folders it starts from) is [`crate::provision`].
//!
//! Must never: start on a configuration whose timeouts do not nest, or
//! leave the database readable by others.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::account::StoredAccount;
use crate::admin::{self, ClusterStatus};
use crate::config::{files, VaultConfig};
use crate::ledger::Ledger;
use crate::raft::member::ReplicaNode;
use crate::raft::node::{self, AnchorSeam, RaftNode};
use crate::raft::NodeId;
use crate::secrets::FleetSecrets;
use crate::server::VaultServer;
use crate::service::{Policy, Vault};
use crate::store::Store;
use crate::VaultError;
use service_kit::pki::{self, CertAndKey};

/// The data folder, owner-only (0700), holding the database: a replica
/// folder of release 0.1.0 kept `vault.redb` in the state folder itself,
/// and it is moved into the data folder once.
fn prepare_data_dir(cfg: &VaultConfig) -> anyhow::Result<std::path::PathBuf> {
    let db = cfg.database_path();
    let data = db.parent().unwrap_or(&cfg.state_dir);
    service_kit::files::create_private_dir(data)
        .map_err(|e| anyhow::anyhow!("cannot create the data folder {}: {e}", data.display()))?;
    let legacy = cfg.state_dir.join(files::DATABASE);
    if legacy.exists() && !db.exists() {
        tracing::info!(from = %legacy.display(), to = %db.display(), "moving the database into the data folder");
        std::fs::rename(&legacy, &db)?;
    }
    Ok(db)
}

/// Makes an existing file owner-only (0600).
fn set_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Sockets bound by the caller (to learn port-0 addresses before the member
/// table is written).
#[derive(Debug)]
pub struct BoundSockets {
    /// Gateway-facing socket.
    pub serve: UdpSocket,
    /// Peer socket.
    pub peer: UdpSocket,
}

/// A started replica.
pub struct Replica {
    vault: Arc<Vault>,
    server: VaultServer,
    node: RaftNode,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.node.id)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Opens the state folder, binds the configured addresses and starts.
    pub async fn start(cfg: &VaultConfig) -> anyhow::Result<Self> {
        let serve = UdpSocket::bind(cfg.listen)
            .map_err(|e| anyhow::anyhow!("cannot bind the gateway port {}: {e}", cfg.listen))?;
        let peer = UdpSocket::bind(cfg.peer_listen)
            .map_err(|e| anyhow::anyhow!("cannot bind the peer port {}: {e}", cfg.peer_listen))?;
        Self::start_on(cfg, BoundSockets { serve, peer }).await
    }

    /// As [`Replica::start`] on sockets the caller bound.
    pub async fn start_on(cfg: &VaultConfig, sockets: BoundSockets) -> anyhow::Result<Self> {
        cfg.raft.validate()?;
        let dir = &cfg.state_dir;
        if cfg.max_attempts == 0 {
            anyhow::bail!("max_attempts must be at least 1");
        }
        let members = cfg.cluster()?;
        let protector: Arc<dyn crate::keyprotect::KeyProtector> = cfg
            .key_protection
            .open(dir, false)
            .map_err(|e| {
                anyhow::anyhow!("cannot open the key protecting this replica's secrets: {e}")
            })?
            .into();
        let secrets = Arc::new(FleetSecrets::load(
            &dir.join(files::SECRETS),
            protector.as_ref(),
        )?);
        let ca_path = dir.join(format!("{}.pem", files::CLUSTER_CA));
        let ca_pem = std::fs::read_to_string(&ca_path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca_path.display()))?;
        let identity: CertAndKey = pki::read(dir, files::REPLICA_CERT)?;
        // The config's member table creates the cluster (from its lowest
        // id, never from a replica that joins an existing one); afterwards
        // the Raft membership is the member list.
        let nodes: BTreeMap<NodeId, ReplicaNode> = members
            .values()
            .map(|m| (m.id, ReplicaNode::new(m.peer, m.serve, m.admin)))
            .collect();
        let bootstrap = !cfg.join && members.keys().next() == Some(&cfg.node_id);
        let serve_addrs: BTreeMap<NodeId, SocketAddr> =
            members.values().map(|m| (m.id, m.serve)).collect();
        let endpoint = node::peer_endpoint_on(sockets.peer, &identity, &ca_pem)?;
        let db_path = prepare_data_dir(cfg)?;
        let seam = AnchorSeam {
            store: cfg.key_protection.open_anchor(dir, &cfg.anchor_name())?,
            protector: protector.clone(),
        };
        let node = RaftNode::start(
            cfg.node_id,
            bootstrap.then_some(&nodes),
            endpoint,
            &db_path,
            &cfg.raft.tuning(),
            Some(seam),
        )
        .await?;
        set_private(&db_path)?;
        let ledger = Ledger::new(
            node.raft.clone(),
            Store::from_db(node.db.clone()),
            node.version.clone(),
            serve_addrs,
            cfg.raft.commit_timeout(),
        );
        let vault = Arc::new(Vault::new(
            secrets,
            ledger,
            Policy {
                max_attempts: cfg.max_attempts,
                pacing: cfg.pacing,
                replacement_wait: Duration::from_millis(cfg.replacement_wait_ms),
                max_logins_per_account: cfg.max_logins_per_account,
            },
        ));
        let server = VaultServer::start_on(vault.clone(), sockets.serve, &identity, &ca_pem)?;
        let store = Store::from_db(node.db.clone());
        let mut tasks = vec![
            admin::export_gauges(node.raft.clone(), store.clone()),
            spawn_hold_sweeper(vault.clone()),
        ];
        if let Some(addr) = cfg.admin_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot bind the admin port {addr}: {e}"))?;
            tasks.push(admin::serve(
                listener,
                node.raft.clone(),
                store,
                node.version.clone(),
                service_kit::observability::prometheus(),
            ));
        }
        Ok(Self {
            vault,
            server,
            node,
            tasks,
        })
    }

    /// This replica's view of its cluster, as its admin port reports it.
    pub fn status(&self) -> ClusterStatus {
        admin::status(
            &self.node.raft,
            self.vault.ledger().store(),
            self.node.version.get(),
        )
    }

    /// The row of `account_id` in this replica's database as applied so
    /// far (no leadership check: for inspection by operators and tests).
    pub fn stored_row(&self, account_id: &str) -> Result<Option<StoredAccount>, VaultError> {
        self.vault.ledger().store().get(account_id)
    }

    /// The gateway-facing address it serves on.
    pub fn serve_addr(&self) -> std::io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// Resolves when this replica's consensus engine stops on its own (a
    /// fatal storage error, or a log entry of a newer release), with why.
    pub async fn stopped(&self) -> String {
        self.node.stopped().await
    }

    /// Stops this replica's consensus engine and nothing else: the listener
    /// keeps answering, as a replica whose engine stopped on a fatal storage
    /// error does (a fault for the system tests).
    #[cfg(feature = "fault-injection")]
    pub async fn stop_consensus(&self) {
        let _ = self.node.raft.shutdown().await;
    }

    /// Stops the listener and Raft and releases the database.
    pub async fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
        self.server.shutdown().await;
        drop(self.vault);
        self.node.shutdown().await;
    }
}

/// How often the leader looks for last guesses whose login expired.
const HOLD_SWEEP: Duration = Duration::from_secs(5);

/// Erases, on the leader, the records of last guesses whose login expired
/// without verifying (`Vault::erase_expired_holds`): also those a previous
/// leader counted.
fn spawn_hold_sweeper(vault: Arc<Vault>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HOLD_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = vault.erase_expired_holds().await {
                tracing::debug!(error = %e, "erasing expired last guesses: will retry");
            }
        }
    })
}

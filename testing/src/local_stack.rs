//! The whole stack on loopback: one or more vault clusters (5 replicas each
//! by default, real Raft over real QUIC sockets and real redb files, in this
//! process or as `vault-backend run` child processes) and a gateway, with
//! every key and certificate generated into a state folder on first use.
//! Used by the `local-stack` command, the load generator's `--embedded`
//! mode, and the whole-system tests of this crate.
//!
//! Must never: listen beyond loopback, or share one database between
//! replicas.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client::{ClientProfile, DeviceIdentity};
use vault_backend::account::{Pacing, StoredAccount};
use vault_backend::admin::{self, ClusterStatus};
use vault_backend::config::{files as vfiles, Member, RaftSettings, VaultConfig};
use vault_backend::keyprotect::KeyProtection;
use vault_backend::provision::{self, layout, FleetMaterial};
use vault_backend::replica::{BoundSockets, Replica};

use crate::netsplit::PeerProxies;

use gateway::budget::BudgetConfig;
use gateway::keys::{self, GatewayKeys};
use gateway::server::Gateway;
use gateway::vault_client::ClusterConfig;

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// State folder; `None` = a temporary folder removed on drop.
    pub state_dir: Option<PathBuf>,
    /// Gateway address (port 0 = any).
    pub gateway_listen: SocketAddr,
    /// Replicas per vault cluster (1, 3, 5 or 7). Default 5.
    pub replicas: u64,
    /// Vault clusters (accounts are sharded across them). Default 1.
    pub clusters: usize,
    /// First loopback port of the vault replicas on first start (cluster k,
    /// replica n serves on base+20k+n-1 and peers on base+100+20k+n-1);
    /// `None` = any free ports. Later starts reuse the recorded ports.
    pub vault_base_port: Option<u16>,
    /// Guess limit.
    pub max_attempts: u32,
    /// Pacing of guesses (default: the vault's, 3 at once then growing
    /// waits; tests of other rules that make many guesses turn it off).
    pub pacing: Pacing,
    /// Waiting period of a replacement without proof, ms (default 7 days).
    pub replacement_wait_ms: u64,
    /// The gateway's request budgets per device and per account (default:
    /// the gateway's; failure tests that hammer one account lift them).
    pub gateway_budgets: BudgetConfig,
    /// The gateway's bounds on handshakes in progress.
    pub gateway_admission: gateway::admission::AdmissionConfig,
    /// The gateway's bounds on its relay to each cluster.
    pub gateway_relay: gateway::relay::RelayConfig,
    /// The gateway's caps on connections per device and account.
    pub gateway_connections: gateway::connections::ConnectionCaps,
    /// Raft settings of every replica.
    pub raft: RaftSettings,
    /// Run each replica as a separate `vault-backend run` process of this
    /// binary (so failure tests can kill -9 it) instead of in this process.
    /// Process replicas get an admin port each.
    pub replica_binary: Option<PathBuf>,
    /// What seals each replica's fleet secrets (on first start).
    pub key_protection: KeyProtection,
    /// Extra environment of each process replica; `{id}` in a value becomes
    /// the replica id (e.g. a PKCS#11 module configuration per replica).
    pub replica_env: Vec<(String, String)>,
    /// Put each replica's peer port behind a proxy of this process
    /// ([`crate::netsplit`]), so a test can cut a replica off from its
    /// peers ([`LocalStack::partition`]). New stacks only.
    pub peer_proxies: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            replicas: 5,
            clusters: 1,
            vault_base_port: None,
            max_attempts: protocol_spec::limits::DEFAULT_MAX_ATTEMPTS,
            pacing: Pacing::default(),
            replacement_wait_ms: VaultConfig::default().replacement_wait_ms,
            gateway_budgets: BudgetConfig::default(),
            gateway_admission: Default::default(),
            gateway_relay: Default::default(),
            gateway_connections: Default::default(),
            raft: RaftSettings::default(),
            replica_binary: None,
            key_protection: KeyProtection::default(),
            replica_env: Vec::new(),
            peer_proxies: false,
        }
    }
}

/// A replica of the stack, in this process or a child process.
#[derive(Debug)]
pub enum ReplicaHandle {
    /// Not running.
    Stopped,
    /// Running in this process.
    InProcess(Box<Replica>),
    /// Running as a child process.
    Process(tokio::process::Child),
}

impl ReplicaHandle {
    /// Whether the replica runs.
    pub fn is_running(&self) -> bool {
        !matches!(self, ReplicaHandle::Stopped)
    }

    /// The in-process replica, if it is one.
    pub fn in_process(&self) -> Option<&Replica> {
        match self {
            ReplicaHandle::InProcess(r) => Some(r),
            _ => None,
        }
    }
}

/// One vault cluster of the stack.
pub struct LocalCluster {
    /// Cluster name (what the gateway hashes accounts onto).
    pub name: String,
    /// Its folder (`replica-N/`, `ca/`, `gateway/`).
    pub dir: PathBuf,
    /// Each replica's config.
    pub configs: Vec<VaultConfig>,
    /// The replicas, in config order.
    pub replicas: Vec<ReplicaHandle>,
    replica_binary: Option<PathBuf>,
    replica_env: Vec<(String, String)>,
    /// The proxies in front of the replicas' peer ports, if any.
    pub proxies: Option<PeerProxies>,
    /// Sockets bound to learn a new cluster's free ports, kept until each
    /// in-process replica's first start takes them: released and bound
    /// again, a port can be taken in between by any socket on the machine
    /// (seen in CI beside the soak: "cannot bind 127.0.0.1:33215").
    held: Vec<Option<BoundSockets>>,
}

impl std::fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCluster")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A running local stack.
pub struct LocalStack {
    /// State folder.
    pub dir: PathBuf,
    /// The vault clusters.
    pub clusters: Vec<LocalCluster>,
    /// The gateway.
    pub gateway: Option<Gateway>,
    /// What a client needs.
    pub profile: ClientProfile,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for LocalStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStack")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// File name of the client profile in the state folder.
pub const PROFILE_FILE: &str = "client-profile.toml";

fn cluster_name(k: usize) -> String {
    format!("cluster-{}", k + 1)
}

/// Binds a loopback UDP socket, retrying briefly (a restarted replica's
/// previous socket may still be closing).
async fn bind_udp(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let mut last = None;
    for _ in 0..50 {
        match UdpSocket::bind(addr) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(
        "cannot bind {addr}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

impl LocalStack {
    /// Generates what is missing and starts the vault clusters and gateway.
    pub async fn start(opts: StackOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(opts.clusters >= 1, "at least one vault cluster");
        let (dir, tmp) = match &opts.state_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&dir)?;
        let mut clusters = Vec::new();
        for k in 0..opts.clusters {
            let name = cluster_name(k);
            let cdir = dir.join("vault").join(&name);
            let fleet = match k {
                0 => None,
                _ => Some(FleetMaterial::from_cluster(&clusters_dir(&dir, 0))?),
            };
            clusters.push(Self::start_cluster(&opts, k, name, cdir, fleet).await?);
        }
        let gw_dir = dir.join("gateway");
        keys::init(&gw_dir, &["localhost", "127.0.0.1"])?;
        if !gw_dir
            .join(format!("{}.pem", keys::files::VAULT_CLIENT))
            .exists()
        {
            provision::issue_gateway_cert(
                &clusters[0].dir.join(layout::CA_DIR),
                &gw_dir,
                keys::files::VAULT_CLIENT,
            )?;
        }
        let gw_keys = GatewayKeys::load(&gw_dir)?;
        let gateway = Gateway::start_with(
            opts.gateway_listen,
            &gw_keys,
            &cluster_configs(&clusters),
            &gateway::server::FrontDoor {
                budgets: opts.gateway_budgets,
                admission: opts.gateway_admission,
                relay: opts.gateway_relay,
                connections: opts.gateway_connections,
            },
        )?;
        let fleet = provision::read_fleet_public(&clusters[0].dir)?;
        let profile = ClientProfile {
            gateway_addr: gateway.local_addr()?,
            other_gateways: Vec::new(),
            gateway_server_name: "localhost".into(),
            gateway_ca_pem: gw_keys.ca_pem.clone(),
            gateway_noise_key: Some(hex::encode(gw_keys.noise_public)),
            gateway_noise_next_key: None,
            fleet_id: fleet.fleet_id,
            fleet_public_key: fleet.fleet_public_key,
        };
        client::profile::save(&profile, &dir.join(PROFILE_FILE))?;
        let stack = Self {
            dir,
            clusters,
            gateway: Some(gateway),
            profile,
            _tmp: tmp,
        };
        for k in 0..stack.clusters.len() {
            if let Err(e) = stack.wait_for_leader(k, Duration::from_secs(20)).await {
                anyhow::bail!("{e}{}", stack.log_tails(k));
            }
            // A new cluster starts in the oldest command version and
            // switches once every member says it reads the newest; wait
            // for that, unless the test holds the cluster back.
            let newest = vault_backend::raft::codec::MAX_VERSION;
            let held_back = stack.clusters[k]
                .configs
                .iter()
                .any(|c| c.raft.max_command_version < newest);
            if !held_back {
                if let Err(e) = stack
                    .wait_for_command_version(k, newest, Duration::from_secs(60))
                    .await
                {
                    anyhow::bail!("{e}{}", stack.log_tails(k));
                }
            }
        }
        Ok(stack)
    }

    async fn start_cluster(
        opts: &StackOptions,
        k: usize,
        name: String,
        cdir: PathBuf,
        fleet: Option<FleetMaterial>,
    ) -> anyhow::Result<LocalCluster> {
        let processes = opts.replica_binary.is_some();
        let mut proxies = None;
        let mut held = Vec::new();
        let configs = if cdir.join(vfiles::FLEET_PUBLIC).exists() {
            anyhow::ensure!(
                !opts.peer_proxies,
                "peer proxies are made with a new stack only"
            );
            let mut configs = Vec::new();
            for id in 1.. {
                let p = cdir.join(layout::replica_dir(id)).join(vfiles::CONFIG);
                if !p.exists() {
                    break;
                }
                configs.push(VaultConfig::load(&p)?);
            }
            configs
        } else {
            let mut members = Vec::new();
            for id in 1..=opts.replicas {
                let at = |off: u64| -> anyhow::Result<SocketAddr> {
                    let port = match opts.vault_base_port {
                        Some(b) => u16::try_from(u64::from(b) + off + 20 * k as u64 + id - 1)?,
                        None => 0,
                    };
                    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
                };
                // Free ports are found by binding port 0; in-process
                // replicas start on these sockets, processes bind the
                // ports again.
                let serve_socket = UdpSocket::bind(at(0)?)?;
                let peer_socket = UdpSocket::bind(at(100)?)?;
                let serve = serve_socket.local_addr()?;
                let mut peer = peer_socket.local_addr()?;
                held.push((!processes).then_some(BoundSockets {
                    serve: serve_socket,
                    peer: peer_socket,
                }));
                if opts.peer_proxies {
                    // The membership names the proxy; the replica binds
                    // the real port (set below).
                    let px: &mut PeerProxies = proxies.get_or_insert_with(Default::default);
                    let front = UdpSocket::bind("127.0.0.1:0")?;
                    let at = front.local_addr()?;
                    px.add(front, peer)?;
                    peer = at;
                }
                let admin = match processes {
                    true => Some(std::net::TcpListener::bind(at(200)?)?.local_addr()?),
                    false => None,
                };
                members.push(Member {
                    id,
                    serve,
                    peer,
                    admin,
                });
            }
            let mut configs = provision::init_cluster(
                &cdir,
                "bkv-local-fleet",
                &members,
                &["localhost", "127.0.0.1"],
                opts.max_attempts,
                fleet,
                &opts.key_protection,
            )?
            .replicas;
            for (i, c) in configs.iter_mut().enumerate() {
                if let Some(px) = &proxies {
                    c.peer_listen = px.replica_of(i);
                }
                c.raft = opts.raft.clone();
                c.pacing = opts.pacing;
                c.replacement_wait_ms = opts.replacement_wait_ms;
                c.save()?;
            }
            configs
        };
        let mut cluster = LocalCluster {
            name,
            dir: cdir,
            configs: configs
                .into_iter()
                .map(|mut c| {
                    c.max_attempts = opts.max_attempts;
                    c
                })
                .collect(),
            replicas: Vec::new(),
            replica_binary: opts.replica_binary.clone(),
            replica_env: opts.replica_env.clone(),
            proxies,
            held,
        };
        for i in 0..cluster.configs.len() {
            cluster.replicas.push(ReplicaHandle::Stopped);
            cluster.start(i).await?;
        }
        Ok(cluster)
    }

    /// The account service's job: a new device with a credential for `account_id`.
    pub fn enroll_device(&self, account_id: &str) -> anyhow::Result<DeviceIdentity> {
        let mut d = DeviceIdentity::generate()?;
        d.credential = Some(self.mint(account_id, &d.static_public, Duration::from_secs(3600))?);
        Ok(d)
    }

    /// Mints a credential with the stack's account-service key.
    pub fn mint(
        &self,
        account_id: &str,
        device_key: &[u8; 32],
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let secret = keys::account_service_secret(&self.gateway_dir())?;
        Ok(protocol_spec::credential::mint(
            &secret, account_id, device_key, ttl,
        )?)
    }

    /// The clusters as the gateway is configured with them.
    pub fn cluster_configs(&self) -> Vec<ClusterConfig> {
        cluster_configs(&self.clusters)
    }

    /// Gateway state folder.
    pub fn gateway_dir(&self) -> PathBuf {
        self.dir.join("gateway")
    }

    /// The cluster CA certificate (PEM) the replicas trust.
    pub fn vault_ca_pem(&self) -> anyhow::Result<String> {
        let p = self.gateway_dir().join(layout::GATEWAY_CA_FILE);
        Ok(std::fs::read_to_string(p)?)
    }

    /// Gateway-facing address of replica `i` of cluster `k`.
    pub fn replica_addr(&self, k: usize, i: usize) -> SocketAddr {
        self.clusters[k].configs[i].listen
    }

    /// Index of the cluster the gateway places `account_id` on.
    pub fn cluster_of(&self, account_id: &str) -> usize {
        gateway::placement::place(account_id, self.clusters.iter().map(|c| c.name.as_str()))
    }

    /// Each running replica's view of cluster `k` (`None`: stopped or not
    /// answering).
    pub async fn statuses(&self, k: usize) -> Vec<Option<ClusterStatus>> {
        let c = &self.clusters[k];
        let mut out = Vec::new();
        for (i, r) in c.replicas.iter().enumerate() {
            out.push(match r {
                ReplicaHandle::Stopped => None,
                ReplicaHandle::InProcess(r) => Some(r.status()),
                ReplicaHandle::Process(_) => match c.configs[i].admin_listen {
                    Some(a) => admin::fetch_status(a).await.ok(),
                    None => None,
                },
            });
        }
        out
    }

    /// Index of the replica that leads cluster `k`, if every running
    /// replica agrees on it and it runs.
    pub async fn leader(&self, k: usize) -> Option<usize> {
        let c = &self.clusters[k];
        let mut seen = None;
        for (i, st) in self.statuses(k).await.into_iter().enumerate() {
            if !c.replicas[i].is_running() {
                continue;
            }
            let l = st?.leader?;
            if seen.is_some_and(|s| s != l) {
                return None;
            }
            seen = Some(l);
        }
        let id = seen?;
        let i = c.configs.iter().position(|cfg| cfg.node_id == id)?;
        c.replicas[i].is_running().then_some(i)
    }

    /// The end of each process replica's log of cluster `k`, to say why a
    /// wait failed.
    fn log_tails(&self, k: usize) -> String {
        let mut why = String::new();
        for i in 0..self.clusters[k].configs.len() {
            let log = self.replica_log(k, i);
            let tail: Vec<&str> = log.lines().rev().take(3).collect();
            if !tail.is_empty() {
                why.push_str(&format!("\nreplica {}: ", i + 1));
                why.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n  "));
            }
        }
        why
    }

    /// Each replica's role, term, leader and log position, to say why a
    /// wait failed.
    async fn views(&self, k: usize) -> String {
        let views: Vec<String> = self
            .statuses(k)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, st)| match st {
                None => format!("{}: not answering", i + 1),
                Some(s) => format!(
                    "{}: {} term {} leader {:?} log {:?} applied {:?}",
                    i + 1,
                    s.role,
                    s.term,
                    s.leader,
                    s.last_log_index,
                    s.applied_index
                ),
            })
            .collect();
        views.join("; ")
    }

    /// Waits until cluster `k`'s running replicas agree on a running leader.
    pub async fn wait_for_leader(&self, k: usize, within: Duration) -> anyhow::Result<usize> {
        let until = Instant::now() + within;
        loop {
            if let Some(i) = self.leader(k).await {
                return Ok(i);
            }
            if Instant::now() >= until {
                anyhow::bail!(
                    "vault cluster {} elected no leader within {within:?}; replicas saw: {}{}",
                    self.clusters[k].name,
                    self.views(k).await,
                    self.log_tails(k)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until cluster `k`'s leader writes command version `version`.
    pub async fn wait_for_command_version(
        &self,
        k: usize,
        version: u32,
        within: Duration,
    ) -> anyhow::Result<()> {
        let until = Instant::now() + within;
        loop {
            let leader = self.wait_for_leader(k, within).await?;
            let st = self.statuses(k).await;
            if st[leader]
                .as_ref()
                .is_some_and(|s| s.command_version >= version)
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < until,
                "vault cluster {} did not switch to command version {version} within {within:?}",
                self.clusters[k].name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running replica of cluster `k` has applied
    /// everything the leader has logged; returns the index they applied
    /// (0 for an empty log).
    pub async fn wait_caught_up(&self, k: usize, within: Duration) -> anyhow::Result<u64> {
        let until = Instant::now() + within;
        loop {
            let leader = self.wait_for_leader(k, within).await?;
            let st = self.statuses(k).await;
            let target = st[leader].as_ref().and_then(|s| s.last_log_index);
            let behind = st.iter().enumerate().any(|(i, s)| {
                self.clusters[k].replicas[i].is_running()
                    && s.as_ref().map(|s| s.applied_index) != Some(target)
            });
            if !behind {
                return Ok(target.unwrap_or(0));
            }
            anyhow::ensure!(
                Instant::now() < until,
                "replicas did not catch up within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded by `within`) until cluster `k` is quiet: every running
    /// replica has applied the leader's whole log and the leader appended
    /// nothing for `quiet`. A reset committed after its login's answer
    /// (DESIGN.md invariant 2) lands a moment after the phone saw the
    /// answer; stopping replicas before it is applied everywhere leaves
    /// their databases one entry apart. Returns the index they all applied.
    pub async fn wait_quiet(
        &self,
        k: usize,
        quiet: Duration,
        within: Duration,
    ) -> anyhow::Result<u64> {
        let until = Instant::now() + within;
        let mut since: Option<(u64, Instant)> = None;
        loop {
            let i = self
                .wait_caught_up(k, until.saturating_duration_since(Instant::now()))
                .await?;
            match since {
                Some((j, t)) if i == j => {
                    if t.elapsed() >= quiet {
                        return Ok(i);
                    }
                }
                _ => since = Some((i, Instant::now())),
            }
            anyhow::ensure!(
                Instant::now() < until,
                "cluster {k} did not go quiet within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each running in-process replica's row for `account_id`, once all have
    /// applied the leader's whole log.
    pub async fn rows(
        &self,
        k: usize,
        account_id: &str,
    ) -> anyhow::Result<Vec<Option<StoredAccount>>> {
        self.wait_caught_up(k, Duration::from_secs(20)).await?;
        self.clusters[k]
            .replicas
            .iter()
            .filter_map(ReplicaHandle::in_process)
            .map(|r| Ok(r.stored_row(account_id)?))
            .collect()
    }

    /// Stops replica `i` of cluster `k`: a child process is killed with
    /// SIGKILL (no chance to flush or say goodbye); an in-process replica
    /// shuts down and closes its database.
    pub async fn stop_replica(&mut self, k: usize, i: usize) {
        match std::mem::replace(&mut self.clusters[k].replicas[i], ReplicaHandle::Stopped) {
            ReplicaHandle::Stopped => {}
            ReplicaHandle::InProcess(r) => r.shutdown().await,
            ReplicaHandle::Process(mut child) => {
                let _ = child.kill().await;
            }
        }
    }

    /// Stops replica `i` of cluster `k` as an operator's service manager
    /// does: SIGTERM, then waits (bounded by `within`) for the process to
    /// exit and returns how it exited. An in-process replica shuts down.
    pub async fn terminate_replica(
        &mut self,
        k: usize,
        i: usize,
        within: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match std::mem::replace(&mut self.clusters[k].replicas[i], ReplicaHandle::Stopped) {
            ReplicaHandle::Stopped => Ok(None),
            ReplicaHandle::InProcess(r) => {
                r.shutdown().await;
                Ok(None)
            }
            ReplicaHandle::Process(mut child) => Ok(Some(
                terminate(&mut child, within, &format!("replica {i}")).await?,
            )),
        }
    }

    /// How replica `i` of cluster `k` exited, if it is a child process that
    /// exited on its own (a replica that refuses to start, or crashed).
    pub fn replica_exit(&mut self, k: usize, i: usize) -> Option<std::process::ExitStatus> {
        match &mut self.clusters[k].replicas[i] {
            ReplicaHandle::Process(child) => child.try_wait().ok().flatten(),
            _ => None,
        }
    }

    /// Cuts replica `i` of cluster `k` off from its peers (`cut`), or joins
    /// it again; it still serves the gateway. Needs `peer_proxies`.
    pub fn partition(&self, k: usize, i: usize, cut: bool) -> anyhow::Result<()> {
        let c = &self.clusters[k];
        let px = c
            .proxies
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("partitions need a stack with peer proxies"))?;
        let port = c.configs[i].peer_listen;
        anyhow::ensure!(px.proxies(port), "replica {i} has no proxy (added later)");
        px.cut(port, cut);
        Ok(())
    }

    /// Whether replica `i` of cluster `k` can be partitioned.
    pub fn partitionable(&self, k: usize, i: usize) -> bool {
        let c = &self.clusters[k];
        c.proxies
            .as_ref()
            .is_some_and(|px| px.proxies(c.configs[i].peer_listen))
    }

    /// The process id of process replica `i` of cluster `k`, if it runs.
    pub fn replica_pid(&self, k: usize, i: usize) -> Option<u32> {
        match &self.clusters[k].replicas[i] {
            ReplicaHandle::Process(c) => c.id(),
            _ => None,
        }
    }

    /// The log file of process replica `i` of cluster `k`.
    pub fn replica_log(&self, k: usize, i: usize) -> String {
        std::fs::read_to_string(self.clusters[k].configs[i].state_dir.join("replica.log"))
            .unwrap_or_default()
    }

    /// Prepares a new replica of cluster `k` (next unused id, free loopback
    /// ports) as `vault-backend new-replica` does, and starts it; it joins
    /// once added (`add-learner`, `promote`). Returns its index.
    pub async fn add_replica(&mut self, k: usize) -> anyhow::Result<usize> {
        let c = &mut self.clusters[k];
        let like = c
            .configs
            .iter()
            .zip(&c.replicas)
            .find(|(_, r)| r.is_running())
            .map(|(cfg, _)| cfg.clone())
            .ok_or_else(|| anyhow::anyhow!("no running replica to copy"))?;
        let id = c.configs.iter().map(|cfg| cfg.node_id).max().unwrap_or(0) + 1;
        let (serve, peer) = (
            UdpSocket::bind("127.0.0.1:0")?,
            UdpSocket::bind("127.0.0.1:0")?,
        );
        let admin = match c.replica_binary {
            Some(_) => Some(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?),
            None => None,
        };
        let member = Member {
            id,
            serve: serve.local_addr()?,
            peer: peer.local_addr()?,
            admin,
        };
        let sockets = c
            .replica_binary
            .is_none()
            .then_some(BoundSockets { serve, peer });
        let mut cfg = provision::new_replica(
            &c.dir,
            &like,
            member,
            &["localhost", "127.0.0.1"],
            &like.key_protection,
        )?;
        cfg.max_attempts = like.max_attempts;
        cfg.pacing = like.pacing;
        cfg.replacement_wait_ms = like.replacement_wait_ms;
        c.configs.push(cfg);
        c.replicas.push(ReplicaHandle::Stopped);
        let i = c.configs.len() - 1;
        c.held.resize_with(i, || None);
        c.held.push(sockets);
        c.start(i).await?;
        Ok(i)
    }

    /// Runs an operator command of the `vault-backend` binary (process
    /// stacks only), e.g. `["promote", "--config", ..]`; returns its output
    /// or fails with it.
    pub async fn operator(&self, k: usize, args: &[&str]) -> anyhow::Result<String> {
        let bin = self.clusters[k]
            .replica_binary
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("operator commands need process replicas"))?;
        let out = tokio::process::Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        anyhow::ensure!(out.status.success(), "vault-backend {args:?}: {text}");
        Ok(text)
    }

    /// The config file of replica `i` of cluster `k`.
    pub fn replica_config(&self, k: usize, i: usize) -> PathBuf {
        self.clusters[k].configs[i].state_dir.join(vfiles::CONFIG)
    }

    /// Starts replica `i` of cluster `k` again on its addresses.
    pub async fn start_replica(&mut self, k: usize, i: usize) -> anyhow::Result<()> {
        self.clusters[k].start(i).await
    }

    /// Stops every vault replica.
    pub async fn stop_vault(&mut self) {
        for k in 0..self.clusters.len() {
            for i in 0..self.clusters[k].replicas.len() {
                self.stop_replica(k, i).await;
            }
        }
    }

    /// Starts every stopped vault replica again and waits for leaders.
    pub async fn start_vault(&mut self) -> anyhow::Result<()> {
        for k in 0..self.clusters.len() {
            for i in 0..self.clusters[k].replicas.len() {
                if !self.clusters[k].replicas[i].is_running() {
                    self.start_replica(k, i).await?;
                }
            }
            self.wait_for_leader(k, Duration::from_secs(20)).await?;
        }
        Ok(())
    }

    /// Drains the gateway as SIGTERM does ([`Gateway::drain`]) and
    /// removes it from the stack.
    pub async fn drain_gateway(&mut self, deadline: Duration) -> Option<gateway::server::Drained> {
        Some(self.gateway.take()?.drain(deadline).await)
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        self.stop_vault().await;
    }
}

impl LocalCluster {
    /// Starts replica `i` as a process of `bin` and waits until it serves
    /// (says so in its log, every port bound) or exits.
    async fn spawn_process(&mut self, i: usize, bin: &std::path::Path) -> anyhow::Result<()> {
        let cfg = self.configs[i].clone();
        let log_path = cfg.state_dir.join("replica.log");
        let logged = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        // Appended to, so a restart keeps the log of the run before it.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let child = tokio::process::Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(cfg.state_dir.join(vfiles::CONFIG))
            .arg("--max-attempts")
            .arg(cfg.max_attempts.to_string())
            .env("RUST_LOG", "info,openraft=warn")
            .envs(
                self.replica_env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.replace("{id}", &cfg.node_id.to_string()))),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", bin.display()))?;
        self.replicas[i] = ReplicaHandle::Process(child);
        // One replica process starts at a time: until it serves (or
        // exits), the next waits. Startup opens keys (a PKCS#11 token scan,
        // for one) that need not bear company. "Serves" is its own word
        // (logged once every port is bound), not a connection to its admin
        // port, which whoever took that port first would answer: seen in
        // CI, the cluster's start went on while the replica was exiting
        // with "cannot bind the admin port", so it was never renumbered.
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if let ReplicaHandle::Process(c) = &mut self.replicas[i] {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
            }
            if log_since(&log_path, logged).contains("vault replica serving") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts replica `i` (a no-op if it runs).
    async fn start(&mut self, i: usize) -> anyhow::Result<()> {
        // A process that exited on its own is stopped.
        if let ReplicaHandle::Process(c) = &mut self.replicas[i] {
            if c.try_wait().ok().flatten().is_some() {
                self.replicas[i] = ReplicaHandle::Stopped;
            }
        }
        if self.replicas[i].is_running() {
            return Ok(());
        }
        if let Some(bin) = self.replica_binary.clone() {
            // The admin port was found free by binding port 0 and letting
            // it go; another test's outgoing connection can take it before
            // the replica binds it (seen in CI: "cannot bind the admin
            // port … Address already in use"). The admin port is only this
            // replica's (no member knows it), so it gets a new one.
            for _ in 0..3 {
                let cfg = self.configs[i].clone();
                let log_path = cfg.state_dir.join("replica.log");
                let logged = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
                self.spawn_process(i, &bin).await?;
                let exited = match &mut self.replicas[i] {
                    ReplicaHandle::Process(c) => c.try_wait().ok().flatten().is_some(),
                    _ => false,
                };
                let said = log_since(&log_path, logged);
                if !(exited && said.contains("cannot bind the admin port")) {
                    return Ok(());
                }
                self.replicas[i] = ReplicaHandle::Stopped;
                self.configs[i].admin_listen =
                    Some(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?);
                self.configs[i].save()?;
            }
            return Ok(());
        }
        let cfg = self.configs[i].clone();
        let mut last = None;
        for _ in 0..50 {
            let sockets = match self.held.get_mut(i).and_then(Option::take) {
                Some(s) => s,
                None => BoundSockets {
                    serve: bind_udp(cfg.listen).await?,
                    peer: bind_udp(cfg.peer_listen).await?,
                },
            };
            match Replica::start_on(&cfg, sockets).await {
                Ok(r) => {
                    self.replicas[i] = ReplicaHandle::InProcess(Box::new(r));
                    return Ok(());
                }
                Err(e) => {
                    // The database may still be held by the stopping replica.
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("replica did not restart")))
    }
}

/// Stops `child` as a service manager does: SIGTERM, then waits (bounded
/// by `within`; SIGKILL after it) for it to exit; how it exited. `what`
/// names it in the error.
pub async fn terminate(
    child: &mut tokio::process::Child,
    within: Duration,
    what: &str,
) -> anyhow::Result<std::process::ExitStatus> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("{what}: the process already exited"))?;
    signal(pid, "TERM").await?;
    match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            let _ = child.kill().await;
            anyhow::bail!("{what} did not exit within {within:?} of SIGTERM")
        }
    }
}

/// Sends the signal `name` (`TERM`, `HUP`) to process `pid` (with `kill`,
/// which every test machine has).
pub async fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let sent = tokio::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(sent.success(), "kill -{name} {pid} failed");
    Ok(())
}

fn clusters_dir(dir: &Path, k: usize) -> PathBuf {
    dir.join("vault").join(cluster_name(k))
}

fn cluster_configs(clusters: &[LocalCluster]) -> Vec<ClusterConfig> {
    clusters
        .iter()
        .map(|c| ClusterConfig {
            name: c.name.clone(),
            replicas: c.configs.iter().map(|r| r.listen).collect(),
            server_name: service_kit::pki::REPLICA_ROLE_NAME.into(),
        })
        .collect()
}

/// What a process wrote to its log file `path` after its first `offset`
/// bytes (empty if it cannot be read).
pub(crate) fn log_since(path: &std::path::Path, offset: u64) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b[(offset as usize).min(b.len())..]).into_owned())
        .unwrap_or_default()
}

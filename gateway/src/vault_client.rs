//! The gateway's links to the vault clusters: the cluster an account lives
//! on ([`crate::placement`]), and, within a cluster, finding and caching its
//! leader over mutually authenticated QUIC, one stream per request, through
//! the relay stack ([`crate::relay`]: shedding, a concurrency limit, the
//! deadline, the retry decision of [`crate::retry`]), routing around
//! replicas that cannot serve ([`crate::health`]).
//!
//! Retries are where guesses could be double-counted, so the rule is: a
//! request moves to another replica only when it certainly did nothing —
//! the connection could not be made, or the replica answered "not the
//! leader". Once a state-changing request has been sent, a broken link or
//! timeout is reported as `UNAVAILABLE` and never retried here (the client
//! decides; a login start may have counted a guess).
//!
//! Must never: retry a sent state-changing request, or forward a replica's
//! "not the leader" to a client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol_spec::internal::{
    vault_response, MembersQuery, ReplicaHealth, VaultRequest, VaultResponse,
};
use tower::ServiceExt;

use crate::health::{Health, Strike};
use crate::placement::{place, redirect};
use crate::relay::{self, AttemptError, Call, RelayConfig, Relayed};
use protocol_spec::msg;
use protocol_spec::stream_io::{read_message, write_message};
use quinn::crypto::rustls::QuicClientConfig;
use serde::{Deserialize, Serialize};
use service_kit::pki::{self, CertAndKey};
use tokio::sync::Mutex;

/// How long to wait for a QUIC handshake with one replica before trying the
/// next (loopback and a data-center network answer in well under this).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One vault cluster as the gateway reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Stable name; accounts are placed by hashing it, so never rename a
    /// cluster that holds deposits.
    pub name: String,
    /// Gateway-facing addresses of its replicas.
    pub replicas: Vec<SocketAddr>,
    /// TLS name on the replica certificates. Default `replica.bkv.internal`.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    service_kit::pki::REPLICA_ROLE_NAME.into()
}

/// Mutual-TLS client config for the vault links.
pub fn client_config(
    identity: &CertAndKey,
    vault_ca_pem: &str,
) -> anyhow::Result<quinn::ClientConfig> {
    let tls = pki::mtls_client_config(identity, vault_ca_pem, protocol_spec::noise::VAULT_ALPN)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    // A replica that dies mid-request (kill -9, power loss) sends nothing;
    // keep-alives every 500 ms make its link time out after 2 s, which
    // bounds how long a request in flight to it waits.
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(2))?));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// The account a readiness probe reads (never registered).
pub const READINESS_ACCOUNT: &str = "gateway.readiness-probe";

/// All vault clusters, with accounts placed by rendezvous hashing.
pub struct VaultClusters {
    endpoint: quinn::Endpoint,
    clusters: Vec<ClusterLink>,
    /// The mutual-TLS client config new links use; a reload replaces it.
    tls: LinkTls,
}

/// The vault links' client config, shared by every cluster's links and
/// replaced whole by a reload (quinn keeps an endpoint's default config per
/// handle, so a shared default could not be swapped).
type LinkTls = Arc<std::sync::RwLock<quinn::ClientConfig>>;

impl std::fmt::Debug for VaultClusters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultClusters")
            .field("clusters", &self.clusters.len())
            .finish_non_exhaustive()
    }
}

impl VaultClusters {
    /// Links to `clusters` (connections are made lazily).
    pub fn new(
        clusters: &[ClusterConfig],
        identity: &CertAndKey,
        vault_ca_pem: &str,
        relay: RelayConfig,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !clusters.is_empty(),
            "no vault cluster configured; add a [[vault_clusters]] section"
        );
        for c in clusters {
            anyhow::ensure!(
                !c.replicas.is_empty(),
                "vault cluster `{}` lists no replicas",
                c.name
            );
            anyhow::ensure!(
                clusters.iter().filter(|o| o.name == c.name).count() == 1,
                "vault cluster name `{}` appears twice",
                c.name
            );
        }
        let v6 = clusters
            .iter()
            .flat_map(|c| &c.replicas)
            .any(|a| a.is_ipv6());
        let bind: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
        let endpoint = quinn::Endpoint::client(bind)?;
        let tls: LinkTls = Arc::new(std::sync::RwLock::new(client_config(
            identity,
            vault_ca_pem,
        )?));
        Ok(Self {
            clusters: clusters
                .iter()
                .map(|c| ClusterLink::new(c.clone(), endpoint.clone(), tls.clone(), relay))
                .collect(),
            endpoint,
            tls,
        })
    }

    /// Takes a new client certificate (and vault CA) for the links made
    /// from now on; links already open keep theirs until they close.
    pub fn set_identity(&self, identity: &CertAndKey, vault_ca_pem: &str) -> anyhow::Result<()> {
        let cfg = client_config(identity, vault_ca_pem)?;
        *self
            .tls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cfg;
        Ok(())
    }

    /// The cluster that holds `account_id`'s deposit.
    pub fn cluster_for(&self, account_id: &str) -> &ClusterLink {
        let i = place(account_id, self.clusters.iter().map(|c| c.name()));
        &self.clusters[i]
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterLink> {
        self.clusters.iter().find(|c| c.name() == name)
    }

    /// Whether every cluster's leader answers a quorum read now (readiness):
    /// a status read of a reserved account, which no phone can hold (its id
    /// is not one an account service mints). The first failing cluster's
    /// name and reason otherwise.
    pub async fn probe(&self) -> Result<(), String> {
        for c in &self.clusters {
            let req = msg::Request {
                kind: Some(msg::request::Kind::Status(msg::StatusRequest {})),
            };
            match c.call(READINESS_ACCOUNT, &[], req).await.kind {
                Some(msg::response::Kind::Status(_)) => {}
                Some(msg::response::Kind::Error(e)) => {
                    return Err(format!("vault cluster {}: {}", c.name(), e.message))
                }
                _ => return Err(format!("vault cluster {}: no answer", c.name())),
            }
        }
        Ok(())
    }

    /// Relays one request to the leader of the account's cluster.
    /// `device_key` is the device's static Noise key, proven in its
    /// handshake (the vault pins a replacement without proof to it).
    pub async fn call(
        &self,
        account_id: &str,
        device_key: &[u8],
        request: msg::Request,
    ) -> msg::Response {
        self.cluster_for(account_id)
            .call(account_id, device_key, request)
            .await
    }

    /// Relays one request to the leader of the account's cluster and says
    /// how it ended (the server maps that to the phone's answer and the
    /// `gateway_requests_total` outcome).
    pub async fn relay(
        &self,
        account_id: &str,
        device_key: &[u8],
        request: msg::Request,
    ) -> Relayed {
        self.cluster_for(account_id)
            .relay(account_id, device_key, request)
            .await
    }

    /// Closes every link.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

/// The link to one cluster: the relay stack ([`crate::relay`]) over the
/// cluster's replicas, the cached leader, their health, one connection per
/// replica.
///
/// The configured replicas are seeds: every answer of a replica carries the
/// log index of the Raft membership it has applied, and when that is newer
/// than what the link knows, the link asks for the members and routes to
/// them from then on, so replicas added or removed by a membership change
/// are followed without a restart.
pub struct ClusterLink {
    link: Arc<Link>,
    stack: relay::Stack,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("name", &self.link.config.name)
            .finish_non_exhaustive()
    }
}

/// What the relay stack's attempts share: replicas, leader, health,
/// connections.
pub struct Link {
    config: ClusterConfig,
    endpoint: quinn::Endpoint,
    tls: LinkTls,
    /// Gateway-facing addresses of the voters of the newest membership
    /// learned, or the configured replicas until one is.
    replicas: std::sync::RwLock<Vec<SocketAddr>>,
    /// Log index of the membership `replicas` comes from (0: configured).
    membership_id: AtomicU64,
    leader: std::sync::Mutex<Option<SocketAddr>>,
    health: std::sync::Mutex<Health>,
    /// A probe of down replicas is running.
    probing: AtomicBool,
    next: AtomicUsize,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// An ignored redirect was logged at warn level already: a misconfigured
    /// replica would otherwise log one warning per relayed request.
    warned_redirect: AtomicBool,
}

/// What a replica's answer came to, short of the request's fate.
enum Exchanged {
    Answer(msg::Response),
    NotLeader(Option<SocketAddr>),
}

impl ClusterLink {
    fn new(
        config: ClusterConfig,
        endpoint: quinn::Endpoint,
        tls: LinkTls,
        relay: RelayConfig,
    ) -> Self {
        let link = Arc::new(Link {
            replicas: std::sync::RwLock::new(config.replicas.clone()),
            membership_id: AtomicU64::new(0),
            config,
            endpoint,
            tls,
            leader: std::sync::Mutex::new(None),
            health: std::sync::Mutex::new(Health::default()),
            probing: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            warned_redirect: AtomicBool::new(false),
        });
        Self {
            stack: relay::stack(link.clone(), relay),
            link,
        }
    }

    /// The cluster's configured name.
    pub fn name(&self) -> &str {
        &self.link.config.name
    }

    /// The leader this link last saw, if any.
    pub fn cached_leader(&self) -> Option<SocketAddr> {
        self.link.cached_leader()
    }

    /// The replicas requests go to: the voters of the newest membership
    /// learned (or the configured replicas).
    pub fn replicas(&self) -> Vec<SocketAddr> {
        self.link.replicas()
    }

    /// The replicas marked down now (routed around until a probe finds
    /// them healthy).
    pub fn down_replicas(&self) -> Vec<SocketAddr> {
        let r = self.link.replicas();
        self.link
            .health
            .lock()
            .map(|h| r.into_iter().filter(|a| !h.usable(*a)).collect())
            .unwrap_or_default()
    }

    /// Relays one request through the stack and says how it ended.
    pub async fn relay(
        &self,
        account_id: &str,
        device_key: &[u8],
        request: msg::Request,
    ) -> Relayed {
        let started = Instant::now();
        self.link.probe_due(started);
        let req = VaultRequest {
            account_id: account_id.to_owned(),
            request: Some(request),
            members: None,
            device_key: device_key.to_vec(),
        };
        let n = self.link.replica_count();
        let call = Call::new(req, n, started);
        let out = Relayed::from_result(self.stack.clone().oneshot(call).await);
        metrics::histogram!("gateway_vault_request_seconds")
            .record(started.elapsed().as_secs_f64());
        out
    }

    /// Relays one request to this cluster's leader and returns what the
    /// phone receives.
    pub async fn call(
        &self,
        account_id: &str,
        device_key: &[u8],
        request: msg::Request,
    ) -> msg::Response {
        self.relay(account_id, device_key, request)
            .await
            .into_response()
            .0
    }
}

impl Link {
    fn cached_leader(&self) -> Option<SocketAddr> {
        self.leader.lock().ok().and_then(|g| *g)
    }

    /// Records the leader (`None`: unknown).
    pub(crate) fn set_leader(&self, addr: Option<SocketAddr>) {
        if let Ok(mut g) = self.leader.lock() {
            if *g != addr && addr.is_some() {
                metrics::counter!("gateway_vault_leader_changes_total").increment(1);
            }
            *g = addr;
        }
    }

    /// How many replicas a call may go through (for the retry budget),
    /// without copying the list on each request.
    fn replica_count(&self) -> usize {
        let known = self.replicas.read().map_or(0, |r| r.len());
        known.max(self.config.replicas.len())
    }

    fn replicas(&self) -> Vec<SocketAddr> {
        match self.replicas.read() {
            Ok(r) => r.clone(),
            Err(_) => self.config.replicas.clone(),
        }
    }

    /// Where an attempt without a target goes: the cached leader unless it
    /// is down, else the next replica that is not down.
    fn pick(&self) -> SocketAddr {
        let Ok(health) = self.health.lock() else {
            return self.config.replicas[0];
        };
        if let Some(l) = self.cached_leader().filter(|l| health.usable(*l)) {
            return l;
        }
        // Only without a usable leader is the replica list copied.
        let replicas = self.replicas();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        health
            .pick(&replicas, start)
            .unwrap_or(self.config.replicas[0])
    }

    /// Marks `addr` down (and forgets it as leader).
    fn strike(&self, addr: SocketAddr, why: Strike) {
        if self.cached_leader() == Some(addr) {
            self.set_leader(None);
        }
        let Ok(mut h) = self.health.lock() else {
            return;
        };
        if h.strike(addr, why, Instant::now()) {
            metrics::counter!("gateway_vault_replicas_marked_down_total", "reason" => why.label())
                .increment(1);
            tracing::warn!(
                cluster = %self.config.name,
                replica = %addr,
                reason = why.label(),
                "vault replica marked down; requests go to the others until a probe finds it healthy"
            );
        }
    }

    /// `addr` answered as one that can serve.
    fn healthy(&self, addr: SocketAddr) {
        let back = self
            .health
            .lock()
            .map(|mut h| h.healthy(addr))
            .unwrap_or(false);
        if back {
            tracing::info!(cluster = %self.config.name, replica = %addr, "vault replica healthy again");
        }
    }

    /// Notes what an answer's `health` says of the replica that gave it.
    fn note_health(&self, addr: SocketAddr, health: ReplicaHealth) {
        match health {
            ReplicaHealth::Serving | ReplicaHealth::Unspecified => self.healthy(addr),
            ReplicaHealth::NoLeader => self.strike(addr, Strike::NoLeader),
            ReplicaHealth::Stopped => self.strike(addr, Strike::Stopped),
        }
    }

    /// Starts a probe of the down replicas whose pause is over, unless one
    /// runs: each is asked for the members (which changes nothing and
    /// needs no quorum), and its answer's `health` decides. Phones'
    /// requests never serve as probes.
    fn probe_due(self: &Arc<Self>, now: Instant) {
        let due = match self.health.lock() {
            // The common case (every replica up) costs one lock.
            Ok(h) if h.down_count() == 0 => return,
            Ok(h) => h.due(&self.replicas(), now),
            Err(_) => return,
        };
        if due.is_empty() || self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let link = self.clone();
        tokio::spawn(async move {
            let req = VaultRequest {
                members: Some(MembersQuery {}),
                ..Default::default()
            };
            for addr in due {
                metrics::counter!("gateway_vault_probes_total").increment(1);
                match tokio::time::timeout(PROBE_TIMEOUT, link.exchange(addr, &req)).await {
                    Ok(Ok(resp)) => link.note_health(addr, resp.health()),
                    Ok(Err(_)) | Err(_) => link.strike(addr, Strike::Unreachable),
                }
            }
            link.probing.store(false, Ordering::Release);
        });
    }

    /// Whether `addr` is a replica of this cluster: configured, or a member
    /// of the membership learned from it.
    fn is_member(&self, addr: SocketAddr) -> bool {
        self.config.replicas.contains(&addr) || self.replicas().contains(&addr)
    }

    /// Asks the replica at `addr` for the cluster's members, and routes to
    /// them if that membership is newer than the one known.
    async fn learn_members(&self, addr: SocketAddr) {
        let req = VaultRequest {
            members: Some(MembersQuery {}),
            ..Default::default()
        };
        let members = match self.exchange(addr, &req).await {
            Ok(VaultResponse {
                kind: Some(vault_response::Kind::Members(m)),
                ..
            }) => m,
            Ok(_) => return,
            Err(_) => {
                tracing::debug!(replica = %addr, "membership query failed");
                return;
            }
        };
        let voters: Vec<SocketAddr> = members
            .members
            .iter()
            .filter(|m| m.voter)
            .filter_map(|m| m.serve_addr.parse().ok())
            .collect();
        if voters.is_empty() {
            return;
        }
        let Ok(mut known) = self.replicas.write() else {
            return;
        };
        if members.membership_id > self.membership_id.load(Ordering::Acquire) {
            self.membership_id
                .store(members.membership_id, Ordering::Release);
            if *known != voters {
                tracing::info!(
                    cluster = %self.config.name,
                    membership = members.membership_id,
                    replicas = ?voters,
                    "vault cluster membership changed; routing to its voters"
                );
                metrics::counter!("gateway_vault_membership_changes_total").increment(1);
                if let Ok(mut h) = self.health.lock() {
                    h.retain(&voters);
                }
            }
            *known = voters;
        }
    }

    /// Learns the members if a replica's answer says its membership is
    /// newer than the one known.
    async fn note_membership(&self, from: SocketAddr, membership_id: u64) {
        if membership_id > self.membership_id.load(Ordering::Acquire) {
            self.learn_members(from).await;
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, AttemptError> {
        if let Some(c) = self.conns.lock().await.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let not_sent = |why: String| AttemptError::NotSent { target: addr, why };
        let tls = self
            .tls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let connecting = self
            .endpoint
            .connect_with(tls, addr, &self.config.server_name)
            .map_err(|e| not_sent(e.to_string()))?;
        let c = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| not_sent(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| {
                if is_tls_refusal(&e) {
                    AttemptError::Refused {
                        target: addr,
                        why: e.to_string(),
                    }
                } else {
                    not_sent(e.to_string())
                }
            })?;
        self.conns.lock().await.insert(addr, c.clone());
        Ok(c)
    }

    /// One request and its answer on a new stream to `addr`.
    async fn exchange(
        &self,
        addr: SocketAddr,
        req: &VaultRequest,
    ) -> Result<VaultResponse, AttemptError> {
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| AttemptError::NotSent {
            target: addr,
            why: e.to_string(),
        })?;
        let lost = |e: protocol_spec::stream_io::StreamError| AttemptError::Lost {
            target: addr,
            why: e.to_string(),
            timed_out: false,
        };
        write_message(&mut send, req).await.map_err(lost)?;
        let _ = send.finish();
        read_message::<VaultResponse, _>(&mut recv)
            .await
            .map_err(lost)
    }

    /// One attempt at `target` (or the replica [`Link::pick`] chooses),
    /// within `budget`; tells the health table and the leader cache what
    /// it saw.
    pub(crate) async fn attempt(
        &self,
        target: Option<SocketAddr>,
        req: &VaultRequest,
        budget: Duration,
    ) -> Result<msg::Response, AttemptError> {
        let target = target.unwrap_or_else(|| self.pick());
        let exchanged = tokio::time::timeout(budget, async {
            let resp = self.exchange(target, req).await?;
            self.note_membership(target, resp.membership_id).await;
            let health = resp.health();
            match resp.kind {
                Some(vault_response::Kind::Response(r)) => Ok((Exchanged::Answer(r), health)),
                Some(vault_response::Kind::NotLeader(n)) => {
                    Ok((Exchanged::NotLeader(n.leader_addr.parse().ok()), health))
                }
                Some(vault_response::Kind::Members(_)) | None => Err(AttemptError::Lost {
                    target,
                    why: "unexpected vault response".into(),
                    timed_out: false,
                }),
            }
        })
        .await;
        let (exchanged, health) = match exchanged {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                match &e {
                    AttemptError::NotSent { why, .. } => {
                        tracing::debug!(replica = %target, error = %why, "vault replica unreachable");
                        self.strike(target, Strike::Unreachable);
                    }
                    AttemptError::Refused { why, .. } => {
                        tracing::error!(replica = %target, error = %why, "vault refused the gateway's certificate");
                    }
                    AttemptError::Lost { why, .. } => {
                        self.set_leader(None);
                        if !crate::retry::is_idempotent(
                            req.request.as_ref().and_then(|r| r.kind.as_ref()),
                        ) {
                            tracing::warn!(replica = %target, error = %why, "vault link lost after sending; not retried");
                        }
                        self.strike(target, Strike::Unreachable);
                    }
                    AttemptError::NotLeader { .. } | AttemptError::GaveUp(_) => {}
                }
                return Err(e);
            }
            Err(_) => {
                self.set_leader(None);
                return Err(AttemptError::Lost {
                    target,
                    why: format!("no answer within {budget:?}"),
                    timed_out: true,
                });
            }
        };
        self.note_health(target, health);
        match exchanged {
            Exchanged::Answer(r) => {
                if health != ReplicaHealth::Stopped {
                    self.set_leader(Some(target));
                }
                Ok(r)
            }
            Exchanged::NotLeader(named) => {
                // A leader the link does not know yet may have joined.
                if named.is_some_and(|n| !self.is_member(n)) {
                    self.learn_members(target).await;
                }
                let redirect = redirect(|a| self.is_member(a), target, named);
                if redirect.is_none() {
                    if named.is_some_and(|n| n != target) {
                        self.warn_redirect_ignored(target, named);
                    }
                    self.set_leader(None);
                }
                Err(AttemptError::NotLeader { target, redirect })
            }
        }
    }

    /// Logs once that a replica named a leader outside this cluster's
    /// membership; later ones are only counted.
    fn warn_redirect_ignored(&self, target: SocketAddr, named: Option<SocketAddr>) {
        metrics::counter!("gateway_vault_redirects_ignored_total").increment(1);
        if !self.warned_redirect.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cluster = %self.config.name,
                replica = %target,
                named = ?named,
                "a replica named a leader that is not a member of this cluster; \
                 ignored (check the replicas' `serve` addresses against the gateway's `vault_clusters`; \
                 further ones are counted in gateway_vault_redirects_ignored_total)"
            );
        }
    }
}

/// How long a probe waits for a down replica's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a failed handshake was a TLS refusal (a crypto alert).
fn is_tls_refusal(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        _ => false,
    }
}

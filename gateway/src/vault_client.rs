//! The gateway's links to the vault clusters: the cluster an account lives
//! on ([`crate::placement`]), and, within a cluster, finding and caching its
//! leader over mutually authenticated QUIC, one stream per request, with
//! each attempt's outcome handed to the retry decision ([`crate::retry`]).
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

use protocol_spec::internal::{vault_response, MembersQuery, VaultRequest, VaultResponse};
use protocol_spec::limits::VAULT_CALL_DEADLINE;

use crate::placement::{place, redirect};
use crate::retry::{self, Decision, Failure, GaveUp, Retry};
use protocol_spec::msg::{self, ErrorCode};
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
}

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
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client_config(identity, vault_ca_pem)?);
        Ok(Self {
            clusters: clusters
                .iter()
                .map(|c| ClusterLink::new(c.clone(), endpoint.clone()))
                .collect(),
            endpoint,
        })
    }

    /// The cluster that holds `account_id`'s deposit.
    pub fn cluster_for(&self, account_id: &str) -> &ClusterLink {
        let i = place(
            account_id,
            self.clusters.iter().map(|c| c.config.name.as_str()),
        );
        &self.clusters[i]
    }

    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterLink> {
        self.clusters.iter().find(|c| c.config.name == name)
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
                    return Err(format!("vault cluster {}: {}", c.config.name, e.message))
                }
                _ => return Err(format!("vault cluster {}: no answer", c.config.name)),
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

    /// Closes every link.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

/// The link to one cluster: its replicas, the cached leader, one
/// connection per replica.
///
/// The configured replicas are seeds: every answer of a replica carries the
/// log index of the Raft membership it has applied, and when that is newer
/// than what the link knows, the link asks for the members and routes to
/// them from then on, so replicas added or removed by a membership change
/// are followed without a restart.
pub struct ClusterLink {
    config: ClusterConfig,
    endpoint: quinn::Endpoint,
    /// Gateway-facing addresses of the voters of the newest membership
    /// learned, or the configured replicas until one is.
    replicas: std::sync::RwLock<Vec<SocketAddr>>,
    /// Log index of the membership `replicas` comes from (0: configured).
    membership_id: AtomicU64,
    leader: std::sync::Mutex<Option<SocketAddr>>,
    next: AtomicUsize,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    /// An ignored redirect was logged at warn level already: a misconfigured
    /// replica would otherwise log one warning per relayed request.
    warned_redirect: AtomicBool,
}

impl std::fmt::Debug for ClusterLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLink")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

enum Attempt {
    /// The replica answered.
    Answer(msg::Response),
    /// "Not the leader": nothing was done.
    NotLeader(Option<SocketAddr>),
    /// Nothing was sent (no connection or no stream); safe to try elsewhere.
    NotSent(String),
    /// The replica refused this gateway in the TLS handshake (certificate
    /// not trusted): retrying cannot help.
    Refused(String),
    /// Sent, then the link failed: the outcome is unknown.
    Lost(String),
}

impl ClusterLink {
    fn new(config: ClusterConfig, endpoint: quinn::Endpoint) -> Self {
        Self {
            replicas: std::sync::RwLock::new(config.replicas.clone()),
            membership_id: AtomicU64::new(0),
            config,
            endpoint,
            leader: std::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
            conns: Mutex::new(HashMap::new()),
            warned_redirect: AtomicBool::new(false),
        }
    }

    /// The leader this link last saw, if any.
    pub fn cached_leader(&self) -> Option<SocketAddr> {
        self.leader.lock().ok().and_then(|g| *g)
    }

    fn set_leader(&self, addr: Option<SocketAddr>) {
        if let Ok(mut g) = self.leader.lock() {
            if *g != addr && addr.is_some() {
                metrics::counter!("gateway_vault_leader_changes_total").increment(1);
            }
            *g = addr;
        }
    }

    /// The replicas requests go to: the voters of the newest membership
    /// learned (or the configured replicas).
    pub fn replicas(&self) -> Vec<SocketAddr> {
        match self.replicas.read() {
            Ok(r) => r.clone(),
            Err(_) => self.config.replicas.clone(),
        }
    }

    fn next_replica(&self) -> SocketAddr {
        let r = self.replicas();
        match r.len() {
            0 => self.config.replicas[0],
            n => r[self.next.fetch_add(1, Ordering::Relaxed) % n],
        }
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

    async fn connection(&self, addr: SocketAddr) -> Result<quinn::Connection, Attempt> {
        if let Some(c) = self.conns.lock().await.get(&addr) {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect(addr, &self.config.server_name)
            .map_err(|e| Attempt::NotSent(e.to_string()))?;
        let c = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                Attempt::NotSent(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}"))
            })?
            .map_err(|e| {
                if is_tls_refusal(&e) {
                    Attempt::Refused(format!("replica {addr} refused this gateway: {e}"))
                } else {
                    Attempt::NotSent(e.to_string())
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
    ) -> Result<VaultResponse, Attempt> {
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| Attempt::NotSent(e.to_string()))?;
        write_message(&mut send, req)
            .await
            .map_err(|e| Attempt::Lost(e.to_string()))?;
        let _ = send.finish();
        read_message::<VaultResponse, _>(&mut recv)
            .await
            .map_err(|e| Attempt::Lost(e.to_string()))
    }

    async fn attempt(&self, addr: SocketAddr, req: &VaultRequest) -> Attempt {
        let resp = match self.exchange(addr, req).await {
            Ok(r) => r,
            Err(a) => return a,
        };
        self.note_membership(addr, resp.membership_id).await;
        match resp.kind {
            Some(vault_response::Kind::Response(r)) => Attempt::Answer(r),
            Some(vault_response::Kind::NotLeader(n)) => {
                Attempt::NotLeader(n.leader_addr.parse().ok())
            }
            Some(vault_response::Kind::Members(_)) | None => {
                Attempt::Lost("unexpected vault response".into())
            }
        }
    }

    /// The phone's `UNAVAILABLE` for a call that gave up (counted by
    /// reason; the replica details were logged as they happened).
    fn gave_up(&self, why: GaveUp) -> msg::Response {
        metrics::counter!("gateway_vault_gave_up_total", "reason" => why.label()).increment(1);
        unavailable(why.reason())
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

    /// Relays one request to this cluster's leader, following redirects
    /// and retrying as [`Retry`] decides, within [`VAULT_CALL_DEADLINE`].
    pub async fn call(
        &self,
        account_id: &str,
        device_key: &[u8],
        request: msg::Request,
    ) -> msg::Response {
        let idempotent = retry::is_idempotent(request.kind.as_ref());
        let req = VaultRequest {
            account_id: account_id.to_owned(),
            request: Some(request),
            members: None,
            device_key: device_key.to_vec(),
        };
        let started = Instant::now();
        let n = self.replicas().len().max(self.config.replicas.len());
        let mut policy = Retry::new(started, VAULT_CALL_DEADLINE, n, idempotent);
        let mut target = self.cached_leader().unwrap_or_else(|| self.next_replica());
        let out = loop {
            let left = match policy.next_attempt(Instant::now()) {
                Ok(left) => left,
                Err(gave_up) => break self.gave_up(gave_up),
            };
            let attempt = tokio::time::timeout(left, self.attempt(target, &req)).await;
            let decision = match attempt {
                Ok(Attempt::Answer(r)) => {
                    self.set_leader(Some(target));
                    break r;
                }
                Ok(Attempt::NotLeader(named)) => {
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
                    policy.failed(Failure::NotLeader { redirect }, Instant::now())
                }
                Ok(Attempt::NotSent(e)) => {
                    tracing::debug!(replica = %target, error = %e, "vault replica unreachable");
                    if self.cached_leader() == Some(target) {
                        self.set_leader(None);
                    }
                    policy.failed(Failure::NotSent(e), Instant::now())
                }
                Ok(Attempt::Refused(e)) => {
                    tracing::error!(error = %e, "vault refused the gateway's certificate");
                    policy.failed(Failure::Refused(e), Instant::now())
                }
                Ok(Attempt::Lost(e)) => {
                    self.set_leader(None);
                    if !idempotent {
                        tracing::warn!(error = %e, "vault link lost after sending; not retried");
                    }
                    policy.failed(
                        Failure::Lost(format!("replica {target}: {e}")),
                        Instant::now(),
                    )
                }
                Err(_) => {
                    self.set_leader(None);
                    policy.timed_out(Instant::now())
                }
            };
            match decision {
                Decision::Redirect(leader) => {
                    self.set_leader(Some(leader));
                    target = leader;
                }
                Decision::Retry { after } => {
                    metrics::counter!("gateway_vault_retries_total").increment(1);
                    tokio::time::sleep(after).await;
                    target = self.next_replica();
                }
                Decision::GiveUp(gave_up) => break self.gave_up(gave_up),
            }
        };
        metrics::histogram!("gateway_vault_request_seconds")
            .record(started.elapsed().as_secs_f64());
        out
    }
}

/// Whether a failed handshake was a TLS refusal (a crypto alert).
fn is_tls_refusal(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(c.error_code),
        _ => false,
    }
}

fn unavailable(why: &str) -> msg::Response {
    let mut e = msg::Error::new(
        ErrorCode::Unavailable,
        format!("the vault is unavailable ({why}); retry in a moment"),
    );
    e.retry_after_ms = protocol_spec::classify::classify(ErrorCode::Unavailable).retry_after_ms();
    msg::Response {
        kind: Some(msg::response::Kind::Error(e)),
    }
}

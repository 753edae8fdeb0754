//! The public endpoint: accepts QUIC connections, runs the Noise responder
//! (sans-IO, from `protocol_spec::handshake`) on the first stream, then
//! relays each later stream's request to the vault.
//!
//! Owns connection lifecycle and close codes. Must never: accept a request
//! stream before authentication (the connection is closed UNAUTHENTICATED),
//! pass a request the decoder or validator rejected, or log account ids.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol_spec::credential::CredentialVerifier;
use protocol_spec::framing;
use protocol_spec::handshake::{AuthenticatedDevice, Responder, ResponderStep};
use protocol_spec::limits::{HANDSHAKE_TIMEOUT, MAX_CONCURRENT_REQUESTS, RELAY_TIMEOUT};
use protocol_spec::msg::{self, ErrorCode};
use protocol_spec::noise::{self, EXPORTER_LEN};
use protocol_spec::stream_io::{read_frame, write_frame, write_message, StreamError};
use protocol_spec::CloseCode;
use quinn::crypto::rustls::QuicServerConfig;
use service_kit::pki;

use crate::admission::{Admission, AdmissionConfig, Decision, Permit};
use crate::budget::{BudgetConfig, Budgets};
use crate::connections::{Caps, ConnectionCaps, Ticket};
use crate::keys::GatewayKeys;
use crate::vault_client::{ClusterConfig, VaultClusters};

/// What a handshake needs and a reload (SIGHUP) replaces: the Noise keys
/// and the account service's verification keys.
struct HandshakeKeys {
    noise_private: zeroize::Zeroizing<[u8; 32]>,
    noise_public: [u8; 32],
    /// The key being retired and when it stops being accepted.
    previous: Option<(zeroize::Zeroizing<[u8; 32]>, std::time::SystemTime)>,
    verifier: CredentialVerifier,
}

impl HandshakeKeys {
    fn new(keys: &GatewayKeys) -> anyhow::Result<Self> {
        let account_keys: Vec<&[u8]> = keys
            .account_service_public
            .iter()
            .map(Vec::as_slice)
            .collect();
        Ok(Self {
            noise_private: keys.noise_private.clone(),
            noise_public: keys.noise_public,
            previous: keys
                .noise_previous
                .as_ref()
                .map(|p| (p.private.clone(), p.retire_at)),
            verifier: CredentialVerifier::with_keys(&account_keys)?,
        })
    }

    /// The responder for one connection: the current key, and the previous
    /// one while its overlap lasts (checked at each handshake, so it ends
    /// on time without a reload).
    fn responder(&self, exporter: [u8; EXPORTER_LEN]) -> Responder<'_> {
        let r = Responder::new(*self.noise_private, exporter, &self.verifier);
        match &self.previous {
            Some((private, until)) if std::time::SystemTime::now() < *until => {
                r.with_previous_key(**private, self.noise_public)
            }
            _ => r,
        }
    }
}

/// Shared state of a running gateway.
struct Shared {
    /// Replaced whole by a reload; each handshake takes the keys current
    /// when it starts.
    keys: std::sync::RwLock<Arc<HandshakeKeys>>,
    vault: VaultClusters,
    budgets: Budgets,
    admission: Admission,
    /// Authenticated connections per device and account.
    connections: std::sync::Mutex<Caps<quinn::Connection>>,
    /// Set once the gateway drains: connections stop taking requests.
    draining: tokio::sync::watch::Sender<bool>,
    /// Connections open now (handshaking or authenticated).
    open: AtomicUsize,
}

/// What the gateway lets in: admission before authentication and budgets
/// after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrontDoor {
    /// Per-device and per-account request budgets.
    pub budgets: BudgetConfig,
    /// Bounds on handshakes in progress.
    pub admission: AdmissionConfig,
    /// Bounds of the relay to each vault cluster.
    pub relay: crate::relay::RelayConfig,
    /// Authenticated connections per device and per account.
    pub connections: ConnectionCaps,
}

/// Whether the gateway should get traffic: not draining, and every vault
/// cluster's leader answers a quorum read.
#[derive(Clone)]
pub struct Readiness(Arc<Shared>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness")
    }
}

impl Readiness {
    /// `Ok` if ready; otherwise why not.
    pub async fn check(&self) -> Result<(), String> {
        if *self.0.draining.borrow() {
            return Err("draining".into());
        }
        self.0.vault.probe().await
    }
}

/// What a drain came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Connections still open at the deadline (closed then, GOING_AWAY).
    pub cut: usize,
    /// How long the drain took.
    pub took: Duration,
}

/// Counts a connection open while it lives.
struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("gateway_connections").decrement(1.0);
    }
}

/// A running gateway.
pub struct Gateway {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

/// The gateway's QUIC server config (TLS 1.3 with its certificate, ALPN `bkv/1`,
/// stream limits, idle timeout); also the load generator's bare-quinn baseline.
pub fn server_config(keys: &GatewayKeys) -> anyhow::Result<quinn::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(
            pki::certs(&keys.tls.cert_pem)?,
            pki::key(&keys.tls.key_pem)?,
        )?;
    tls.alpn_protocols = vec![noise::ALPN.to_vec()];
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    cfg.transport_config(Arc::new(transport_config()?));
    Ok(cfg)
}

/// The phone-facing transport settings, sized for this protocol's small
/// messages rather than quinn's bulk-transfer defaults: with quinn's
/// defaults an idle authenticated connection cost the gateway 48.7 KB, with
/// these 35.3 KB (BENCHMARKS.md, "Memory per idle connection"). Preferring
/// ChaCha20-Poly1305 saved nothing (35.3 KB): aws-lc-rs allocates the same
/// AEAD context for either cipher, so the client's choice stands.
fn transport_config() -> anyhow::Result<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(MAX_CONCURRENT_REQUESTS.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(
        protocol_spec::limits::IDLE_TIMEOUT,
    )?));
    // Flow control: a stream carries at most one frame each way (the
    // handshake stream a few, all small), so a phone may have a whole frame
    // in flight on every stream it may open and nothing more; quinn's
    // defaults (1.25 MB per stream, unbounded per connection, 10 MB to send)
    // let one phone make the gateway buffer megabytes it never asked for.
    let frame = (framing::HEADER_LEN + protocol_spec::limits::MAX_FRAME_LEN) as u32;
    let all = frame * MAX_CONCURRENT_REQUESTS;
    transport.stream_receive_window(frame.into());
    transport.receive_window(all.into());
    transport.send_window(all.into());
    // The protocol has no datagrams: none are buffered either way.
    transport.datagram_receive_buffer_size(None);
    transport.datagram_send_buffer_size(0);
    // Every packet this protocol needs fits the 1200 bytes QUIC guarantees:
    // no path MTU probing, whose probes would grow each connection's send
    // buffer to 1452 bytes for nothing.
    transport.mtu_discovery_config(None);
    // One datagram per send: quinn keeps each connection's send buffer for
    // the connection's life at the size of its largest batch, which with
    // segmentation offload is the whole handshake flight.
    transport.enable_segmentation_offload(false);
    Ok(transport)
}

/// How long a draining connection waits for the finish of a login it
/// started (a phone sends it within milliseconds of the start's answer).
const LOGIN_FINISH_GRACE: Duration = Duration::from_secs(10);

/// How long a relay waits for the phone to acknowledge its answer.
const ANSWER_DELIVERY: Duration = Duration::from_secs(2);

/// How often the buckets of idle devices and accounts are dropped.
const FORGET_IDLE_BUDGETS: std::time::Duration = std::time::Duration::from_secs(60);

/// Aborts a task when the owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Refuses a connection attempt statelessly, counted by reason.
fn refused(incoming: quinn::Incoming, reason: &'static str) {
    metrics::counter!("gateway_handshakes_refused_total", "reason" => reason).increment(1);
    incoming.refuse();
}

fn close(conn: &quinn::Connection, code: CloseCode) {
    metrics::counter!("gateway_connections_closed_total", "reason" => close_label(code))
        .increment(1);
    conn.close((code as u32).into(), code.reason());
}

fn close_label(code: CloseCode) -> &'static str {
    match code {
        CloseCode::Normal => "normal",
        CloseCode::ProtocolError => "protocol_error",
        CloseCode::Unauthenticated => "unauthenticated",
        CloseCode::HandshakeTimeout => "handshake_timeout",
        CloseCode::GoingAway => "going_away",
        CloseCode::Internal => "internal",
        CloseCode::ShutDown => "shut_down",
        CloseCode::HandshakeUnreadable => "handshake_unreadable",
    }
}

impl Gateway {
    /// Binds `listen` and starts serving, with the default budgets.
    pub fn start(
        listen: SocketAddr,
        keys: &GatewayKeys,
        vault_clusters: &[ClusterConfig],
    ) -> anyhow::Result<Self> {
        Self::start_with(listen, keys, vault_clusters, &FrontDoor::default())
    }

    /// Binds `listen` and starts serving, letting in what `door` allows
    /// ([`crate::admission`], [`crate::budget`]).
    pub fn start_with(
        listen: SocketAddr,
        keys: &GatewayKeys,
        vault_clusters: &[ClusterConfig],
        door: &FrontDoor,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            keys: std::sync::RwLock::new(Arc::new(HandshakeKeys::new(keys)?)),
            vault: VaultClusters::new(
                vault_clusters,
                &keys.vault_client,
                &keys.vault_ca_pem,
                door.relay,
            )?,
            budgets: Budgets::new(&door.budgets),
            admission: Admission::new(door.admission),
            connections: std::sync::Mutex::new(Caps::new(door.connections)),
            draining: tokio::sync::watch::channel(false).0,
            open: AtomicUsize::new(0),
        });
        let endpoint = crate::udp::public_endpoint(listen, server_config(keys)?)?;
        let ep = endpoint.clone();
        let sh = shared.clone();
        let task = tokio::spawn(async move {
            let idle = sh.clone();
            let _forget = AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(FORGET_IDLE_BUDGETS);
                loop {
                    tick.tick().await;
                    idle.budgets.forget_idle();
                }
            }));
            while let Some(incoming) = ep.accept().await {
                let source = incoming.remote_address().ip();
                let permit = match sh.admission.decide(
                    source,
                    incoming.remote_address_validated(),
                    Instant::now(),
                ) {
                    Decision::Accept(p) => p,
                    Decision::Retry if incoming.may_retry() => {
                        metrics::counter!("gateway_handshakes_retried_total").increment(1);
                        let _ = incoming.retry();
                        continue;
                    }
                    Decision::Retry => {
                        // A source that already answered a Retry cannot be
                        // asked again: treat it as validated.
                        match sh.admission.decide(source, true, Instant::now()) {
                            Decision::Accept(p) => p,
                            _ => {
                                refused(incoming, "handshakes_full");
                                continue;
                            }
                        }
                    }
                    Decision::Refuse(r) => {
                        refused(incoming, r.label());
                        continue;
                    }
                };
                let sh = sh.clone();
                tokio::spawn(async move {
                    // A QUIC/TLS handshake that stalls while every place
                    // is taken gives its place up too.
                    let conn = tokio::select! {
                        c = incoming => c,
                        _ = permit.evicted() => {
                            metrics::counter!("gateway_handshakes_evicted_total").increment(1);
                            return;
                        }
                    };
                    if let Ok(conn) = conn {
                        sh.open.fetch_add(1, Ordering::AcqRel);
                        metrics::gauge!("gateway_connections").increment(1.0);
                        let _open = OpenGuard(&sh.open);
                        serve_connection(sh.clone(), conn, permit).await;
                    }
                });
            }
        });
        Ok(Self {
            endpoint,
            shared,
            task,
        })
    }

    /// Takes new keys (what SIGHUP does after reading the state folder
    /// again): the TLS certificate for connections made from now on, the
    /// vault-link client certificate for links made from now on, the
    /// Noise keys (current, and previous during a rotation's overlap) and
    /// the account service's keys for handshakes started from now on.
    /// Connections already open are not touched. (A drain consumes the
    /// gateway, so a reload never reopens a draining endpoint.) Nothing is
    /// replaced unless all of it is valid.
    pub fn reload(&self, keys: &GatewayKeys) -> anyhow::Result<()> {
        let handshake = Arc::new(HandshakeKeys::new(keys)?);
        let server = server_config(keys)?;
        self.shared
            .vault
            .set_identity(&keys.vault_client, &keys.vault_ca_pem)?;
        self.endpoint.set_server_config(Some(server));
        *self
            .shared
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = handshake;
        Ok(())
    }

    /// A handle that answers readiness (for the admin port).
    pub fn readiness(&self) -> Readiness {
        Readiness(self.shared.clone())
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The replicas the gateway routes cluster `name`'s requests to now
    /// (learned from the cluster's membership); `None` for an unknown name.
    pub fn vault_replicas(&self, name: &str) -> Option<Vec<SocketAddr>> {
        self.shared.vault.cluster(name).map(|c| c.replicas())
    }

    /// The replicas of cluster `name` the relay routes around now (marked
    /// down until a probe finds them healthy).
    pub fn vault_down_replicas(&self, name: &str) -> Option<Vec<SocketAddr>> {
        self.shared.vault.cluster(name).map(|c| c.down_replicas())
    }

    /// Drains (what SIGTERM and SIGINT do): accepts no new connection;
    /// every connection stops taking requests, lets the ones in flight
    /// finish and be answered, then is closed with `GOING_AWAY` (the phone
    /// reconnects, to another gateway if it has one; a login it started
    /// finishes there, the session being the vault's). After `deadline`,
    /// whatever is still open is closed with `SHUT_DOWN`. Then shuts down.
    pub async fn drain(self, deadline: Duration) -> Drained {
        let started = Instant::now();
        self.endpoint.set_server_config(None);
        self.shared.draining.send_replace(true);
        while self.shared.open.load(Ordering::Acquire) > 0 && started.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cut = self.shared.open.load(Ordering::Acquire);
        self.shutdown().await;
        Drained {
            cut,
            took: started.elapsed(),
        }
    }

    /// Closes every connection at once with `SHUT_DOWN` (requests in flight
    /// are cut, so the phone cannot know whether they were relayed;
    /// [`Gateway::drain`] lets them end first), then waits for the endpoint
    /// to close.
    pub async fn shutdown(self) {
        self.task.abort();
        self.shared.vault.close();
        service_kit::quic::close_endpoint(
            &self.endpoint,
            CloseCode::ShutDown as u32,
            CloseCode::ShutDown.reason(),
        )
        .await;
    }
}

enum HandshakeOutcome {
    Authenticated(AuthenticatedDevice),
    Closed(CloseCode),
}

async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection, permit: Permit) {
    // Boxed so the handshake's state (Noise responder, frame buffers) is
    // freed once it ends instead of sizing this task's future, which an idle
    // authenticated connection holds for as long as it stays open.
    let outcome = tokio::select! {
        o = Box::pin(authenticate(&shared, &conn)) => o,
        // Stalled while every place was taken: its place went to another.
        _ = permit.evicted() => {
            metrics::counter!("gateway_handshakes_evicted_total").increment(1);
            HandshakeOutcome::Closed(CloseCode::HandshakeTimeout)
        }
    };
    let device = match outcome {
        HandshakeOutcome::Authenticated(d) => d,
        HandshakeOutcome::Closed(code) => {
            close(&conn, code);
            return;
        }
    };
    // The handshake is over: its place goes to the next one.
    drop(permit);
    metrics::counter!("gateway_authenticated_total", "pattern" => if device.pattern == msg::NoisePattern::Ik { "ik" } else { "xx" }).increment(1);
    let account: Arc<str> = Arc::from(device.account_id.as_str());
    let device_key = device.device_key;
    let _held = Held::open(&shared, device_key, &account, &conn);
    let mut draining = shared.draining.subscribe();
    // This connection's requests in flight, and its logins started and not
    // yet finished: a drain waits for both (a login cut between its start
    // and its finish would cost its owner a guess).
    let (busy, _) = tokio::sync::watch::channel(0usize);
    let busy = Arc::new(busy);
    let logins = Arc::new(AtomicUsize::new(0));
    // Set once a request was relayed and its answer may not have reached
    // the phone (the relay or the answer's delivery timed out): then this
    // connection may not end with `GOING_AWAY`, which promises the phone
    // that a request without an answer was not relayed (SPEC §6.1).
    let unsure = Arc::new(AtomicBool::new(false));
    let mut drain_started: Option<Instant> = None;
    // The phone's address as last seen: a request arriving from another is
    // counted as a migration (quinn validates the new path itself and has
    // no event for it, so a phone that moves and stays idle is counted at
    // its next request).
    let mut path = conn.remote_address();
    loop {
        if *draining.borrow_and_update() {
            let since = *drain_started.get_or_insert_with(Instant::now);
            // Once nothing is in flight and no login awaits its finish (or
            // the grace is over), the phone is told to go elsewhere. A
            // request in flight may be a login start whose answer opens a
            // login, so both are needed.
            let quiet = *busy.borrow() == 0 && logins.load(Ordering::Acquire) == 0;
            if quiet || since.elapsed() >= LOGIN_FINISH_GRACE {
                break;
            }
        }
        let draining_now = drain_started.is_some();
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = draining.changed(), if !draining_now => continue,
            _ = tokio::time::sleep(Duration::from_millis(20)), if draining_now => continue,
        };
        let now_at = conn.remote_address();
        if now_at != path {
            path = now_at;
            metrics::counter!("gateway_connection_migrations_total").increment(1);
        }
        let shared = shared.clone();
        let conn2 = conn.clone();
        let account = account.clone();
        busy.send_modify(|n| *n += 1);
        let (busy2, logins2, unsure2) = (busy.clone(), logins.clone(), unsure.clone());
        tokio::spawn(async move {
            let stream = Stream {
                send,
                recv,
                logins: &logins2,
                draining: draining_now,
            };
            match tokio::time::timeout(RELAY_TIMEOUT, relay(&shared, &account, &device_key, stream))
                .await
            {
                Ok(Ok(Delivery::Confirmed)) => {}
                Ok(Ok(Delivery::Unsure)) | Err(_) => unsure2.store(true, Ordering::Release),
                Ok(Err(code)) => close(&conn2, code),
            }
            busy2.send_modify(|n| *n -= 1);
        });
    }
    // Draining: the requests in flight finish and are answered, then the
    // phone is told to go elsewhere. Bounded by the relay's own timeout.
    let mut idle = busy.subscribe();
    let idle = tokio::time::timeout(RELAY_TIMEOUT, idle.wait_for(|n| *n == 0))
        .await
        .is_ok_and(|r| r.is_ok());
    if idle && !unsure.load(Ordering::Acquire) {
        close(&conn, CloseCode::GoingAway);
    } else {
        close(&conn, CloseCode::ShutDown);
    }
}

/// Whether a request's answer is known to have reached the phone.
enum Delivery {
    /// Acknowledged by the phone's QUIC stack, or the phone stopped the
    /// stream, or the request was never relayed (turned away, shed,
    /// unreadable): nothing the phone could want again is lost.
    Confirmed,
    /// Relayed, and the answer's delivery was not confirmed in time.
    Unsure,
}

/// An authenticated connection's place under the per-device and
/// per-account caps; opening it closes the oldest beyond them.
struct Held<'a> {
    shared: &'a Shared,
    ticket: Ticket,
}

impl<'a> Held<'a> {
    fn open(
        shared: &'a Shared,
        device: [u8; 32],
        account: &str,
        conn: &quinn::Connection,
    ) -> Option<Self> {
        let mut table = shared.connections.lock().ok()?;
        let (ticket, older) = table.open(device, account, conn.clone());
        drop(table);
        for (c, scope) in older {
            metrics::counter!("gateway_connections_replaced_total", "scope" => scope.label())
                .increment(1);
            c.close(
                (CloseCode::Normal as u32).into(),
                b"replaced by a newer connection of this device or account",
            );
        }
        Some(Self { shared, ticket })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut t) = self.shared.connections.lock() {
            t.close(&self.ticket);
        }
    }
}

/// One request stream, with what the drain needs to know of it.
struct Stream<'a> {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The connection's logins started and not finished.
    logins: &'a AtomicUsize,
    /// Accepted while the gateway drains: only login finishes are relayed.
    draining: bool,
}

/// Runs the handshake on the first stream; any other stream opened before it
/// completes closes the connection as unauthenticated.
async fn authenticate(shared: &Shared, conn: &quinn::Connection) -> HandshakeOutcome {
    let mut exporter = [0u8; EXPORTER_LEN];
    if conn
        .export_keying_material(
            &mut exporter,
            noise::EXPORTER_LABEL,
            noise::EXPORTER_CONTEXT,
        )
        .is_err()
    {
        return HandshakeOutcome::Closed(CloseCode::Internal);
    }
    let work = async {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return HandshakeOutcome::Closed(CloseCode::Normal),
        };
        let keys = shared
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut responder = keys.responder(exporter);
        let handshake = async {
            loop {
                let frame = match read_frame(&mut recv).await {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(StreamError::Frame(_)) => {
                        return HandshakeOutcome::Closed(CloseCode::ProtocolError)
                    }
                    Err(StreamError::Io(_)) => return HandshakeOutcome::Closed(CloseCode::Normal),
                };
                match responder.on_frame(&frame) {
                    Ok(ResponderStep::Send(f)) => {
                        if write_frame(&mut send, &f).await.is_err() {
                            return HandshakeOutcome::Closed(CloseCode::Normal);
                        }
                    }
                    Ok(ResponderStep::Finished(frames, outcome)) => {
                        for f in frames {
                            let _ = write_frame(&mut send, &f).await;
                        }
                        let _ = send.finish();
                        return match outcome {
                            Ok(d) => HandshakeOutcome::Authenticated(d),
                            Err(e) => {
                                tracing::info!(reason = %e, "device credential refused");
                                // Let the AuthResult reach the client before closing.
                                let _ = tokio::time::timeout(
                                    std::time::Duration::from_millis(500),
                                    send.stopped(),
                                )
                                .await;
                                HandshakeOutcome::Closed(CloseCode::Unauthenticated)
                            }
                        };
                    }
                    Err(e) if e.is_unreadable() => {
                        tracing::info!(error = %e, "handshake unreadable (stale gateway key pinned, or wrong channel binding)");
                        return HandshakeOutcome::Closed(CloseCode::HandshakeUnreadable);
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "handshake failed");
                        return HandshakeOutcome::Closed(CloseCode::ProtocolError);
                    }
                }
            }
        };
        tokio::select! {
            out = handshake => out,
            _ = conn.accept_bi() => HandshakeOutcome::Closed(CloseCode::Unauthenticated),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .unwrap_or(HandshakeOutcome::Closed(CloseCode::HandshakeTimeout))
}

/// Answers a request stream with the gateway's own error (nothing went to
/// the vault) and ends the stream.
async fn answer_error(send: &mut quinn::SendStream, e: msg::Error) {
    let _ = write_message(
        send,
        &msg::Response {
            kind: Some(msg::response::Kind::Error(e)),
        },
    )
    .await;
    let _ = send.finish();
}

/// Counts a request the gateway answered itself (`None`: it could not be
/// decoded).
fn count(request: Option<&msg::Request>, outcome: &'static str) {
    let label = request.map_or("invalid", msg::Request::kind_label);
    metrics::counter!("gateway_requests_total", "request" => label, "outcome" => outcome)
        .increment(1);
}

async fn relay(
    shared: &Shared,
    account_id: &str,
    device_key: &[u8; 32],
    stream: Stream<'_>,
) -> Result<Delivery, CloseCode> {
    let Stream {
        mut send,
        mut recv,
        logins,
        draining,
    } = stream;
    let request = match read_frame(&mut recv).await {
        Ok(Some(body)) => framing::decode::<msg::Request>(&body)
            .and_then(|r| framing::validate_request(&r).map(|_| r))
            .map_err(|e| e.to_string()),
        Ok(None) => Err("empty request stream".to_string()),
        Err(StreamError::Frame(e)) => Err(e.to_string()),
        Err(StreamError::Io(_)) => return Ok(Delivery::Confirmed),
    };
    let request = match request {
        Ok(r) => r,
        Err(why) => {
            metrics::counter!("gateway_protocol_errors_total").increment(1);
            count(None, "protocol_error");
            let _ = write_message(
                &mut send,
                &msg::Response::error(ErrorCode::ProtocolError, why),
            )
            .await;
            let _ = send.finish();
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(200), send.stopped()).await;
            return Err(CloseCode::ProtocolError);
        }
    };
    if let Some(kind) = crate::budget::Kind::of(&request) {
        if let Err(over) = shared.budgets.check(device_key, account_id, kind) {
            metrics::counter!(
                "gateway_requests_shed_total",
                "request" => request.kind_label(),
                "scope" => over.scope.label()
            )
            .increment(1);
            count(Some(&request), "over_budget");
            let mut e = msg::Error::new(
                ErrorCode::Busy,
                format!(
                    "too many {} requests from this {} in a short time",
                    request.kind_label().replace('_', " "),
                    over.scope.label()
                ),
            );
            e.retry_after_ms = u32::try_from(over.retry_after.as_millis())
                .unwrap_or(u32::MAX)
                .max(1);
            answer_error(&mut send, e).await;
            return Ok(Delivery::Confirmed);
        }
    }
    let is_finish = matches!(request.kind, Some(msg::request::Kind::LoginFinish(_)));
    if draining && !is_finish {
        // Only logins already started are finished here now; anything else
        // is turned away unprocessed, its stream reset with GOING_AWAY,
        // which tells the phone to send it again elsewhere (SPEC §6.1).
        count(Some(&request), "draining");
        let _ = send.reset((CloseCode::GoingAway as u32).into());
        return Ok(Delivery::Confirmed);
    }
    let is_start = matches!(request.kind, Some(msg::request::Kind::LoginStart(_)));
    let label = request.kind_label();
    let (response, outcome) = shared
        .vault
        .relay(account_id, device_key, request)
        .await
        .into_response();
    metrics::counter!("gateway_requests_total", "request" => label, "outcome" => outcome)
        .increment(1);
    if is_start && matches!(response.kind, Some(msg::response::Kind::LoginStart(_))) {
        logins.fetch_add(1, Ordering::AcqRel);
    } else if is_finish {
        let _ = logins.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
    let _ = write_message(&mut send, &response).await;
    let _ = send.finish();
    // Until the phone has the answer (bounded): a drain closes the
    // connection only after this, and closing drops unacknowledged data,
    // which for a login start would be a guess counted and never answered.
    Ok(
        match tokio::time::timeout(ANSWER_DELIVERY, send.stopped()).await {
            // Acknowledged, or the phone gave up on the answer itself, or
            // the connection is gone (no close code will reach the phone).
            Ok(_) => Delivery::Confirmed,
            Err(_) => Delivery::Unsure,
        },
    )
}

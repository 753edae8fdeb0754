//! The client's authenticated connection to a gateway: QUIC + TLS 1.3 with
//! the pinned CA, then the Noise handshake on the first stream, bound to this
//! connection through a TLS exporter. Requests each use a new stream.
//!
//! Must never: send a request before the handshake has completed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol_spec::handshake::{HandshakeError, Initiator, InitiatorStep};
use protocol_spec::limits::CLIENT_REQUEST_TIMEOUT;
use protocol_spec::msg;
use protocol_spec::noise::{self, EXPORTER_LEN};
use protocol_spec::stream_io::{read_frame, read_message, write_frame, write_message};
use protocol_spec::CloseCode;
use quinn::crypto::rustls::QuicClientConfig;

use crate::{ClientError, ClientProfile, DeviceIdentity};

/// Called with each request's kind (`status`, `login_start`, ...) and how
/// long its exchange took; load generators use it.
pub type RequestObserver = Arc<dyn Fn(&'static str, Duration) + Send + Sync>;

/// Options for [`GatewayConnection::connect_with`].
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// Use XX even when the gateway key is pinned (the pin is still checked).
    pub force_xx: bool,
    /// Connect from this endpoint (one UDP socket shared by many
    /// connections, as a load generator does) instead of a new one. Its
    /// default client config must come from [`tls_config`].
    pub endpoint: Option<quinn::Endpoint>,
    /// Told about every request on the connection.
    pub observer: Option<RequestObserver>,
    /// Do not reconnect after `GOING_AWAY` (load generators count such
    /// closes themselves; tests of the close itself).
    pub no_reconnect: bool,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("force_xx", &self.force_xx)
            .field("shared_endpoint", &self.endpoint.is_some())
            .finish_non_exhaustive()
    }
}

/// How long the two steps of connecting took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeTiming {
    /// QUIC + TLS 1.3 handshake.
    pub quic: Duration,
    /// Noise handshake and credential check, up to the gateway's verdict.
    pub auth: Duration,
}

/// An authenticated connection. When the gateway says `GOING_AWAY` (it is
/// draining: SPEC §6.1) or `SHUT_DOWN` (it stopped), the next request
/// reconnects, to another of the profile's gateways if it has one, with
/// backoff and jitter; a request the gateway did not take (its stream
/// reset, or left unanswered on a connection closed with `GOING_AWAY`) is
/// sent again there, once.
pub struct GatewayConnection {
    conn: std::sync::Mutex<quinn::Connection>,
    endpoint: quinn::Endpoint,
    owns_endpoint: bool,
    account_id: String,
    timing: HandshakeTiming,
    observer: Option<RequestObserver>,
    /// What reconnecting needs; `None`: this connection does not.
    again: Option<Box<Reconnect>>,
    /// Reconnections are made one at a time.
    reconnecting: tokio::sync::Mutex<()>,
    /// The gateway key learned in a handshake, pinned from then on.
    learned: std::sync::Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for GatewayConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConnection")
            .field("remote", &self.current().remote_address())
            .finish_non_exhaustive()
    }
}

/// What a connection needs to connect again.
struct Reconnect {
    profile: ClientProfile,
    device: DeviceIdentity,
    force_xx: bool,
    gateways: Vec<SocketAddr>,
    /// Index in `gateways` of the one connected to now.
    current: std::sync::atomic::AtomicUsize,
}

/// Attempts to reconnect after `GOING_AWAY`, over the gateways in turn.
const RECONNECT_ATTEMPTS: u32 = 6;
/// All of them within this (a gateway restarting takes a few seconds; one
/// that is gone should not hold the phone longer).
const RECONNECT_WITHIN: Duration = Duration::from_secs(10);
/// First backoff cap between reconnection attempts (doubling; each pause is
/// drawn uniformly below the cap, "full jitter", so phones told to go at
/// the same moment do not all come back at the same moment).
const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Largest backoff cap.
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// A new connection (QUIC, TLS and Noise) not made within this is given up
/// (the gateway closes handshakes after 10 s, SPEC §7).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// rustls client config trusting only the profile's CA (TLS 1.3, ALPN
/// `bkv/1`).
pub fn rustls_config(profile: &ClientProfile) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(profile.gateway_ca_pem.as_bytes()) {
        let c = c.map_err(|e| ClientError::Config(format!("gateway_ca_pem: {e}")))?;
        roots
            .add(c)
            .map_err(|e| ClientError::Config(format!("gateway_ca_pem: {e}")))?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(service_kit::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![noise::ALPN.to_vec()];
    Ok(tls)
}

/// QUIC client config over the profile's TLS config.
pub fn tls_config(profile: &ClientProfile) -> Result<quinn::ClientConfig, ClientError> {
    quinn_config(rustls_config(profile)?)
}

/// QUIC client config (keep-alives every 15 s) over a rustls config.
pub fn quinn_config(tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let qc = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(qc));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(15)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

impl GatewayConnection {
    /// Connects and authenticates with default options.
    pub async fn connect(
        profile: &ClientProfile,
        device: &DeviceIdentity,
    ) -> Result<Self, ClientError> {
        Self::connect_with(profile, device, &ConnectOptions::default()).await
    }

    /// Connects and authenticates.
    pub async fn connect_with(
        profile: &ClientProfile,
        device: &DeviceIdentity,
        opts: &ConnectOptions,
    ) -> Result<Self, ClientError> {
        let addr = profile.gateway_addr;
        let (endpoint, owns_endpoint) = match &opts.endpoint {
            Some(ep) => (ep.clone(), false),
            None => {
                let cerr = |reason: String| ClientError::Connect {
                    addr: addr.to_string(),
                    reason,
                };
                let bind = if addr.is_ipv6() {
                    "[::]:0"
                } else {
                    "0.0.0.0:0"
                };
                let mut ep =
                    quinn::Endpoint::client(bind.parse().map_err(|_| cerr("bind".into()))?)
                        .map_err(|e| cerr(e.to_string()))?;
                ep.set_default_client_config(tls_config(profile)?);
                (ep, true)
            }
        };
        let Handshaken {
            conn,
            account_id,
            timing,
            learned,
        } = handshake(
            &endpoint,
            addr,
            profile,
            device,
            profile.gateway_key()?,
            opts.force_xx,
            CONNECT_TIMEOUT,
        )
        .await?;
        let again = (!opts.no_reconnect).then(|| {
            Box::new(Reconnect {
                profile: profile.clone(),
                device: device.clone(),
                force_xx: opts.force_xx,
                gateways: profile.gateways(),
                current: std::sync::atomic::AtomicUsize::new(0),
            })
        });
        Ok(Self {
            conn: std::sync::Mutex::new(conn),
            endpoint,
            owns_endpoint,
            account_id,
            timing,
            observer: opts.observer.clone(),
            again,
            reconnecting: tokio::sync::Mutex::new(()),
            learned: std::sync::Mutex::new(learned),
        })
    }

    /// The gateway's new Noise key, when this connection (or a reconnection)
    /// learned that the pinned one is being retired (SPEC §4.6): the app
    /// saves it as the profile's `gateway_noise_key`. Reconnections of this
    /// connection already pin it.
    pub fn gateway_key_update(&self) -> Option<[u8; 32]> {
        *self
            .learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long connecting took.
    pub fn handshake_timing(&self) -> HandshakeTiming {
        self.timing
    }

    /// The account this connection is authenticated as.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// Sends one request on its own stream and waits for the response.
    pub async fn request(&self, req: &msg::Request) -> Result<msg::Response, ClientError> {
        let started = Instant::now();
        // The outermost budget (`limits`): the gateway and the vault give up
        // earlier and say so, so running out here means the gateway itself
        // did not answer.
        let out = match tokio::time::timeout(CLIENT_REQUEST_TIMEOUT, self.exchange(req)).await {
            Ok(out) => out,
            Err(_) => Err(ClientError::Unavailable(
                "the gateway did not answer in time; retry in a moment".into(),
            )),
        };
        if let Some(o) = &self.observer {
            o(req.kind_label(), started.elapsed());
        }
        out
    }

    fn current(&self) -> quinn::Connection {
        match self.conn.lock() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    async fn exchange(&self, req: &msg::Request) -> Result<msg::Response, ClientError> {
        let mut conn = self.current();
        let mut moved = 0;
        loop {
            if self.again.is_some() && gateway_left(&conn) {
                conn = self.reconnect(&conn).await?;
            }
            match send_one(&conn, req).await {
                Ok(r) => return Ok(r),
                // Turned away unprocessed by a gateway that is going away
                // (its stream reset, or no stream at all): safe to send
                // again, once, on a new connection.
                Err(Sent::Not) if self.again.is_some() && moved == 0 => {
                    moved += 1;
                    conn = self.reconnect(&conn).await?;
                }
                Err(Sent::Not) => {
                    return Err(lost(
                        &conn,
                        false,
                        "the gateway is going away; connect again".into(),
                    ))
                }
                Err(Sent::Maybe(detail)) => return Err(lost(&conn, true, detail)),
            }
        }
    }

    /// Replaces `old` (closed, or closing with `GOING_AWAY`) by a new
    /// connection: to the next gateway of the profile, with backoff and
    /// full jitter between attempts.
    async fn reconnect(&self, old: &quinn::Connection) -> Result<quinn::Connection, ClientError> {
        let Some(again) = &self.again else {
            return Err(lost(old, false, "connection closed".into()));
        };
        let _one = self.reconnecting.lock().await;
        // Another request may have reconnected meanwhile.
        let now = self.current();
        if now.stable_id() != old.stable_id() && now.close_reason().is_none() {
            return Ok(now);
        }
        let n = again.gateways.len().max(1);
        let mut last = None;
        let until = Instant::now() + RECONNECT_WITHIN;
        for attempt in 0..RECONNECT_ATTEMPTS {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // The gateway that went away last, so first the next one.
            let i = (again.current.load(Ordering::Acquire) + 1 + attempt as usize) % n;
            let addr = again.gateways[i];
            if attempt > 0 || n == 1 {
                let cap = RECONNECT_BASE
                    .saturating_mul(1 << attempt.min(5))
                    .min(RECONNECT_MAX);
                let pause = cap.mul_f64(rand::random::<f64>()).min(left);
                tokio::time::sleep(pause).await;
            }
            let left = until.saturating_duration_since(Instant::now());
            let pin = match self.gateway_key_update() {
                Some(k) => Some(k),
                None => again.profile.gateway_key()?,
            };
            let made = handshake(
                &self.endpoint,
                addr,
                &again.profile,
                &again.device,
                pin,
                again.force_xx,
                left.min(CONNECT_TIMEOUT),
            )
            .await;
            match made {
                Ok(Handshaken {
                    conn,
                    account_id,
                    learned,
                    ..
                }) if account_id == self.account_id => {
                    if learned.is_some() {
                        *self
                            .learned
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = learned;
                    }
                    again.current.store(i, Ordering::Release);
                    if let Ok(mut c) = self.conn.lock() {
                        *c = conn.clone();
                    }
                    tracing::info!(gateway = %addr, "reconnected after the gateway went away");
                    return Ok(conn);
                }
                Ok(_) => {
                    return Err(ClientError::Authentication(
                        "another gateway authenticated this device as a different account".into(),
                    ))
                }
                // A credential the gateway refuses, or a gateway key the
                // profile does not know, will not do better on the next try.
                Err(e @ (ClientError::Authentication(_) | ClientError::GatewayKeyOutdated(_))) => {
                    return Err(e)
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| lost(old, false, "connection closed".into())))
    }

    /// The underlying QUIC connection now (tests use it to misbehave).
    pub fn quic(&self) -> quinn::Connection {
        self.current()
    }

    /// Moves this phone's connection to a new local UDP socket, as when the
    /// phone changes network (Wi-Fi to cellular): the authenticated
    /// connection carries on from the new address with no new handshake
    /// (QUIC connection migration, RFC 9000 §9; the gateway validates the
    /// new path). Everything else on this connection's endpoint moves too,
    /// so a caller sharing one endpoint between connections
    /// ([`ConnectOptions`]) moves them all.
    pub fn rebind(&self, socket: std::net::UdpSocket) -> Result<(), ClientError> {
        self.endpoint
            .rebind(socket)
            .map_err(|e| ClientError::Config(format!("cannot move to the new network: {e}")))
    }

    /// The local address the connection sends from now.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        self.endpoint
            .local_addr()
            .map_err(|e| ClientError::Config(format!("no local address: {e}")))
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        self.current().close(0u32.into(), b"bye");
        if self.owns_endpoint {
            self.endpoint.wait_idle().await;
        }
    }
}

/// Whether the request reached the gateway's handling.
enum Sent {
    /// Certainly not processed: no stream could be opened, or the gateway
    /// reset it with `GOING_AWAY`.
    Not,
    /// It may have been (the link failed after sending).
    Maybe(String),
}

/// One request on its own stream of `conn`.
async fn send_one(conn: &quinn::Connection, req: &msg::Request) -> Result<msg::Response, Sent> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|_| Sent::Not)?;
    let turned_away = |e: &protocol_spec::stream_io::StreamError| {
        let protocol_spec::stream_io::StreamError::Io(io) = e else {
            return false;
        };
        let away = quinn::VarInt::from_u32(CloseCode::GoingAway as u32);
        let inner = io.get_ref();
        inner
            .and_then(|i| i.downcast_ref::<quinn::ReadError>())
            .is_some_and(|r| *r == quinn::ReadError::Reset(away))
            || inner
                .and_then(|i| i.downcast_ref::<quinn::WriteError>())
                .is_some_and(|w| *w == quinn::WriteError::Stopped(away))
    };
    if let Err(e) = write_message(&mut send, req).await {
        return Err(if turned_away(&e) || going_away(conn) {
            Sent::Not
        } else {
            Sent::Maybe(e.to_string())
        });
    }
    let _ = send.finish();
    match read_message::<msg::Response, _>(&mut recv).await {
        Ok(r) => Ok(r),
        // A gateway closes with `GOING_AWAY` only once every request it
        // took was answered and the answer acknowledged (SPEC §6.1), so a
        // request left without an answer then was not relayed: the stream
        // reached the gateway after it stopped taking them. The
        // SIGTERM-under-load test found this race: a login start sent as
        // the gateway closed, failed instead of going to the next gateway.
        Err(e) if turned_away(&e) || going_away(conn) => Err(Sent::Not),
        Err(e) => Err(Sent::Maybe(e.to_string())),
    }
}

/// Whether the gateway closed `conn` because it is leaving (`GOING_AWAY`,
/// draining; or `SHUT_DOWN`, stopped with requests in flight): either way
/// the phone connects again, to another gateway first.
fn gateway_left(conn: &quinn::Connection) -> bool {
    going_away(conn) || closed_with(conn, CloseCode::ShutDown)
}

/// Whether `conn` was closed by the gateway with `GOING_AWAY`.
fn going_away(conn: &quinn::Connection) -> bool {
    closed_with(conn, CloseCode::GoingAway)
}

/// Whether `conn` was closed by the gateway with `code`.
fn closed_with(conn: &quinn::Connection, code: CloseCode) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if u64::from(c.error_code) == code as u64
    )
}

/// Why the handshake stream ended before the gateway accepted the device.
/// A gateway that refuses the device closes the connection itself (an
/// application or transport close); a gateway going away (draining), or a
/// connection lost on the way (timed out, reset), refused nothing: that is
/// "unavailable", and the next gateway or a retry may do better. The chaos
/// run found phones told "the gateway did not accept this device" by a
/// draining gateway, which also stopped their reconnecting.
fn handshake_ended(conn: &quinn::Connection) -> ClientError {
    use quinn::ConnectionError as E;
    match conn.close_reason() {
        _ if gateway_left(conn) => {
            ClientError::Unavailable("the gateway is going away; connect again".into())
        }
        _ if closed_with(conn, CloseCode::HandshakeUnreadable) => ClientError::GatewayKeyOutdated(
            "the gateway could not read this app's handshake: the gateway key it pins is no longer the gateway's".into(),
        ),
        Some(r @ (E::ApplicationClosed(_) | E::ConnectionClosed(_))) => {
            ClientError::Authentication(r.to_string())
        }
        Some(r) => ClientError::Unavailable(format!("connection closed: {r}")),
        None => ClientError::Authentication("the gateway closed the handshake stream".into()),
    }
}

/// The error for a request that got no answer on `conn`, which may have
/// been relayed if `maybe_relayed`.
fn lost(conn: &quinn::Connection, maybe_relayed: bool, detail: String) -> ClientError {
    match conn.close_reason() {
        _ if going_away(conn) => {
            ClientError::Unavailable("the gateway is going away; connect again".into())
        }
        _ if closed_with(conn, CloseCode::ShutDown) => ClientError::Unavailable(if maybe_relayed {
            "the gateway shut down while this request was in flight, so it may or may not have \
             been carried out; connect again"
                .into()
        } else {
            "the gateway shut down; connect again".into()
        }),
        Some(r) => ClientError::Unavailable(format!("connection closed: {r}")),
        None => ClientError::Unavailable(detail),
    }
}

/// QUIC, TLS and the Noise handshake to the gateway at `addr`: the
/// connection, the account it authenticated, and how long each step took.
async fn handshake(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    profile: &ClientProfile,
    device: &DeviceIdentity,
    pin: Option<[u8; 32]>,
    force_xx: bool,
    within: Duration,
) -> Result<Handshaken, ClientError> {
    let cerr = |reason: String| ClientError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let attempts = async {
        match handshake_unbounded(endpoint, addr, profile, device, pin, force_xx).await {
            // IK to a key the gateway no longer holds (rotated past this
            // profile): XX once, which accepts only the pinned key or the
            // profile's next one (SPEC §4.6), so an impostor learns nothing
            // more than with IK.
            Err(ClientError::GatewayKeyOutdated(_)) if pin.is_some() && !force_xx => {
                handshake_unbounded(endpoint, addr, profile, device, pin, true).await
            }
            other => other,
        }
    };
    match tokio::time::timeout(within, attempts).await {
        Ok(out) => out,
        Err(_) => Err(cerr(format!("no answer within {within:?}"))),
    }
}

/// A connection authenticated by the handshake.
struct Handshaken {
    conn: quinn::Connection,
    account_id: String,
    timing: HandshakeTiming,
    /// The gateway key to pin from now on, if it changed (SPEC §4.6).
    learned: Option<[u8; 32]>,
}

async fn handshake_unbounded(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    profile: &ClientProfile,
    device: &DeviceIdentity,
    pin: Option<[u8; 32]>,
    force_xx: bool,
) -> Result<Handshaken, ClientError> {
    let credential = device
        .credential
        .as_deref()
        .ok_or(ClientError::NoCredential)?;
    let cerr = |reason: String| ClientError::Connect {
        addr: addr.to_string(),
        reason,
    };
    let started = Instant::now();
    let conn = endpoint
        .connect(addr, &profile.gateway_server_name)
        .map_err(|e| cerr(e.to_string()))?
        .await
        .map_err(|e| cerr(e.to_string()))?;
    let quic = started.elapsed();
    let mut exporter = [0u8; EXPORTER_LEN];
    conn.export_keying_material(
        &mut exporter,
        noise::EXPORTER_LABEL,
        noise::EXPORTER_CONTEXT,
    )
    .map_err(|_| cerr("TLS exporter unavailable".into()))?;
    let mut initiator = Initiator::new(
        *device.static_private,
        pin,
        force_xx,
        exporter,
        credential,
        concat!("bkv-rust-client/", env!("CARGO_PKG_VERSION")),
    )
    .with_next_key(profile.gateway_next_key()?);
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| cerr(e.to_string()))?;
    let auth_err = |e: String| ClientError::Authentication(e);
    let first = initiator.start().map_err(|e| auth_err(e.to_string()))?;
    write_frame(&mut send, &first)
        .await
        .map_err(|e| auth_err(e.to_string()))?;
    let account_id = loop {
        let frame = match read_frame(&mut recv).await {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return Err(handshake_ended(&conn)),
        };
        let step = initiator.on_frame(&frame).map_err(|e| match e {
            HandshakeError::GatewayKeyMismatch { got, .. } => {
                ClientError::GatewayKeyOutdated(format!(
                    "the gateway presented Noise key {got}, which is neither the key this app pins nor the next one its profile names"
                ))
            }
            e => auth_err(e.to_string()),
        })?;
        match step {
            InitiatorStep::Send(f) => write_frame(&mut send, &f)
                .await
                .map_err(|e| auth_err(e.to_string()))?,
            InitiatorStep::Wait => {}
            InitiatorStep::Done {
                account_id,
                gateway_key,
            } => break (account_id, gateway_key),
        }
    };
    let (account_id, learned) = account_id;
    let _ = send.finish();
    let timing = HandshakeTiming {
        quic,
        auth: started.elapsed().saturating_sub(quic),
    };
    if let Some(k) = learned {
        tracing::info!(
            gateway_key = %hex::encode(k),
            "the gateway's Noise key changed; pinning the new one (save it in the profile)"
        );
    }
    Ok(Handshaken {
        conn,
        account_id,
        timing,
        learned,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_phone_offers_the_post_quantum_hybrid_first_and_x25519_only_besides() {
        let profile = ClientProfile {
            gateway_addr: "127.0.0.1:1".parse().unwrap(),
            other_gateways: Vec::new(),
            gateway_server_name: "localhost".into(),
            // No CA: the configuration is only inspected, never used.
            gateway_ca_pem: String::new(),
            gateway_noise_key: None,
            gateway_noise_next_key: None,
            fleet_id: "f".into(),
            fleet_public_key: String::new(),
        };
        let tls = rustls_config(&profile).unwrap();
        let groups: Vec<rustls::NamedGroup> = tls
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            groups,
            [
                rustls::NamedGroup::X25519MLKEM768,
                rustls::NamedGroup::X25519
            ]
        );
    }
}

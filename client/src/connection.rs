//! The client's authenticated connection to a gateway: QUIC + TLS 1.3 with
//! the pinned CA, then the Noise handshake on the first stream, bound to this
//! connection through a TLS exporter. Requests each use a new stream.
//!
//! Must never: send a request before the handshake has completed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol_spec::handshake::{Initiator, InitiatorStep};
use protocol_spec::limits::CLIENT_REQUEST_TIMEOUT;
use protocol_spec::msg;
use protocol_spec::noise::{self, EXPORTER_LEN};
use protocol_spec::stream_io::{read_frame, read_message, write_frame, write_message};
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

/// An authenticated connection.
pub struct GatewayConnection {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    owns_endpoint: bool,
    account_id: String,
    timing: HandshakeTiming,
    observer: Option<RequestObserver>,
}

impl std::fmt::Debug for GatewayConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConnection")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
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
        let credential = device.credential.as_deref().ok_or_else(|| {
            ClientError::Config(
                "this device has no credential yet; ask the account service to mint one".into(),
            )
        })?;
        let addr = profile.gateway_addr;
        let cerr = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let (endpoint, owns_endpoint) = match &opts.endpoint {
            Some(ep) => (ep.clone(), false),
            None => {
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
            profile.gateway_key()?,
            opts.force_xx,
            exporter,
            credential,
            concat!("bkv-rust-client/", env!("CARGO_PKG_VERSION")),
        );
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| cerr(e.to_string()))?;
        let auth_err = |e: String| ClientError::Authentication(e);
        let first = initiator.start().map_err(|e| auth_err(e.to_string()))?;
        write_frame(&mut send, &first)
            .await
            .map_err(|e| auth_err(e.to_string()))?;
        let account_id = loop {
            let frame = match read_frame(&mut recv).await {
                Ok(Some(f)) => f,
                Ok(None) | Err(_) => {
                    return Err(auth_err(match conn.close_reason() {
                        Some(r) => r.to_string(),
                        None => "the gateway closed the handshake stream".into(),
                    }))
                }
            };
            match initiator
                .on_frame(&frame)
                .map_err(|e| auth_err(e.to_string()))?
            {
                InitiatorStep::Send(f) => write_frame(&mut send, &f)
                    .await
                    .map_err(|e| auth_err(e.to_string()))?,
                InitiatorStep::Wait => {}
                InitiatorStep::Done { account_id } => break account_id,
            }
        };
        let _ = send.finish();
        Ok(Self {
            conn,
            endpoint,
            owns_endpoint,
            account_id,
            timing: HandshakeTiming {
                quic,
                auth: started.elapsed().saturating_sub(quic),
            },
            observer: opts.observer.clone(),
        })
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

    async fn exchange(&self, req: &msg::Request) -> Result<msg::Response, ClientError> {
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| self.lost(e.to_string()))?;
        write_message(&mut send, req)
            .await
            .map_err(|e| self.lost(e.to_string()))?;
        let _ = send.finish();
        read_message::<msg::Response, _>(&mut recv)
            .await
            .map_err(|e| self.lost(e.to_string()))
    }

    fn lost(&self, detail: String) -> ClientError {
        match self.conn.close_reason() {
            Some(r) => ClientError::Unavailable(format!("connection closed: {r}")),
            None => ClientError::Unavailable(detail),
        }
    }

    /// The underlying QUIC connection (tests use it to misbehave).
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"bye");
        if self.owns_endpoint {
            self.endpoint.wait_idle().await;
        }
    }
}

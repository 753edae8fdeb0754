//! The client's authenticated connection to a gateway: QUIC + TLS 1.3 with
//! the pinned CA, then the Noise handshake on the first stream, bound to this
//! connection through a TLS exporter. Requests each use a new stream.
//!
//! Must never: send a request before the handshake has completed.

use std::sync::Arc;

use protocol_spec::handshake::{Initiator, InitiatorStep};
use protocol_spec::msg;
use protocol_spec::noise::{self, EXPORTER_LEN};
use protocol_spec::stream_io::{read_frame, read_message, write_frame, write_message};
use quinn::crypto::rustls::QuicClientConfig;

use crate::{ClientError, ClientProfile, DeviceIdentity};

/// Options for [`GatewayConnection::connect_with`].
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Use XX even when the gateway key is pinned (the pin is still checked).
    pub force_xx: bool,
}

/// An authenticated connection.
#[derive(Debug)]
pub struct GatewayConnection {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    account_id: String,
}

/// rustls client config trusting only the profile's CA.
pub fn tls_config(profile: &ClientProfile) -> Result<quinn::ClientConfig, ClientError> {
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
        let bind = if addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let mut endpoint = quinn::Endpoint::client(bind.parse().map_err(|_| cerr("bind".into()))?)
            .map_err(|e| cerr(e.to_string()))?;
        endpoint.set_default_client_config(tls_config(profile)?);
        let conn = endpoint
            .connect(addr, &profile.gateway_server_name)
            .map_err(|e| cerr(e.to_string()))?
            .await
            .map_err(|e| cerr(e.to_string()))?;
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
            account_id,
        })
    }

    /// The account this connection is authenticated as.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// Sends one request on its own stream and waits for the response.
    pub async fn request(&self, req: &msg::Request) -> Result<msg::Response, ClientError> {
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
        self.endpoint.wait_idle().await;
    }
}

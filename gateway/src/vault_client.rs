//! The gateway's link to the vault: one long-lived mutually authenticated
//! QUIC connection, re-established on failure, one stream per request.
//!
//! Must never: retry a request that may have reached the vault (a login
//! start counts a guess); failures come back as `UNAVAILABLE`.

use std::net::SocketAddr;
use std::sync::Arc;

use protocol_spec::internal::VaultRequest;
use protocol_spec::limits::REQUEST_TIMEOUT;
use protocol_spec::msg::{self, ErrorCode};
use protocol_spec::stream_io::{read_message, write_message};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::Mutex;
use vault_backend::pki::{self, CertAndKey};

/// Client side of the vault link.
pub struct VaultLink {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    server_name: String,
    conn: Mutex<Option<quinn::Connection>>,
}

impl std::fmt::Debug for VaultLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultLink")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Mutual-TLS client config for the vault link.
pub fn client_config(
    identity: &CertAndKey,
    vault_ca_pem: &str,
) -> anyhow::Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pki::certs(vault_ca_pem)? {
        roots.add(c)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            pki::certs(&identity.cert_pem)?,
            pki::key(&identity.key_pem)?,
        )?;
    tls.alpn_protocols = vec![protocol_spec::noise::VAULT_ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(10)));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

impl VaultLink {
    /// A link that connects lazily.
    pub fn new(
        addr: SocketAddr,
        server_name: String,
        identity: &CertAndKey,
        vault_ca_pem: &str,
    ) -> anyhow::Result<Self> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client_config(identity, vault_ca_pem)?);
        Ok(Self {
            endpoint,
            addr,
            server_name,
            conn: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<quinn::Connection, String> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let c = self
            .endpoint
            .connect(self.addr, &self.server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Relays one request; any transport failure is `UNAVAILABLE`.
    pub async fn call(&self, account_id: &str, request: msg::Request) -> msg::Response {
        let req = VaultRequest {
            account_id: account_id.to_owned(),
            request: Some(request),
        };
        let started = std::time::Instant::now();
        let work = async {
            let conn = self.connection().await?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_message(&mut send, &req)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_message::<msg::Response, _>(&mut recv)
                .await
                .map_err(|e| e.to_string())
        };
        let out = match tokio::time::timeout(REQUEST_TIMEOUT, work).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "vault unreachable");
                unavailable()
            }
            Err(_) => unavailable(),
        };
        metrics::histogram!("gateway_vault_request_seconds")
            .record(started.elapsed().as_secs_f64());
        out
    }

    /// Closes the link.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
    }
}

fn unavailable() -> msg::Response {
    let mut e = msg::Error::new(
        ErrorCode::Unavailable,
        "the vault is unreachable; retry later",
    );
    e.retry_after_ms = 1000;
    msg::Response {
        kind: Some(msg::response::Kind::Error(e)),
    }
}

//! The replica's QUIC listener for gateways. Mutual TLS: only peers with a
//! client certificate from the cluster CA complete the handshake. Each
//! bidirectional stream carries one framed `VaultRequest` and one
//! `VaultResponse`: the vault's `Response`, or `NotLeader` when this replica
//! does not lead its cluster (nothing was done; the gateway asks the leader).
//!
//! Owns: moving frames, timeouts, input validation before the service sees a
//! request. Must never: interpret a request itself or answer before the
//! service does.

use std::net::SocketAddr;
use std::sync::Arc;

use protocol_spec::internal::{
    vault_response, ClusterMember, ClusterMembers, NotLeader, VaultRequest, VaultResponse,
};
use protocol_spec::limits::VAULT_REQUEST_TIMEOUT;
use protocol_spec::msg::{self, ErrorCode};
use protocol_spec::stream_io::{read_message, write_message};
use quinn::crypto::rustls::QuicServerConfig;

use crate::ledger::AccountLedger;
use crate::service::{Outcome, Vault};
use service_kit::pki::{self, CertAndKey};

/// Builds the mutual-TLS QUIC server config.
pub fn server_config(
    identity: &CertAndKey,
    cluster_ca_pem: &str,
) -> anyhow::Result<quinn::ServerConfig> {
    let tls = pki::mtls_server_config(identity, cluster_ca_pem, protocol_spec::noise::VAULT_ALPN)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(4096u32.into());
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(
        protocol_spec::limits::IDLE_TIMEOUT,
    )?));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// A running listener.
pub struct VaultServer {
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for VaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultServer").finish_non_exhaustive()
    }
}

impl VaultServer {
    /// Serves `vault` on an already bound socket until shut down.
    pub fn start_on(
        vault: Arc<Vault>,
        socket: std::net::UdpSocket,
        identity: &CertAndKey,
        cluster_ca_pem: &str,
    ) -> anyhow::Result<Self> {
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config(identity, cluster_ca_pem)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let ep = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let vault = vault.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(vault, conn).await,
                        Err(e) => {
                            metrics::counter!("vault_rejected_connections_total").increment(1);
                            tracing::info!(error = %e, "gateway connection refused");
                        }
                    }
                });
            }
        });
        Ok(Self { endpoint, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Stops accepting, closes connections, waits for the endpoint to go idle.
    pub async fn shutdown(self) {
        self.task.abort();
        service_kit::quic::close_endpoint(&self.endpoint, 0, b"shutting down").await;
    }
}

async fn serve_connection(vault: Arc<Vault>, conn: quinn::Connection) {
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let vault = vault.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let deadline = started + VAULT_REQUEST_TIMEOUT;
            let work = async {
                match read_message::<VaultRequest, _>(&mut recv).await {
                    Ok(req) => handle(&vault, req).await,
                    Err(e) => reply(msg::Response::error(
                        ErrorCode::ProtocolError,
                        e.to_string(),
                    )),
                }
            };
            // The answer must leave before the gateway's deadline for this
            // call (`limits` nests the budgets): out of time, the gateway
            // hears a typed UNAVAILABLE, not a dropped stream.
            let response = match tokio::time::timeout_at(deadline, work).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("vault request ran out of its time budget");
                    metrics::counter!("vault_request_timeouts_total").increment(1);
                    let late = crate::VaultError::Unavailable(
                        "the request did not finish in time; retry in a moment".into(),
                    );
                    let mut r = reply(msg::Response {
                        kind: Some(msg::response::Kind::Error(late.to_wire())),
                    });
                    r.membership_id = vault.ledger().membership_id();
                    r.set_health(vault.ledger().health());
                    r
                }
            };
            let _ = write_message(&mut send, &response).await;
            let _ = send.finish();
        });
    }
}

async fn handle(vault: &Vault, req: VaultRequest) -> VaultResponse {
    let mut resp = answer(vault, req).await;
    resp.membership_id = vault.ledger().membership_id();
    resp.set_health(vault.ledger().health());
    resp
}

async fn answer(vault: &Vault, req: VaultRequest) -> VaultResponse {
    if req.members.is_some() {
        let (membership_id, members) = vault.ledger().members();
        return VaultResponse {
            kind: Some(vault_response::Kind::Members(ClusterMembers {
                membership_id,
                members: members
                    .into_iter()
                    .map(|(id, serve, voter)| ClusterMember {
                        id,
                        serve_addr: serve.map(|a| a.to_string()).unwrap_or_default(),
                        voter,
                    })
                    .collect(),
            })),
            membership_id: 0,
            health: 0,
        };
    }
    answer_request(vault, req).await
}

/// Answers a gateway's request for an account (everything but the
/// membership query): the boundary check ([`crate::request::validate`]),
/// then the service, over any ledger. The server runs it on the
/// replicated [`Ledger`](crate::ledger::Ledger); the fuzz harness on
/// [`crate::memory_ledger::MemoryLedger`], from a frame's bytes.
pub async fn answer_request<L: AccountLedger>(
    vault: &Vault<L>,
    req: VaultRequest,
) -> VaultResponse {
    let Some(inner) = req.request else {
        return reply(msg::Response::error(
            ErrorCode::ProtocolError,
            "vault request has no request",
        ));
    };
    // The boundary with the gateway: checked once, here.
    let valid = match crate::request::validate(&req.account_id, inner)
        .and_then(|v| v.with_device(&req.device_key))
    {
        Ok(v) => v,
        Err(e) => return reply(crate::service::err(e)),
    };
    match vault.handle(valid).await {
        Outcome::Answer(r) => reply(r),
        Outcome::NotLeader {
            leader_id,
            leader_addr,
        } => VaultResponse {
            kind: Some(vault_response::Kind::NotLeader(NotLeader {
                leader_id: leader_id.unwrap_or(0),
                leader_addr: leader_addr.map(|a| a.to_string()).unwrap_or_default(),
            })),
            membership_id: 0,
            health: 0,
        },
    }
}

fn reply(r: msg::Response) -> VaultResponse {
    VaultResponse {
        kind: Some(vault_response::Kind::Response(r)),
        membership_id: 0,
        health: 0,
    }
}

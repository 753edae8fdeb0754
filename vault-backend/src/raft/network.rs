//! Replica-to-replica Raft RPCs over QUIC with mutual TLS.
//!
//! Both ends present certificates from the cluster CA, and a replica accepts
//! Raft traffic only from peers whose certificate carries the replica role
//! name ([`service_kit::pki::REPLICA_ROLE_NAME`]) — a gateway's certificate, from
//! the same CA, is refused. Each RPC is one bidirectional stream: a
//! length-prefixed postcard request, then the reply.
//!
//! Must never: accept an unauthenticated peer, or read a frame larger than
//! [`MAX_RPC_LEN`].

// openraft's trait signatures fix the (large) error types.
#![allow(clippy::result_large_err)]

use protocol_spec::framing::FrameError;
use protocol_spec::stream_io;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};

use super::member::ReplicaNode;
use super::{NodeId, Raft, TypeConfig};
use service_kit::pki::{self, CertAndKey};

/// ALPN of replica-to-replica links.
pub const RAFT_ALPN: &[u8] = b"bkv-raft/1";
/// Largest RPC frame (snapshot chunks are configured well below it).
pub const MAX_RPC_LEN: usize = 16 * 1024 * 1024;
/// How long a QUIC handshake with a peer may take before it counts as
/// unreachable (well above a data-centre round trip).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// TLS server name replicas present to each other.
pub const PEER_SERVER_NAME: &str = pki::REPLICA_ROLE_NAME;

// New variants go at the end: a replica of an older release cannot decode
// them and resets the stream, which the caller reads as "older release".
#[derive(Serialize, Deserialize)]
enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Which command versions does this replica read? (release 0.2.0)
    Versions,
    /// An operator's membership request (release 0.2.0).
    Admin(AdminRequest),
}

/// Operator requests on the peer link. Only a holder of a replica
/// certificate of the cluster can send them (the link checks the role), so
/// changing the membership needs a replica's key, not an open port.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Add a replica as a learner and wait until it has caught up.
    AddLearner {
        /// Its id (never one used before in the cluster).
        id: NodeId,
        /// Its addresses.
        node: ReplicaNode,
    },
    /// Make a learner a voter.
    Promote {
        /// The learner.
        id: NodeId,
    },
    /// Remove a voter or learner from the membership.
    Remove {
        /// The member.
        id: NodeId,
    },
}

/// The answer to an [`AdminRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminReply {
    /// Done; the membership's log index afterwards.
    Done {
        /// Log index of the membership now in force.
        membership_id: u64,
    },
    /// Ask the leader instead.
    NotLeader {
        /// The leader, if one is known.
        leader: Option<(NodeId, ReplicaNode)>,
    },
    /// Refused, and why.
    Refused(String),
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The newest command version the replica reads.
    Versions {
        max: u32,
    },
    /// The answer to an operator request.
    Admin(AdminReply),
}

/// Errors of the RPC transport.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Could not connect or the connection broke.
    #[error("peer link: {0}")]
    Io(String),
    /// The peer sent something that does not decode.
    #[error("peer sent a malformed frame: {0}")]
    Malformed(String),
    /// Too large.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Decodes one peer request body, as the peer port does (exposed for the
/// fuzz target: malformed input must be an error, never a panic or a huge
/// allocation).
fn decode_rpc(body: &[u8]) -> Result<Rpc, LinkError> {
    postcard::from_bytes::<Rpc>(body).map_err(|e| LinkError::Malformed(e.to_string()))
}

/// Decodes a request body and a reply body of the peer protocol and
/// discards them; for fuzzing.
pub fn fuzz_decode(body: &[u8]) -> bool {
    let rpc = decode_rpc(body).is_ok();
    let reply = postcard::from_bytes::<Reply>(body).is_ok();
    rpc || reply
}

/// Well-formed peer request bodies (a vote, an empty append, a version
/// query, a promotion): the fuzz target's seed corpus.
pub fn fuzz_seeds() -> Vec<Vec<u8>> {
    use openraft::{CommittedLeaderId, LogId, Vote};
    let log_id = LogId::new(CommittedLeaderId::new(3, 1), 41);
    let rpcs = [
        Rpc::Vote(VoteRequest::new(Vote::new(4, 2), Some(log_id))),
        Rpc::Append(AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id),
            entries: Vec::new(),
            leader_commit: Some(log_id),
        }),
        Rpc::Versions,
        Rpc::Admin(AdminRequest::Promote { id: 6 }),
    ];
    rpcs.iter()
        .filter_map(|r| postcard::to_allocvec(r).ok())
        .collect()
}

async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<(), LinkError> {
    stream_io::write_body_limited(send, body, MAX_RPC_LEN)
        .await
        .map_err(link_error)?;
    send.finish().map_err(|e| LinkError::Io(e.to_string()))
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, LinkError> {
    stream_io::read_frame_limited(recv, MAX_RPC_LEN)
        .await
        .map_err(link_error)?
        .ok_or_else(|| LinkError::Io("the stream ended before a frame".into()))
}

fn link_error(e: stream_io::StreamError) -> LinkError {
    match e {
        stream_io::StreamError::Frame(FrameError::TooLarge { len, .. }) => LinkError::TooLarge(len),
        other => LinkError::Io(other.to_string()),
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    // A dead peer is noticed within seconds, not the 30 s default.
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(5)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(1024u32.into());
    Arc::new(t)
}

/// QUIC server config for the peer port.
pub fn server_config(
    identity: &CertAndKey,
    cluster_ca_pem: &str,
) -> anyhow::Result<quinn::ServerConfig> {
    let tls = pki::mtls_server_config(identity, cluster_ca_pem, RAFT_ALPN)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// QUIC client config for calling peers.
pub fn client_config(
    identity: &CertAndKey,
    cluster_ca_pem: &str,
) -> anyhow::Result<quinn::ClientConfig> {
    let tls = pki::mtls_client_config(identity, cluster_ca_pem, RAFT_ALPN)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Serves Raft RPCs from authenticated peers on `endpoint` until it closes;
/// `reads` is the newest command version this replica says it reads.
pub fn serve(endpoint: quinn::Endpoint, raft: Raft, reads: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let raft = raft.clone();
            tokio::spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::info!(error = %e, "peer connection refused");
                        return;
                    }
                };
                let is_replica = conn
                    .peer_identity()
                    .and_then(|id| {
                        id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
                            .ok()
                    })
                    .and_then(|certs| certs.first().map(|c| pki::has_replica_role(c)))
                    .unwrap_or(false);
                if !is_replica {
                    metrics::counter!("vault_raft_rejected_peers_total").increment(1);
                    conn.close(1u32.into(), b"not a replica of this cluster");
                    return;
                }
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let raft = raft.clone();
                    tokio::spawn(async move {
                        let reply = match read_frame(&mut recv).await.and_then(|b| decode_rpc(&b)) {
                            Ok(Rpc::Append(req)) => Reply::Append(raft.append_entries(req).await),
                            Ok(Rpc::Vote(req)) => Reply::Vote(raft.vote(req).await),
                            Ok(Rpc::Snapshot(req)) => {
                                Reply::Snapshot(raft.install_snapshot(req).await)
                            }
                            Ok(Rpc::Versions) => Reply::Versions { max: reads },
                            Ok(Rpc::Admin(req)) => Reply::Admin(admin(&raft, req).await),
                            Err(e) => {
                                tracing::warn!(error = %e, "bad peer frame");
                                send.reset(2u32.into()).ok();
                                return;
                            }
                        };
                        if let Ok(body) = postcard::to_allocvec(&reply) {
                            let _ = write_frame(&mut send, &body).await;
                        }
                    });
                }
            });
        }
    })
}

/// Carries out an operator request on this replica.
async fn admin(raft: &Raft, req: AdminRequest) -> AdminReply {
    use openraft::error::ClientWriteError;
    use openraft::ChangeMembers;
    tracing::info!(request = ?req, "operator request");
    let membership = raft.metrics().borrow().membership_config.clone();
    let is_voter = |id: NodeId| membership.membership().voter_ids().any(|v| v == id);
    let known = |id: NodeId| membership.nodes().any(|(n, _)| *n == id);
    let out = match req {
        AdminRequest::AddLearner { id, .. } if known(id) => {
            return AdminReply::Refused(format!(
                "replica {id} is already a member; a replaced replica gets a new id"
            ))
        }
        AdminRequest::AddLearner { id, node } => raft.add_learner(id, node, true).await,
        AdminRequest::Promote { id } if !known(id) || is_voter(id) => {
            return AdminReply::Refused(format!(
                "replica {id} is not a learner of this cluster (add it first)"
            ))
        }
        AdminRequest::Promote { id } => {
            raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
        }
        AdminRequest::Remove { id } if !known(id) => {
            return AdminReply::Refused(format!("replica {id} is not a member"))
        }
        AdminRequest::Remove { id } if is_voter(id) => {
            if membership.membership().voter_ids().count() <= 1 {
                return AdminReply::Refused("the last voter cannot be removed".into());
            }
            raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                .await
        }
        AdminRequest::Remove { id } => {
            raft.change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                .await
        }
    };
    match out {
        Ok(r) => AdminReply::Done {
            membership_id: r.log_id.index,
        },
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => AdminReply::NotLeader {
            leader: f.leader_id.zip(f.leader_node),
        },
        Err(e) => AdminReply::Refused(e.to_string()),
    }
}

/// Sends an operator request to the cluster's leader, starting from any of
/// `seeds` (peer addresses) and following "not the leader" answers.
pub async fn admin_request(
    endpoint: &quinn::Endpoint,
    seeds: &[SocketAddr],
    req: AdminRequest,
    ttl: Duration,
) -> Result<u64, String> {
    let mut targets: Vec<SocketAddr> = seeds.to_vec();
    let mut last = String::from("no member given");
    for _ in 0..(2 * seeds.len() + 4) {
        let Some(addr) = targets.first().copied() else {
            break;
        };
        let mut peer = PeerClient::to(endpoint.clone(), 0, addr);
        let reply = peer.call(&Rpc::Admin(req.clone()), ttl).await;
        peer.close();
        match reply {
            Ok(Reply::Admin(AdminReply::Done { membership_id })) => return Ok(membership_id),
            Ok(Reply::Admin(AdminReply::Refused(why))) => return Err(why),
            Ok(Reply::Admin(AdminReply::NotLeader { leader })) => {
                match leader.and_then(|(_, n)| n.peer_addr()) {
                    Some(l) if l != addr => {
                        targets.retain(|t| *t != l);
                        targets.insert(0, l);
                    }
                    _ => {
                        last = format!("{addr} knows no leader (election under way?)");
                        targets.rotate_left(1);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            Ok(_) => {
                last =
                    format!("{addr} does not understand operator requests (release before 0.2.0?)");
                targets.remove(0);
            }
            Err(e) => {
                last = format!("{addr}: {e}");
                targets.remove(0);
            }
        }
    }
    Err(format!("no leader carried out the request; last: {last}"))
}

/// Creates per-peer clients for openraft.
#[derive(Clone)]
pub struct Network {
    endpoint: quinn::Endpoint,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Network")
    }
}

impl Network {
    /// Peer clients sharing `endpoint` (configured with [`client_config`]).
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Self { endpoint }
    }
}

/// A connection to one peer, re-established on demand.
pub struct PeerClient {
    endpoint: quinn::Endpoint,
    target: NodeId,
    addr: Option<SocketAddr>,
    conn: Option<quinn::Connection>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ReplicaNode) -> Self::Network {
        PeerClient {
            endpoint: self.endpoint.clone(),
            target,
            addr: node.peer_addr(),
            conn: None,
        }
    }
}

type RpcErr<E> = RPCError<NodeId, ReplicaNode, RaftError<NodeId, E>>;

fn unreachable<E: std::error::Error>(e: LinkError) -> RPCError<NodeId, ReplicaNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.to_string())))
}

impl PeerClient {
    async fn connection(&mut self) -> Result<quinn::Connection, LinkError> {
        if let Some(c) = &self.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let addr = self
            .addr
            .ok_or_else(|| LinkError::Io(format!("peer {} has no valid address", self.target)))?;
        let connecting = self
            .endpoint
            .connect(addr, PEER_SERVER_NAME)
            .map_err(|e| LinkError::Io(e.to_string()))?;
        // A dead peer never answers the handshake; without this bound the
        // attempt would last the idle timeout.
        let c = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                LinkError::Io(format!("no answer from {addr} within {CONNECT_TIMEOUT:?}"))
            })?
            .map_err(|e| LinkError::Io(e.to_string()))?;
        self.conn = Some(c.clone());
        Ok(c)
    }

    async fn call(&mut self, rpc: &Rpc, ttl: Duration) -> Result<Reply, LinkError> {
        let body = postcard::to_allocvec(rpc).map_err(|e| LinkError::Malformed(e.to_string()))?;
        let work = async {
            let conn = self.connection().await?;
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| LinkError::Io(e.to_string()))?;
            write_frame(&mut send, &body).await?;
            let reply = read_frame(&mut recv).await?;
            postcard::from_bytes::<Reply>(&reply).map_err(|e| LinkError::Malformed(e.to_string()))
        };
        match tokio::time::timeout(ttl, work).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => Err(LinkError::Io("timed out".into())),
        }
    }
}

impl PeerClient {
    /// A client for the replica at `addr` outside openraft (version checks,
    /// operator commands).
    pub fn to(endpoint: quinn::Endpoint, target: NodeId, addr: SocketAddr) -> Self {
        Self {
            endpoint,
            target,
            addr: Some(addr),
            conn: None,
        }
    }

    /// The newest command version the peer reads; `None` if it does not
    /// answer the question (a release before 0.2.0, or unreachable).
    pub async fn max_version(&mut self) -> Option<u32> {
        match self.call(&Rpc::Versions, Duration::from_secs(2)).await {
            Ok(Reply::Versions { max }) => Some(max),
            _ => None,
        }
    }

    /// Closes the connection (a one-off client should not leave it to the
    /// idle timeout on both ends).
    pub fn close(&mut self) {
        if let Some(c) = self.conn.take() {
            c.close(0u32.into(), b"done");
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        match self.call(&Rpc::Append(rpc), option.hard_ttl()).await {
            Ok(Reply::Append(Ok(r))) => Ok(r),
            Ok(Reply::Append(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("mismatched reply"),
            ))),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        match self.call(&Rpc::Snapshot(rpc), option.hard_ttl()).await {
            Ok(Reply::Snapshot(Ok(r))) => Ok(r),
            Ok(Reply::Snapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(_) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("mismatched reply"),
            ))),
            Err(e) => Err(unreachable(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        match self.call(&Rpc::Vote(rpc), option.hard_ttl()).await {
            Ok(Reply::Vote(Ok(r))) => Ok(r),
            Ok(Reply::Vote(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("mismatched reply"),
            ))),
            Err(e) => Err(unreachable(e)),
        }
    }
}

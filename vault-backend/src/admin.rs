//! A replica's admin HTTP port: `/metrics` (Prometheus text), `/health`
//! (the process runs), `/ready` (this replica can serve: it knows a leader
//! and its consensus engine runs), and `/status` (JSON [`ClusterStatus`]:
//! role, term, indexes, members, and per-follower lag on the leader). Also
//! exports the Raft state as gauges once a second.
//!
//! Must never: expose account data; the admin port belongs on an operator
//! network, never the internet.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use openraft::ServerState;
use serde::{Deserialize, Serialize};

use crate::raft::storage::ActiveVersion;
use crate::raft::{NodeId, Raft};
use crate::store::Store;

/// One replica's view of its cluster, as `/status` serves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    /// This replica's id.
    pub id: NodeId,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Index of the last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last applied (committed) entry.
    pub applied_index: Option<u64>,
    /// Last entry covered by the current snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries purged from the log up to here.
    pub purged_index: Option<u64>,
    /// Members (voters and learners) and their peer addresses.
    pub members: BTreeMap<NodeId, String>,
    /// Admin addresses of the members that have one recorded in the
    /// membership.
    #[serde(default)]
    pub admin_addrs: BTreeMap<NodeId, SocketAddr>,
    /// The voting members.
    #[serde(default)]
    pub voters: Vec<NodeId>,
    /// Members that receive the log but do not vote (yet).
    #[serde(default)]
    pub learners: Vec<NodeId>,
    /// The cluster's command version (SPEC.md §8.3), as applied here.
    #[serde(default)]
    pub command_version: u32,
    /// On the leader: how many entries each member is behind the leader's
    /// last entry (`None`: nothing replicated yet).
    pub lag: Option<BTreeMap<NodeId, Option<u64>>>,
    /// Accounts with a row (deposits and lockout tombstones).
    pub records: u64,
}

/// Reads the current status of a replica.
pub fn status(raft: &Raft, store: &Store, command_version: u32) -> ClusterStatus {
    let m = raft.metrics().borrow().clone();
    let last = m.last_log_index;
    let members = m
        .membership_config
        .nodes()
        .map(|(id, n)| (*id, n.peer.clone()))
        .collect();
    let admin_addrs = m
        .membership_config
        .nodes()
        .filter_map(|(id, n)| n.admin.map(|a| (*id, a)))
        .collect();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let learners = m.membership_config.membership().learner_ids().collect();
    let lag = m.replication.as_ref().map(|r| {
        r.iter()
            .map(|(id, matched)| {
                let behind = match (last, matched) {
                    (Some(l), Some(x)) => Some(l.saturating_sub(x.index)),
                    (None, _) => Some(0),
                    (Some(_), None) => None,
                };
                (*id, behind)
            })
            .collect()
    });
    ClusterStatus {
        id: m.id,
        role: format!("{:?}", m.state),
        term: m.current_term,
        leader: m.current_leader,
        last_log_index: last,
        applied_index: m.last_applied.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        members,
        admin_addrs,
        voters,
        learners,
        command_version,
        lag,
        records: store.len().unwrap_or(0),
    }
}

#[derive(Clone)]
struct AdminState {
    raft: Raft,
    store: Store,
    version: ActiveVersion,
    prometheus: Option<PrometheusHandle>,
}

/// Serves the admin port on `listener` until the task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    raft: Raft,
    store: Store,
    version: ActiveVersion,
    prometheus: Option<PrometheusHandle>,
) -> tokio::task::JoinHandle<()> {
    let state = AdminState {
        raft,
        store,
        version,
        prometheus,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/status", get(status_json))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "admin port stopped");
        }
    })
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    match &s.prometheus {
        Some(h) => {
            service_kit::heap::refresh();
            (StatusCode::OK, h.render())
        }
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not recorded in this process\n".to_owned(),
        ),
    }
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let m = s.raft.metrics().borrow().clone();
    let running = m.running_state.is_ok();
    match (running, m.current_leader) {
        (true, Some(l)) => (StatusCode::OK, format!("ready; leader is replica {l}\n")),
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the consensus engine stopped; see the replica's log\n".to_owned(),
        ),
        (true, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known (election under way, or no majority reachable)\n"
                .to_owned(),
        ),
    }
}

async fn status_json(State(s): State<AdminState>) -> Json<ClusterStatus> {
    Json(status(&s.raft, &s.store, s.version.get()))
}

/// Exports Raft state as gauges every second until aborted.
pub fn export_gauges(raft: Raft, store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_leader = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let m = raft.metrics().borrow().clone();
            if m.current_leader != last_leader {
                if last_leader.is_some() || m.current_leader.is_some() {
                    metrics::counter!("vault_raft_leader_changes_total").increment(1);
                }
                last_leader = m.current_leader;
            }
            let last = m.last_log_index.unwrap_or(0);
            let purged = m.purged.map(|l| l.index + 1).unwrap_or(0);
            metrics::gauge!("vault_raft_term").set(m.current_term as f64);
            metrics::gauge!("vault_raft_is_leader").set(if m.state == ServerState::Leader {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("vault_raft_last_log_index").set(last as f64);
            metrics::gauge!("vault_raft_applied_index")
                .set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!("vault_raft_log_entries").set(last.saturating_sub(purged) as f64);
            let st = store.clone();
            if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || st.len()).await {
                metrics::gauge!("vault_records").set(n as f64);
            }
        }
    })
}

/// Fetches `/status` from a replica's admin port.
pub async fn fetch_status(admin: SocketAddr) -> anyhow::Result<ClusterStatus> {
    let url = format!("http://{admin}/status");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the admin port {admin}: {e}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{url} answered {}",
        resp.status()
    );
    let body = read_body(resp, MAX_STATUS_BODY).await?;
    serde_json::from_slice(&body)
        .map_err(|e| anyhow::anyhow!("{url} answered something that is not a replica status: {e}"))
}

/// Largest `/status` body accepted; a 7-replica status is a few KiB.
const MAX_STATUS_BODY: usize = 1 << 20;

/// Reads an HTTP body of at most `limit` bytes: whatever answers on an admin
/// or metrics address is not trusted to keep its answer small.
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    let url = resp.url().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        anyhow::ensure!(
            body.len() + chunk.len() <= limit,
            "{url} sent more than {limit} bytes; is this address the right service?"
        );
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on loopback that answers every request with `body_len` bytes.
    async fn serve(body_len: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n");
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&vec![b'x'; body_len]).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let addr = serve(64 * 1024).await;
        let url = format!("http://{addr}/");
        let small = super::read_body(reqwest::get(&url).await.unwrap(), 64 * 1024).await;
        assert_eq!(small.unwrap().len(), 64 * 1024);
        let err = super::read_body(reqwest::get(&url).await.unwrap(), 1000)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("more than 1000 bytes"), "{err}");
    }

    #[tokio::test]
    async fn a_status_that_is_not_json_is_an_error_not_a_panic() {
        let addr = serve(10).await;
        let err = super::fetch_status(addr).await.unwrap_err();
        assert!(err.to_string().contains("not a replica status"), "{err}");
    }
}

//! The gateway's admin port (HTTP, for operators and orchestrators):
//! `/metrics` (Prometheus text), `/health` (the process answers: 200),
//! `/ready` (200 when it should get traffic: not draining, and every vault
//! cluster's leader answers a quorum read; 503 with the reason otherwise).
//! Anything else is 404.
//!
//! Must never: listen on the public address, or answer readiness from a
//! cache older than [`READY_CACHE`] (a load balancer acts on it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Mutex;

use crate::server::Readiness;

/// How long a readiness answer is reused (each costs one quorum read per
/// cluster; probes come every few seconds from every balancer).
pub const READY_CACHE: Duration = Duration::from_secs(2);

/// The last readiness answer and when it was found.
type LastAnswer = Option<(Instant, Result<(), String>)>;

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    prometheus: Option<PrometheusHandle>,
    last: Arc<Mutex<LastAnswer>>,
}

/// Serves the admin port on `listener` until the task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    prometheus: Option<PrometheusHandle>,
) -> tokio::task::JoinHandle<()> {
    let state = AdminState {
        readiness,
        prometheus,
        last: Arc::default(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
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
    let mut last = s.last.lock().await;
    let fresh = last
        .as_ref()
        .filter(|(at, _)| at.elapsed() < READY_CACHE)
        .map(|(_, r)| r.clone());
    let result = match fresh {
        Some(r) => r,
        None => {
            let r = s.readiness.check().await;
            *last = Some((Instant::now(), r.clone()));
            r
        }
    };
    match result {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

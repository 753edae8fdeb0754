//! Process-wide logging and metrics set-up shared by the binaries (vault
//! replica, gateway, local stack). Libraries only emit through `tracing` and
//! `metrics`; only a binary's `main` may call these, once.

use std::net::SocketAddr;

/// Set-up that failed.
#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    /// The metrics listener could not start (address in use, ...).
    #[error("cannot start the metrics listener on {addr}: {source}")]
    Listener {
        /// The configured address.
        addr: SocketAddr,
        /// What the exporter said (typically: the address is in use).
        #[source]
        source: metrics_exporter_prometheus::BuildError,
    },
    /// A recorder is already installed in this process, or it failed.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
    /// The upkeep thread could not start.
    #[error("cannot start the metrics upkeep thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Logs to stderr, as text (colour only on a terminal); `RUST_LOG`
/// overrides `default_filter`.
pub fn init_tracing(default_filter: &str) {
    init_logging(default_filter, false);
}

/// Logs to stderr, as JSON lines when `json` (for log shippers) or as text
/// (colour only when stderr is a terminal, never in files); `RUST_LOG`
/// overrides `default_filter`.
pub fn init_logging(default_filter: &str, json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        fmt.json().init();
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Bucket bounds of every latency histogram (`*_seconds`): 1 ms to 25 s,
/// about ×2.5 apart, so that a p99 of tens of milliseconds (a login) and
/// one of seconds (a commit without quorum) both fall between bounds.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
];

/// Bucket bounds of the entries-per-fsync histogram.
pub const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// A builder whose latencies are histograms (aggregatable across
/// instances), not summaries.
fn builder() -> Result<metrics_exporter_prometheus::PrometheusBuilder, ObservabilityError> {
    use metrics_exporter_prometheus::Matcher;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_batch_size".into()), &BATCH_BUCKETS)
        })
        .map_err(ObservabilityError::Recorder)
}

/// Serves Prometheus text at `http://<addr>/metrics` when an admin address is configured.
pub fn install_metrics(admin_listen: Option<SocketAddr>) -> Result<(), ObservabilityError> {
    if let Some(addr) = admin_listen {
        builder()?
            .with_http_listener(addr)
            .install()
            .map_err(|source| ObservabilityError::Listener { addr, source })?;
    }
    Ok(())
}

static PROMETHEUS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// Installs the Prometheus recorder without a listener of its own (a
/// replica's admin port renders it at `/metrics`), with upkeep every 5 s.
pub fn install_recorder() -> Result<(), ObservabilityError> {
    let handle = builder()?
        .install_recorder()
        .map_err(ObservabilityError::Recorder)?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .map_err(ObservabilityError::Thread)?;
    let _ = PROMETHEUS.set(handle);
    Ok(())
}

/// The recorder [`install_recorder`] installed, if any.
pub fn prometheus() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    PROMETHEUS.get().cloned()
}

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

/// Logs to stderr; `RUST_LOG` overrides `default_filter`.
pub fn init_tracing(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}

/// Serves Prometheus text at `http://<addr>/metrics` when an admin address is configured.
pub fn install_metrics(admin_listen: Option<SocketAddr>) -> Result<(), ObservabilityError> {
    if let Some(addr) = admin_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
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
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
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

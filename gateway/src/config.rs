//! Gateway configuration: serde struct with documented defaults, TOML file,
//! flags override (in `main`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::vault_client::ClusterConfig;

/// Configuration of one gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Public UDP address. Default `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// Folder written by `gateway init` (TLS identity, Noise key, account
    /// service public key, vault client certificate). Default `gateway-state`.
    pub state_dir: PathBuf,
    /// The vault clusters of the fleet (all share its secrets and CA);
    /// accounts are spread over them by rendezvous hashing on the cluster
    /// names. Default: one cluster `default` with replicas on
    /// `127.0.0.1:7801`–`7805` (what `vault-backend init-cluster` makes).
    pub vault_clusters: Vec<ClusterConfig>,
    /// Admin HTTP listener serving `/metrics`, `/health` and `/ready`
    /// (`gateway::admin`). Default none.
    pub admin_listen: Option<SocketAddr>,
    /// Request budgets per device and per account (`[budgets.per_device.status]`
    /// `burst = 10`, `every_ms = 1000`, ...; defaults in `budget::BudgetConfig`).
    pub budgets: crate::budget::BudgetConfig,
    /// Bounds on connections in their handshake (`[admission]`:
    /// `max_handshakes` 1024, `retry_above` 256, `max_handshakes_per_source` 64).
    pub admission: crate::admission::AdmissionConfig,
    /// Bounds of the relay to each vault cluster (`[relay]`:
    /// `max_in_flight` 1024 requests per cluster; more are shed as `BUSY`).
    pub relay: crate::relay::RelayConfig,
    /// Authenticated connections per device and per account (`[connections]`:
    /// `per_device` 4, `per_account` 16; beyond them the oldest is closed).
    pub connections: crate::connections::ConnectionCaps,
    /// On SIGTERM or SIGINT, how long requests in flight may take to finish
    /// before the remaining connections are cut. Default 30000 ms (above
    /// the relay's 25 s timeout, so a request started just before the
    /// signal ends on its own; within Kubernetes' default 30 s grace when
    /// the pod is taken out of the load balancer first).
    pub drain_deadline_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            state_dir: PathBuf::from("gateway-state"),
            vault_clusters: vec![ClusterConfig {
                name: "default".into(),
                replicas: (7801..=7805)
                    .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
                    .collect(),
                server_name: service_kit::pki::REPLICA_ROLE_NAME.into(),
            }],
            admin_listen: None,
            budgets: Default::default(),
            admission: Default::default(),
            relay: Default::default(),
            connections: Default::default(),
            drain_deadline_ms: 30_000,
        }
    }
}

impl GatewayConfig {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
    }
}

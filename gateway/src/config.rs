//! Gateway configuration: serde struct with documented defaults, TOML file,
//! flags override (in `main`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Configuration of one gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Public UDP address. Default `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// Folder written by `gateway init` (TLS identity, Noise key, account
    /// service public key, vault client certificate). Default `gateway-state`.
    pub state_dir: PathBuf,
    /// Vault replica address. Default `127.0.0.1:7801`.
    pub vault_addr: SocketAddr,
    /// TLS name on the vault replica certificate. Default `localhost`.
    pub vault_server_name: String,
    /// Admin HTTP listener serving `/metrics`. Default none.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            state_dir: PathBuf::from("gateway-state"),
            vault_addr: SocketAddr::from(([127, 0, 0, 1], 7801)),
            vault_server_name: "localhost".into(),
            admin_listen: None,
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

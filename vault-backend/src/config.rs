//! Replica configuration: a serde struct with documented defaults, loaded from
//! TOML and overridden by command-line flags in `main`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Configuration of one vault replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaultConfig {
    /// UDP address for gateway connections (QUIC, mutual TLS).
    /// Default `127.0.0.1:7801`.
    pub listen: SocketAddr,
    /// Folder with the fleet secrets, certificates and database, as written
    /// by `vault-backend init`. Default `vault-state`.
    pub state_dir: PathBuf,
    /// Password guesses a deposit allows. A server policy, not a client
    /// choice. Default 10.
    pub max_attempts: u32,
    /// Admin HTTP listener serving `/metrics`. Default none.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7801)),
            state_dir: PathBuf::from("vault-state"),
            max_attempts: protocol_spec::limits::DEFAULT_MAX_ATTEMPTS,
            admin_listen: None,
        }
    }
}

impl VaultConfig {
    /// Reads a TOML file; missing keys take their defaults.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
    }
}

/// Fixed file names inside a replica's state folder.
pub mod files {
    /// Fleet secrets (0600).
    pub const SECRETS: &str = crate::secrets::SECRETS_FILE;
    /// Cluster CA certificate/key stem.
    pub const CLUSTER_CA: &str = "cluster-ca";
    /// Replica server certificate/key stem.
    pub const REPLICA_CERT: &str = "replica";
    /// Database.
    pub const DATABASE: &str = "vault.redb";
    /// Public facts clients pin (fleet id, public key).
    pub const FLEET_PUBLIC: &str = "fleet-public.toml";
}

//! Setting up and starting a replica from its state folder: `init` (fleet
//! secrets, cluster CA, replica certificate), gateway certificates, and
//! `start` (open the database, bind the listener).

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{files, VaultConfig};
use crate::pki::{self, Usage};
use crate::secrets::FleetSecrets;
use crate::server::VaultServer;
use crate::service::{Policy, Vault};
use crate::store::Store;

/// Public facts about a fleet that clients pin and gateways need.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FleetPublic {
    /// Fleet id (OPAQUE server identity).
    pub fleet_id: String,
    /// Fleet OPAQUE public key, hex.
    pub fleet_public_key: String,
}

impl FleetPublic {
    /// Reads `fleet-public.toml` from a state folder.
    pub fn read(state_dir: &Path) -> anyhow::Result<Self> {
        let p = state_dir.join(files::FLEET_PUBLIC);
        let t = std::fs::read_to_string(&p).map_err(|e| {
            anyhow::anyhow!("cannot read {}: {e}; run `vault-backend init`", p.display())
        })?;
        Ok(toml::from_str(&t)?)
    }
}

/// Creates a new fleet in `state_dir`: secrets (0600), cluster CA, replica
/// certificate for `names`. Refuses to overwrite an existing fleet.
pub fn init(state_dir: &Path, fleet_id: &str, names: &[&str]) -> anyhow::Result<FleetPublic> {
    std::fs::create_dir_all(state_dir)?;
    let secrets_path = state_dir.join(files::SECRETS);
    if secrets_path.exists() {
        anyhow::bail!(
            "{} already holds a fleet; refusing to overwrite its secrets",
            state_dir.display()
        );
    }
    let secrets = FleetSecrets::generate(fleet_id);
    secrets.save(&secrets_path)?;
    let ca = pki::new_ca(&format!("bkv vault cluster CA {fleet_id}"))?;
    pki::write(state_dir, files::CLUSTER_CA, &ca)?;
    let replica = pki::issue(&ca, "bkv vault replica", names, Usage::Server)?;
    pki::write(state_dir, files::REPLICA_CERT, &replica)?;
    let public = FleetPublic {
        fleet_id: fleet_id.to_owned(),
        fleet_public_key: hex::encode(secrets.public_key()),
    };
    std::fs::write(
        state_dir.join(files::FLEET_PUBLIC),
        toml::to_string(&public)?,
    )?;
    Ok(public)
}

/// Issues a gateway client certificate from the cluster CA in `state_dir`,
/// written to `out_dir/<stem>.pem|.key` together with the CA certificate.
pub fn issue_gateway_cert(state_dir: &Path, out_dir: &Path, stem: &str) -> anyhow::Result<()> {
    let ca = pki::read(state_dir, files::CLUSTER_CA)?;
    std::fs::create_dir_all(out_dir)?;
    let cert = pki::issue(&ca, "bkv gateway", &["gateway.bkv.internal"], Usage::Client)?;
    pki::write(out_dir, stem, &cert)?;
    std::fs::write(out_dir.join("vault-cluster-ca.pem"), &ca.cert_pem)?;
    Ok(())
}

/// A started replica.
pub struct Replica {
    /// The request handler (tests inspect its store).
    pub vault: Arc<Vault>,
    /// The listener.
    pub server: VaultServer,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").finish_non_exhaustive()
    }
}

impl Replica {
    /// Opens the state folder and starts listening.
    pub fn start(cfg: &VaultConfig) -> anyhow::Result<Self> {
        let dir = &cfg.state_dir;
        let secrets = Arc::new(FleetSecrets::load(&dir.join(files::SECRETS))?);
        let store = Store::open(&dir.join(files::DATABASE))?;
        let ca = pki::read(dir, files::CLUSTER_CA)?;
        let identity = pki::read(dir, files::REPLICA_CERT)?;
        if cfg.max_attempts == 0 {
            anyhow::bail!("max_attempts must be at least 1");
        }
        let vault = Arc::new(Vault::new(
            secrets,
            store,
            Policy {
                max_attempts: cfg.max_attempts,
            },
        ));
        let server = VaultServer::start(vault.clone(), cfg.listen, &identity, &ca.cert_pem)?;
        Ok(Self { vault, server })
    }

    /// Stops the listener and releases the database.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
        drop(self.vault);
    }
}

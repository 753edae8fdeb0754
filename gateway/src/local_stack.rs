//! The whole stack on loopback in one process: a vault replica and a gateway,
//! with every key and certificate generated into a state folder on first use.
//! Used by the `local-stack` command and, as the shared harness, by the
//! integration tests of every crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use client::{ClientProfile, DeviceIdentity};
use vault_backend::config::{files as vfiles, VaultConfig};
use vault_backend::replica::{self, FleetPublic, Replica};

use crate::keys::{self, GatewayKeys};
use crate::server::Gateway;

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// State folder; `None` = a temporary folder removed on drop.
    pub state_dir: Option<PathBuf>,
    /// Gateway address (port 0 = any).
    pub gateway_listen: SocketAddr,
    /// Vault address (port 0 = any).
    pub vault_listen: SocketAddr,
    /// Guess limit.
    pub max_attempts: u32,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            vault_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_attempts: protocol_spec::limits::DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// A running local stack.
pub struct LocalStack {
    /// State folder.
    pub dir: PathBuf,
    /// The vault replica (None while stopped).
    pub replica: Option<Replica>,
    /// The gateway.
    pub gateway: Option<Gateway>,
    /// What a client needs.
    pub profile: ClientProfile,
    vault_cfg: VaultConfig,
    _tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for LocalStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStack")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// File name of the client profile in the state folder.
pub const PROFILE_FILE: &str = "client-profile.toml";

impl LocalStack {
    /// Generates what is missing and starts vault and gateway.
    pub async fn start(opts: StackOptions) -> anyhow::Result<Self> {
        let (dir, tmp) = match &opts.state_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let vault_dir = dir.join("vault");
        let gw_dir = dir.join("gateway");
        if !vault_dir.join(vfiles::SECRETS).exists() {
            replica::init(&vault_dir, "bkv-local-fleet", &["localhost", "127.0.0.1"])?;
        }
        keys::init(&gw_dir, &["localhost", "127.0.0.1"])?;
        if !gw_dir
            .join(format!("{}.pem", keys::files::VAULT_CLIENT))
            .exists()
        {
            replica::issue_gateway_cert(&vault_dir, &gw_dir, keys::files::VAULT_CLIENT)?;
        }
        let vault_cfg = VaultConfig {
            listen: opts.vault_listen,
            state_dir: vault_dir.clone(),
            max_attempts: opts.max_attempts,
            admin_listen: None,
        };
        let replica = Replica::start(&vault_cfg)?;
        let vault_addr = replica.server.local_addr()?;
        let vault_cfg = VaultConfig {
            listen: vault_addr,
            ..vault_cfg
        };
        let gw_keys = GatewayKeys::load(&gw_dir)?;
        let gateway = Gateway::start(opts.gateway_listen, &gw_keys, vault_addr, "localhost")?;
        let fleet = FleetPublic::read(&vault_dir)?;
        let profile = ClientProfile {
            gateway_addr: gateway.local_addr()?,
            gateway_server_name: "localhost".into(),
            gateway_ca_pem: gw_keys.ca_pem.clone(),
            gateway_noise_key: Some(hex::encode(gw_keys.noise_public)),
            fleet_id: fleet.fleet_id,
            fleet_public_key: fleet.fleet_public_key,
        };
        profile.save(&dir.join(PROFILE_FILE))?;
        Ok(Self {
            dir,
            replica: Some(replica),
            gateway: Some(gateway),
            profile,
            vault_cfg,
            _tmp: tmp,
        })
    }

    /// The account service's job: a new device with a credential for `account_id`.
    pub fn enroll_device(&self, account_id: &str) -> anyhow::Result<DeviceIdentity> {
        let mut d = DeviceIdentity::generate()?;
        d.credential = Some(self.mint(account_id, &d.static_public, Duration::from_secs(3600))?);
        Ok(d)
    }

    /// Mints a credential with the stack's account-service key.
    pub fn mint(
        &self,
        account_id: &str,
        device_key: &[u8; 32],
        ttl: Duration,
    ) -> anyhow::Result<String> {
        let secret = keys::account_service_secret(&self.gateway_dir())?;
        Ok(protocol_spec::credential::mint(
            &secret, account_id, device_key, ttl,
        )?)
    }

    /// Gateway state folder.
    pub fn gateway_dir(&self) -> PathBuf {
        self.dir.join("gateway")
    }

    /// Vault state folder.
    pub fn vault_dir(&self) -> &Path {
        &self.vault_cfg.state_dir
    }

    /// Stops the vault replica (its database is closed).
    pub async fn stop_vault(&mut self) {
        if let Some(r) = self.replica.take() {
            r.shutdown().await;
        }
    }

    /// Starts the vault replica again on the same address.
    pub async fn start_vault(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..50 {
            match Replica::start(&self.vault_cfg) {
                Ok(r) => {
                    self.replica = Some(r);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("vault did not restart")))
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
        self.stop_vault().await;
    }
}

//! The gateway's key material on disk: TLS identity (from a gateway CA), the
//! static Noise key, the account service's credential-verification key, and
//! the client certificate for the vault link. `init` creates what is missing.
//!
//! The account service's *signing* key is generated here too for the local
//! stack (standing in for phone-number verification); a production gateway
//! only ever holds the public half.

use std::path::Path;

use serde::{Deserialize, Serialize};
use service_kit::files::{create_private_dir, write_private, Existing};
use service_kit::pki::{self, CertAndKey, Usage};
use zeroize::Zeroizing;

/// File names inside the gateway state folder.
pub mod files {
    /// CA the gateway TLS certificate chains to (clients pin it).
    pub const GATEWAY_CA: &str = "gateway-ca";
    /// Gateway TLS identity.
    pub const GATEWAY_TLS: &str = "gateway-tls";
    /// Static Noise key.
    pub const NOISE_KEY: &str = "noise-key.toml";
    /// Account service public key (hex).
    pub const ACCOUNT_SERVICE_PUBLIC: &str = "account-service.pub";
    /// Account service signing key (hex, 0600), local stack only.
    pub const ACCOUNT_SERVICE_SECRET: &str = "account-service.key";
    /// Vault link client certificate stem.
    pub const VAULT_CLIENT: &str = "vault-client";
    /// Vault cluster CA.
    pub const VAULT_CA: &str = "vault-cluster-ca.pem";
}

#[derive(Serialize, Deserialize)]
struct NoiseKeyFile {
    private_hex: String,
    public_hex: String,
}

/// Loaded gateway keys.
pub struct GatewayKeys {
    /// TLS identity.
    pub tls: CertAndKey,
    /// CA certificate PEM clients pin.
    pub ca_pem: String,
    /// Noise static private key.
    pub noise_private: Zeroizing<[u8; 32]>,
    /// Noise static public key.
    pub noise_public: [u8; 32],
    /// Account service public key (Ed25519).
    pub account_service_public: Vec<u8>,
    /// Client certificate for the vault link.
    pub vault_client: CertAndKey,
    /// Vault cluster CA PEM.
    pub vault_ca_pem: String,
}

impl std::fmt::Debug for GatewayKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKeys")
            .field("noise_public", &hex::encode(self.noise_public))
            .finish_non_exhaustive()
    }
}

/// Creates the gateway's own keys in `dir` (TLS for `names`, Noise key,
/// account-service key pair), skipping any that exist. The vault client
/// certificate comes from the vault fleet (`vault-backend issue-gateway-cert`).
pub fn init(dir: &Path, names: &[&str]) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    if !dir.join(format!("{}.pem", files::GATEWAY_TLS)).exists() {
        let ca = pki::new_ca("bkv gateway CA")?;
        pki::write(dir, files::GATEWAY_CA, &ca)?;
        let tls = pki::issue(&ca, "bkv gateway", names, Usage::Server)?;
        pki::write(dir, files::GATEWAY_TLS, &tls)?;
    }
    if !dir.join(files::NOISE_KEY).exists() {
        let (private, public) = protocol_spec::noise::generate_static_keypair()
            .map_err(|e| anyhow::anyhow!("noise key generation: {e}"))?;
        let f = NoiseKeyFile {
            private_hex: hex::encode(private),
            public_hex: hex::encode(public),
        };
        write_private(
            &dir.join(files::NOISE_KEY),
            toml::to_string(&f)?.as_bytes(),
            Existing::Refuse,
        )?;
    }
    if !dir.join(files::ACCOUNT_SERVICE_PUBLIC).exists() {
        let (secret, public) = protocol_spec::credential::generate_signing_key()?;
        write_private(
            &dir.join(files::ACCOUNT_SERVICE_SECRET),
            hex::encode(secret).as_bytes(),
            Existing::Refuse,
        )?;
        service_kit::files::write_public(
            &dir.join(files::ACCOUNT_SERVICE_PUBLIC),
            hex::encode(public).as_bytes(),
        )?;
    }
    Ok(())
}

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    let p = dir.join(name);
    std::fs::read_to_string(&p)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}; run `gateway init` first", p.display()))
}

impl GatewayKeys {
    /// Loads everything from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let noise: NoiseKeyFile = toml::from_str(&Zeroizing::new(read(dir, files::NOISE_KEY)?))?;
        let dec32 = |h: &str| -> anyhow::Result<[u8; 32]> {
            hex::decode(h)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("noise key must be 32 bytes"))
        };
        Ok(Self {
            tls: pki::read(dir, files::GATEWAY_TLS)?,
            ca_pem: read(dir, &format!("{}.pem", files::GATEWAY_CA))?,
            noise_private: Zeroizing::new(dec32(&noise.private_hex)?),
            noise_public: dec32(&noise.public_hex)?,
            account_service_public: hex::decode(read(dir, files::ACCOUNT_SERVICE_PUBLIC)?.trim())?,
            vault_client: pki::read(dir, files::VAULT_CLIENT).map_err(|e| {
                anyhow::anyhow!(
                    "{e}; issue one with `vault-backend issue-gateway-cert --fleet-dir <cluster>/fleet --out-dir {}`",
                    dir.display()
                )
            })?,
            vault_ca_pem: read(dir, files::VAULT_CA)?,
        })
    }
}

/// Reads the account service signing key (local stack / mint command).
pub fn account_service_secret(dir: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(hex::decode(
        read(dir, files::ACCOUNT_SERVICE_SECRET)?.trim(),
    )?))
}

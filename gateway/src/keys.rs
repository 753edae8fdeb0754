//! The gateway's key material on disk: TLS identity (from a gateway CA), the
//! static Noise key (with, during a rotation, the previous one until its
//! retirement time, and a next one prepared ahead), the account service's
//! credential-verification key(s), and the client certificate for the vault
//! link. `init` creates what is missing; [`rotate_noise_key`] and
//! [`prepare_noise_key`] rotate the Noise key; a running gateway reloads
//! all of it on SIGHUP.
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
    /// The Noise key being retired, with its retirement time (a rotation's
    /// overlap).
    pub const NOISE_KEY_PREVIOUS: &str = "noise-key.previous.toml";
    /// The Noise key the next rotation will make current, prepared ahead so
    /// that client profiles can carry it.
    pub const NOISE_KEY_NEXT: &str = "noise-key.next.toml";
    /// Account service public key(s) (hex, one per line, the current one
    /// first: more than one while the account service rotates its key).
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
    /// Previous key only: when it stops being accepted (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retire_at_unix: Option<u64>,
}

impl NoiseKeyFile {
    fn generate() -> anyhow::Result<Self> {
        let (private, public) = protocol_spec::noise::generate_static_keypair()
            .map_err(|e| anyhow::anyhow!("noise key generation: {e}"))?;
        Ok(Self {
            private_hex: hex::encode(private),
            public_hex: hex::encode(public),
            retire_at_unix: None,
        })
    }

    fn read(path: &Path) -> anyhow::Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e}; run `gateway init` first",
                path.display()
            )
        })?);
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    fn write(&self, path: &Path, existing: Existing) -> anyhow::Result<()> {
        write_private(
            path,
            Zeroizing::new(toml::to_string(self)?).as_bytes(),
            existing,
        )?;
        Ok(())
    }

    fn keys(&self) -> anyhow::Result<(Zeroizing<[u8; 32]>, [u8; 32])> {
        let dec32 = |h: &str| -> anyhow::Result<[u8; 32]> {
            hex::decode(h)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("noise key must be 32 bytes"))
        };
        Ok((
            Zeroizing::new(dec32(&self.private_hex)?),
            dec32(&self.public_hex)?,
        ))
    }
}

/// The Noise key being retired during a rotation's overlap.
pub struct PreviousNoiseKey {
    /// Its private half.
    pub private: Zeroizing<[u8; 32]>,
    /// Its public half (what old client profiles pin).
    pub public: [u8; 32],
    /// From when it is no longer accepted.
    pub retire_at: std::time::SystemTime,
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
    /// The previous Noise key, while a rotation's overlap lasts.
    pub noise_previous: Option<PreviousNoiseKey>,
    /// Account service public keys (Ed25519), the current one first.
    pub account_service_public: Vec<Vec<u8>>,
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
        NoiseKeyFile::generate()?.write(&dir.join(files::NOISE_KEY), Existing::Refuse)?;
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

/// Prepares the Noise key the next rotation makes current (if none is
/// prepared yet) and returns its public half (hex), for client profiles to
/// carry ahead of the rotation (`gateway_noise_next_key`).
pub fn prepare_noise_key(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join(files::NOISE_KEY_NEXT);
    if !path.exists() {
        NoiseKeyFile::generate()?.write(&path, Existing::Refuse)?;
    }
    Ok(NoiseKeyFile::read(&path)?.public_hex)
}

/// Rotates the Noise key: the prepared next key (or a new one) becomes
/// current, and the current one becomes the previous key, accepted until
/// `overlap` from now so that phones pinned to it get in and learn the new
/// one. A previous key still in its overlap is dropped. A running gateway
/// takes the change on SIGHUP. Returns the new public key (hex).
pub fn rotate_noise_key(dir: &Path, overlap: std::time::Duration) -> anyhow::Result<String> {
    let current_path = dir.join(files::NOISE_KEY);
    let mut current = NoiseKeyFile::read(&current_path)?;
    let next_path = dir.join(files::NOISE_KEY_NEXT);
    let next = match next_path.exists() {
        true => Some(NoiseKeyFile::read(&next_path)?),
        false => None,
    };
    // A prepared key that is already current (a rotation that crashed
    // before removing it) is not rotated to again.
    let next = match next.filter(|n| n.public_hex != current.public_hex) {
        Some(n) => n,
        None => NoiseKeyFile::generate()?,
    };
    next.keys()?;
    let retire_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .saturating_add(overlap);
    current.retire_at_unix = Some(retire_at.as_secs());
    // The previous key first: a crash between the two writes leaves the
    // old key current and also "previous", which serves every phone.
    current.write(&dir.join(files::NOISE_KEY_PREVIOUS), Existing::Replace)?;
    next.write(&current_path, Existing::Replace)?;
    if next_path.exists() {
        std::fs::remove_file(&next_path)?;
    }
    Ok(next.public_hex)
}

/// The client profile (SPEC §1.1) of the gateway whose state folder is
/// `dir`, reached by phones at `public_addr` (and `others`) under the TLS
/// name `server_name`, in front of the fleet `fleet`. It pins the current
/// Noise key and carries the prepared next key, if there is one, so that a
/// later rotation strands no phone that has this profile.
pub fn client_profile(
    dir: &Path,
    public_addr: std::net::SocketAddr,
    others: &[std::net::SocketAddr],
    server_name: &str,
    fleet: protocol_spec::profile::FleetPublic,
) -> anyhow::Result<protocol_spec::profile::ClientProfile> {
    let current = NoiseKeyFile::read(&dir.join(files::NOISE_KEY))?;
    current.keys()?;
    let next_path = dir.join(files::NOISE_KEY_NEXT);
    let next = match next_path.exists() {
        true => Some(NoiseKeyFile::read(&next_path)?)
            .filter(|n| n.public_hex != current.public_hex)
            .map(|n| n.public_hex),
        false => None,
    };
    let ca_pem = read(dir, &format!("{}.pem", files::GATEWAY_CA))?;
    let names = pki::names(&pki::read(dir, files::GATEWAY_TLS)?.cert_pem)?;
    anyhow::ensure!(
        names.iter().any(|n| n == server_name),
        "the gateway's certificate is not for {server_name:?} (it names {}); pass one of those as --server-name",
        names.join(", ")
    );
    let profile = protocol_spec::profile::ClientProfile {
        gateway_addr: public_addr,
        other_gateways: others.to_vec(),
        gateway_server_name: server_name.to_owned(),
        gateway_ca_pem: ca_pem,
        gateway_noise_key: Some(current.public_hex),
        gateway_noise_next_key: next,
        fleet_id: fleet.fleet_id,
        fleet_public_key: fleet.fleet_public_key,
    };
    // What phones will be given must read back as a valid profile.
    protocol_spec::profile::ClientProfile::from_toml(&profile.to_toml()?)?;
    Ok(profile)
}

impl GatewayKeys {
    /// Loads everything from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let (noise_private, noise_public) =
            NoiseKeyFile::read(&dir.join(files::NOISE_KEY))?.keys()?;
        let previous_path = dir.join(files::NOISE_KEY_PREVIOUS);
        let noise_previous = if previous_path.exists() {
            let f = NoiseKeyFile::read(&previous_path)?;
            let (private, public) = f.keys()?;
            let at = f.retire_at_unix.ok_or_else(|| {
                anyhow::anyhow!("{} has no retire_at_unix", previous_path.display())
            })?;
            Some(PreviousNoiseKey {
                private,
                public,
                retire_at: std::time::UNIX_EPOCH + std::time::Duration::from_secs(at),
            })
            .filter(|p| p.public != noise_public)
        } else {
            None
        };
        let account_service_public = read(dir, files::ACCOUNT_SERVICE_PUBLIC)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(hex::decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            tls: pki::read(dir, files::GATEWAY_TLS)?,
            ca_pem: read(dir, &format!("{}.pem", files::GATEWAY_CA))?,
            noise_private,
            noise_public,
            noise_previous,
            account_service_public,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    /// A state folder as `init` and the fleet's certificate make it.
    fn state() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &["localhost"]).unwrap();
        let ca = pki::new_ca("test vault CA").unwrap();
        let cert = pki::issue(&ca, "gateway", &["gateway"], Usage::Client).unwrap();
        pki::write(dir.path(), files::VAULT_CLIENT, &cert).unwrap();
        service_kit::files::write_public(&dir.path().join(files::VAULT_CA), ca.cert_pem.as_bytes())
            .unwrap();
        dir
    }

    fn current(dir: &Path) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
        NoiseKeyFile::read(&dir.join(files::NOISE_KEY))
            .unwrap()
            .keys()
            .unwrap()
    }

    fn previous(dir: &Path) -> NoiseKeyFile {
        NoiseKeyFile::read(&dir.join(files::NOISE_KEY_PREVIOUS)).unwrap()
    }

    #[test]
    fn a_rotation_makes_the_prepared_key_current_and_keeps_the_old_one_until_its_time() {
        let dir = state();
        let (_, old) = current(dir.path());
        let next = prepare_noise_key(dir.path()).unwrap();
        assert_eq!(
            prepare_noise_key(dir.path()).unwrap(),
            next,
            "prepared once"
        );
        let rotated = rotate_noise_key(dir.path(), Duration::from_secs(86_400)).unwrap();
        assert_eq!(rotated, next);
        let loaded = GatewayKeys::load(dir.path()).unwrap();
        assert_eq!(hex::encode(loaded.noise_public), next);
        assert_eq!(loaded.noise_previous.as_ref().map(|p| p.public), Some(old));
        assert_eq!(hex::encode(current(dir.path()).1), next);
        assert!(!dir.path().join(files::NOISE_KEY_NEXT).exists());
        let p = previous(dir.path());
        assert_eq!(p.public_hex, hex::encode(old));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let at = p.retire_at_unix.unwrap();
        assert!(at > now + 86_000 && at <= now + 86_400 + 5, "{at} vs {now}");
        // Without a prepared key, a rotation makes a new one.
        let again = rotate_noise_key(dir.path(), Duration::ZERO).unwrap();
        assert_ne!(again, next);
        assert_eq!(previous(dir.path()).public_hex, next);
    }

    #[test]
    fn a_rotation_cut_between_its_writes_leaves_keys_that_serve() {
        let dir = state();
        let (_, old) = current(dir.path());
        // Cut after the previous key was written and before the current one
        // was replaced: the old key is both, and a gateway serves it.
        let mut cut = NoiseKeyFile::read(&dir.path().join(files::NOISE_KEY)).unwrap();
        cut.retire_at_unix = Some(u64::MAX / 2);
        cut.write(
            &dir.path().join(files::NOISE_KEY_PREVIOUS),
            Existing::Refuse,
        )
        .unwrap();
        let loaded = GatewayKeys::load(dir.path()).unwrap();
        assert_eq!(loaded.noise_public, old);
        assert!(
            loaded.noise_previous.is_none(),
            "the same key is not also 'previous'"
        );
        // Cut after the current key was replaced and before the prepared
        // file was removed: the next rotation does not rotate to the same
        // key again.
        std::fs::copy(
            dir.path().join(files::NOISE_KEY),
            dir.path().join(files::NOISE_KEY_NEXT),
        )
        .unwrap();
        let rotated = rotate_noise_key(dir.path(), Duration::ZERO).unwrap();
        assert_ne!(rotated, hex::encode(old));
        assert_eq!(previous(dir.path()).public_hex, hex::encode(old));
    }
}

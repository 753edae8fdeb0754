//! A device's identity: its static Noise key pair (the device identity the
//! gateway authenticates) and the credential the account service minted for it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::ClientError;

/// File inside a device folder.
pub const DEVICE_FILE: &str = "device.toml";

#[derive(Serialize, Deserialize)]
struct DeviceFile {
    static_private_hex: String,
    static_public_hex: String,
    #[serde(default)]
    credential: Option<String>,
}

/// One phone's identity.
#[derive(Clone)]
pub struct DeviceIdentity {
    /// X25519 private key.
    pub static_private: Zeroizing<[u8; 32]>,
    /// X25519 public key.
    pub static_public: [u8; 32],
    /// PASETO credential, once minted.
    pub credential: Option<String>,
}

impl std::fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("static_public", &hex::encode(self.static_public))
            .finish_non_exhaustive()
    }
}

impl DeviceIdentity {
    /// A new device key pair without a credential.
    pub fn generate() -> Result<Self, ClientError> {
        let (private, public) = protocol_spec::noise::generate_static_keypair()
            .map_err(|e| ClientError::Config(format!("key generation failed: {e}")))?;
        Ok(Self {
            static_private: Zeroizing::new(private),
            static_public: public,
            credential: None,
        })
    }

    /// The account named by this device's credential, read without
    /// verifying it (to find the account's backups; the gateway verifies).
    pub fn account_hint(&self) -> Result<String, ClientError> {
        let token = self.credential.as_deref().ok_or_else(|| {
            ClientError::Config(
                "this device has no credential yet; run `backup-client device set-credential`"
                    .into(),
            )
        })?;
        protocol_spec::credential::unverified_account(token)
            .map_err(|e| ClientError::Config(format!("the device credential is unreadable: {e}")))
    }

    /// Loads `dir/device.toml`.
    pub fn load(dir: &Path) -> Result<Self, ClientError> {
        let p = dir.join(DEVICE_FILE);
        let t = Zeroizing::new(std::fs::read_to_string(&p).map_err(|e| {
            ClientError::Config(format!(
                "cannot read device identity {}: {e}; create one with `backup-client device new`",
                p.display()
            ))
        })?);
        let f: DeviceFile = toml::from_str(&t)
            .map_err(|e| ClientError::Config(format!("invalid {}: {e}", p.display())))?;
        let dec = |h: &str| -> Result<[u8; 32], ClientError> {
            hex::decode(h)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    ClientError::Config(format!("{} holds a malformed key", p.display()))
                })
        };
        Ok(Self {
            static_private: Zeroizing::new(dec(&f.static_private_hex)?),
            static_public: dec(&f.static_public_hex)?,
            credential: f.credential,
        })
    }

    /// Saves to `dir/device.toml` (owner-only).
    pub fn save(&self, dir: &Path) -> Result<(), ClientError> {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::Config(e.to_string()))?;
        let f = DeviceFile {
            static_private_hex: hex::encode(self.static_private.as_ref()),
            static_public_hex: hex::encode(self.static_public),
            credential: self.credential.clone(),
        };
        let t =
            Zeroizing::new(toml::to_string(&f).map_err(|e| ClientError::Config(e.to_string()))?);
        write_private(&dir.join(DEVICE_FILE), t.as_bytes())
    }
}

/// Writes `bytes` to `p` owner-only (0600), replacing any earlier version
/// atomically (a crash leaves the old or the new file, never a torn one).
pub(crate) fn write_private(p: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    service_kit::files::write_private(p, bytes, service_kit::files::Existing::Replace)
        .map_err(|e| ClientError::Config(e.to_string()))
}

//! What this device remembers about encrypted backup: whether it is on, how
//! the key is protected (vault password or 64-digit key only), where the
//! backups go, and the backup key itself — in the device folder, owner-only,
//! like the device's private Noise key (a phone keeps it in its keystore so
//! it can make new backups without asking).
//!
//! Must never: write the key anywhere but this owner-only file, or print it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::{BackupKey, ClientError};

/// File inside a device folder.
pub const SETTINGS_FILE: &str = "backup.toml";

/// How the backup key can be recovered on a new device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protection {
    /// Deposited in the vault behind a password (the 64-digit key also works).
    Password,
    /// Only the 64-digit key the user wrote down.
    KeyOnly,
}

#[derive(Serialize, Deserialize)]
struct SettingsFile {
    protection: Protection,
    location: String,
    account_id: String,
    keep: usize,
    key_hex: String,
}

/// Backup settings of one device, with its backup key.
#[derive(Clone)]
pub struct BackupSettings {
    /// How the key is protected.
    pub protection: Protection,
    /// Cloud location (folder, `file://` or `s3://` URL).
    pub location: String,
    /// The account the backups belong to.
    pub account_id: String,
    /// Versions kept in the cloud.
    pub keep: usize,
    /// The backup key.
    pub key: BackupKey,
}

impl std::fmt::Debug for BackupSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupSettings")
            .field("protection", &self.protection)
            .field("location", &self.location)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}

fn file(dir: &Path) -> PathBuf {
    dir.join(SETTINGS_FILE)
}

impl BackupSettings {
    /// Loads the settings; `Ok(None)` if encrypted backup is off on this device.
    pub fn load(dir: &Path) -> Result<Option<Self>, ClientError> {
        let p = file(dir);
        let t = match std::fs::read_to_string(&p) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ClientError::Config(format!(
                    "cannot read {}: {e}",
                    p.display()
                )))
            }
        };
        let f: SettingsFile = toml::from_str(&t)
            .map_err(|e| ClientError::Config(format!("invalid {}: {e}", p.display())))?;
        let key_hex = Zeroizing::new(f.key_hex);
        let key = BackupKey::parse(&key_hex)
            .map_err(|_| ClientError::Config(format!("{} holds a malformed key", p.display())))?;
        Ok(Some(Self {
            protection: f.protection,
            location: f.location,
            account_id: f.account_id,
            keep: f.keep,
            key,
        }))
    }

    /// Saves the settings (owner-only).
    pub fn save(&self, dir: &Path) -> Result<(), ClientError> {
        let mut f = SettingsFile {
            protection: self.protection,
            location: self.location.clone(),
            account_id: self.account_id.clone(),
            keep: self.keep,
            key_hex: hex::encode(self.key.as_bytes()),
        };
        let t =
            Zeroizing::new(toml::to_string(&f).map_err(|e| ClientError::Config(e.to_string()))?);
        f.key_hex.zeroize();
        crate::device::write_private(&file(dir), t.as_bytes())
    }

    /// Turns encrypted backup off on this device: forgets the key.
    pub fn remove(dir: &Path) -> Result<(), ClientError> {
        match std::fs::remove_file(file(dir)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClientError::Config(format!(
                "cannot remove {}: {e}",
                file(dir).display()
            ))),
        }
    }
}

//! What this device remembers about encrypted backup: whether it is on, how
//! the key is protected (vault password or 64-digit key only), where the
//! backups go, and the backup key itself — in the app's store
//! ([`crate::store`]; the CLI's is the device folder, owner-only), like the
//! device's private Noise key (a phone keeps it in its keystore so it can
//! make new backups without asking).
//!
//! Must never: write the key anywhere but the store's `backup_key`, or print it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::store::{FileStore, Item, SecureStore, StoreError};
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

/// The `backup_settings` item (`store` module docs).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsItem {
    protection: Protection,
    location: String,
    account_id: String,
    keep: usize,
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

impl BackupSettings {
    /// Reads the settings from the app's store; `Ok(None)` if encrypted
    /// backup is off on this device.
    pub fn load_from(store: &dyn SecureStore) -> Result<Option<Self>, ClientError> {
        let Some(text) = store
            .load(Item::BackupSettings)
            .map_err(ClientError::store(Item::BackupSettings))?
        else {
            return Ok(None);
        };
        let bad = |what: &str| ClientError::Storage {
            item: Item::BackupSettings.name(),
            source: StoreError::new(what.to_owned()),
        };
        let text =
            std::str::from_utf8(&text).map_err(|_| bad("the stored settings are not UTF-8"))?;
        let f: SettingsItem = toml::from_str(text).map_err(|e| ClientError::Storage {
            item: Item::BackupSettings.name(),
            source: StoreError {
                what: "the stored settings do not read".into(),
                source: Some(Box::new(e)),
            },
        })?;
        let k = store
            .load(Item::BackupKey)
            .map_err(ClientError::store(Item::BackupKey))?
            .ok_or_else(|| ClientError::Storage {
                item: Item::BackupKey.name(),
                source: StoreError::new("backup is on but the store has no backup key"),
            })?;
        let k: [u8; 32] = k[..].try_into().map_err(|_| ClientError::Storage {
            item: Item::BackupKey.name(),
            source: StoreError::new("the stored backup key is not 32 bytes"),
        })?;
        Ok(Some(Self {
            protection: f.protection,
            location: f.location,
            account_id: f.account_id,
            keep: f.keep,
            key: BackupKey::from_bytes(k),
        }))
    }

    /// Turns backup on (or updates it) in the app's store: the key first,
    /// then the settings that say "on" (`store` module docs).
    pub fn save_to(&self, store: &dyn SecureStore) -> Result<(), ClientError> {
        store
            .save(Item::BackupKey, self.key.as_bytes())
            .map_err(ClientError::store(Item::BackupKey))?;
        let f = SettingsItem {
            protection: self.protection,
            location: self.location.clone(),
            account_id: self.account_id.clone(),
            keep: self.keep,
        };
        let t = toml::to_string(&f).map_err(|e| ClientError::Config(e.to_string()))?;
        store
            .save(Item::BackupSettings, t.as_bytes())
            .map_err(ClientError::store(Item::BackupSettings))
    }

    /// Turns encrypted backup off in the app's store: the settings first,
    /// then the key.
    pub fn remove_from(store: &dyn SecureStore) -> Result<(), ClientError> {
        store
            .delete(Item::BackupSettings)
            .map_err(ClientError::store(Item::BackupSettings))?;
        store
            .delete(Item::BackupKey)
            .map_err(ClientError::store(Item::BackupKey))
    }

    /// Loads the settings of device folder `dir` ([`FileStore`]).
    pub fn load(dir: &Path) -> Result<Option<Self>, ClientError> {
        Self::load_from(&FileStore::new(dir))
    }

    /// Saves the settings to device folder `dir` (owner-only).
    pub fn save(&self, dir: &Path) -> Result<(), ClientError> {
        self.save_to(&FileStore::new(dir))
    }

    /// Turns encrypted backup off on this device: forgets the key.
    pub fn remove(dir: &Path) -> Result<(), ClientError> {
        Self::remove_from(&FileStore::new(dir))
    }
}

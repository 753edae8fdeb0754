//! The client library for apps, through uniffi: Kotlin (Android), Swift
//! (iOS) and Python bindings of one object, [`BackupClient`], over a store
//! the app implements ([`KeyStore`], backed by the platform keystore).
//!
//! The flows are the phone's: create the device key, take the credential,
//! turn backup on (password in the vault, or a 64-digit key), back up a
//! folder, restore on a new phone, change the password, turn backup off.
//! Every failure is a [`BackupError`] with a stable `code` (the names of
//! `client::ClientErrorCode`) and its data; the app words it.
//!
//! Each call runs on the object's own Tokio runtime and the foreign side
//! awaits its end, so an app needs no Rust runtime of its own.
//!
//! Must never: hand a secret (password, backup key, device key) to
//! anything but the vault's OPAQUE exchange and the app's store, or leave
//! the store saying "on" without a key (`client::store`).

use std::path::PathBuf;
use std::sync::Arc;

use client::store::{Item, SecureStore, StoreError};
use client::{
    backups, BackupKey, BackupSettings, BackupStore, ClientError, ClientProfile, DeviceIdentity,
    GatewayConnection, Protection, Status, VaultClient,
};
use zeroize::Zeroizing;

uniffi::setup_scaffolding!();

/// A failure, as the app translates it.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum BackupError {
    /// What went wrong: `code` is stable (`wrong_password`, `locked_out`,
    /// `paced`, `connect`, ... as `client::ClientErrorCode::as_str`);
    /// `message` is an English description for logs, not for users.
    #[error("{code}: {message}")]
    Failed {
        /// The stable code.
        code: String,
        /// A description for logs.
        message: String,
        /// Guesses left (`wrong_password`).
        attempts_left: Option<u32>,
        /// Milliseconds to wait before trying again (`paced`, `busy`,
        /// `replacement_pending`).
        retry_after_ms: Option<u64>,
    },
}

impl From<ClientError> for BackupError {
    fn from(e: ClientError) -> Self {
        let message = service_kit::report::one_line(&e);
        BackupError::Failed {
            code: e.code().as_str().to_owned(),
            message,
            attempts_left: e.attempts_left(),
            retry_after_ms: e.retry_after().map(millis),
        }
    }
}

impl BackupError {
    fn local(code: client::ClientErrorCode, message: impl Into<String>) -> Self {
        BackupError::Failed {
            code: code.as_str().to_owned(),
            message: message.into(),
            attempts_left: None,
            retry_after_ms: None,
        }
    }
}

/// The app's store failed (raised by the app's [`KeyStore`]).
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum KeyStoreError {
    /// The platform's error, in its words.
    #[error("{reason}")]
    Failed {
        /// What failed.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for KeyStoreError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        KeyStoreError::Failed { reason: e.reason }
    }
}

/// Storage the app implements: a value per item name (`device_key`,
/// `credential`, `backup_key`, `backup_settings`; encodings in
/// `client::store`). `device_key` and `backup_key` are secrets for the
/// platform keystore.
#[uniffi::export(with_foreign)]
pub trait KeyStore: Send + Sync {
    /// The item's value, or none.
    fn load(&self, item: String) -> Result<Option<Vec<u8>>, KeyStoreError>;
    /// Saves the item, replacing an earlier value in one step.
    fn save(&self, item: String, value: Vec<u8>) -> Result<(), KeyStoreError>;
    /// Deletes the item (a missing item is not an error).
    fn delete(&self, item: String) -> Result<(), KeyStoreError>;
}

/// The app's store as the library's [`SecureStore`].
struct Foreign(Arc<dyn KeyStore>);

fn store_err(e: KeyStoreError) -> StoreError {
    StoreError {
        what: "the app's key store failed".into(),
        source: Some(Box::new(e)),
    }
}

impl SecureStore for Foreign {
    fn load(&self, item: Item) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        self.0
            .load(item.name().to_owned())
            .map(|v| v.map(Zeroizing::new))
            .map_err(store_err)
    }

    fn save(&self, item: Item, value: &[u8]) -> Result<(), StoreError> {
        self.0
            .save(item.name().to_owned(), value.to_vec())
            .map_err(store_err)
    }

    fn delete(&self, item: Item) -> Result<(), StoreError> {
        self.0.delete(item.name().to_owned()).map_err(store_err)
    }
}

/// How the backup key of this device is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum KeyProtection {
    /// Deposited in the vault behind a password (the 64-digit key works too).
    Password,
    /// Only the 64-digit key the user wrote down.
    KeyOnly,
}

/// This device's backup settings.
#[derive(Debug, Clone, uniffi::Record)]
pub struct BackupState {
    /// How the key is protected.
    pub protection: KeyProtection,
    /// Where backups go (a folder, `file://` or `s3://` URL).
    pub location: String,
    /// The account the backups belong to.
    pub account_id: String,
    /// Versions kept.
    pub keep: u32,
}

/// One backup in the cloud.
#[derive(Debug, Clone, uniffi::Record)]
pub struct BackupInfo {
    /// Version name.
    pub id: String,
    /// Encrypted size in bytes.
    pub size: u64,
    /// When it was made, in seconds since 1970 (UTC).
    pub created_unix: u64,
}

/// What the vault holds for the account.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum VaultState {
    /// Nothing deposited.
    NotRegistered,
    /// A key is deposited.
    Active {
        /// Guesses left.
        attempts_left: u32,
        /// The guess limit.
        max_attempts: u32,
        /// Milliseconds until a pending replacement (asked by another phone
        /// without the password) may complete; none if there is none.
        replacement_in_ms: Option<u64>,
    },
    /// The guess limit erased the deposit for good.
    LockedOut,
}

/// One device's backup client: the deployment's profile and the app's store.
#[derive(uniffi::Object)]
pub struct BackupClient {
    profile: std::sync::Mutex<ClientProfile>,
    store: Arc<Foreign>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BackupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupClient").finish_non_exhaustive()
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl BackupClient {
    /// Runs `fut` on this client's runtime and awaits it from any executor.
    async fn run<T, F>(&self, fut: F) -> Result<T, BackupError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, BackupError>> + Send + 'static,
    {
        match self.rt.spawn(fut).await {
            Ok(out) => out,
            Err(e) => Err(BackupError::local(
                client::ClientErrorCode::Local,
                format!("the operation stopped: {e}"),
            )),
        }
    }

    fn profile(&self) -> ClientProfile {
        match self.profile.lock() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn device(&self) -> Result<DeviceIdentity, BackupError> {
        Ok(DeviceIdentity::load_from(self.store.as_ref())?.ok_or(ClientError::NoDevice)?)
    }

    fn settings(&self) -> Result<BackupSettings, BackupError> {
        BackupSettings::load_from(self.store.as_ref())?.ok_or_else(|| {
            BackupError::local(
                client::ClientErrorCode::Local,
                "encrypted backup is off on this device",
            )
        })
    }

    fn ensure_off(&self) -> Result<(), BackupError> {
        match BackupSettings::load_from(self.store.as_ref())? {
            None => Ok(()),
            Some(_) => Err(BackupError::local(
                client::ClientErrorCode::Local,
                "encrypted backup is already on for this device",
            )),
        }
    }
}

/// Connects, runs `op` with a vault client, closes.
async fn with_vault<T>(
    profile: ClientProfile,
    device: DeviceIdentity,
    op: impl AsyncFnOnce(&VaultClient<'_, GatewayConnection>) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let conn = GatewayConnection::connect(&profile, &device).await?;
    let out = match VaultClient::new(&conn, &profile) {
        Ok(v) => op(&v).await,
        Err(e) => Err(e),
    };
    conn.close().await;
    out
}

#[uniffi::export]
impl BackupClient {
    /// A client for the deployment of `profile_toml` (the client profile,
    /// SPEC §1.1), keeping its state in `store`.
    #[uniffi::constructor]
    pub fn new(profile_toml: String, store: Arc<dyn KeyStore>) -> Result<Arc<Self>, BackupError> {
        let profile = ClientProfile::from_toml(&profile_toml).map_err(ClientError::from)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bkv-client")
            .enable_all()
            .build()
            .map_err(|e| {
                BackupError::local(
                    client::ClientErrorCode::Local,
                    format!("cannot start the client's runtime: {e}"),
                )
            })?;
        Ok(Arc::new(Self {
            profile: std::sync::Mutex::new(profile),
            store: Arc::new(Foreign(store)),
            rt,
        }))
    }

    /// This device's public key (hex), to have the account service mint a
    /// credential for it; none before [`Self::create_device`].
    pub fn device_public_key(&self) -> Result<Option<String>, BackupError> {
        Ok(DeviceIdentity::load_from(self.store.as_ref())?.map(|d| hex::encode(d.static_public)))
    }

    /// Creates this device's key pair in the store and returns its public
    /// key (hex). Refused if the store has one.
    pub fn create_device(&self) -> Result<String, BackupError> {
        if DeviceIdentity::load_from(self.store.as_ref())?.is_some() {
            return Err(BackupError::local(
                client::ClientErrorCode::Local,
                "this device already has a device key",
            ));
        }
        let d = DeviceIdentity::generate()?;
        d.save_to(self.store.as_ref())?;
        Ok(hex::encode(d.static_public))
    }

    /// Stores the credential the account service minted for this device;
    /// returns the account it names.
    pub fn set_credential(&self, token: String) -> Result<String, BackupError> {
        let mut d = self.device()?;
        d.credential = Some(token.trim().to_owned());
        let account = d.account_hint()?;
        d.save_to(self.store.as_ref())?;
        Ok(account)
    }

    /// This device's backup settings; none while backup is off.
    pub fn backup_state(&self) -> Result<Option<BackupState>, BackupError> {
        Ok(
            BackupSettings::load_from(self.store.as_ref())?.map(|s| BackupState {
                protection: match s.protection {
                    Protection::Password => KeyProtection::Password,
                    Protection::KeyOnly => KeyProtection::KeyOnly,
                },
                location: s.location,
                account_id: s.account_id,
                keep: u32::try_from(s.keep).unwrap_or(u32::MAX),
            }),
        )
    }

    /// Turns backup on with a new key deposited in the vault behind
    /// `password`; backups go to `location`, keeping `keep` versions.
    pub async fn enable_with_password(
        &self,
        password: String,
        location: String,
        keep: u32,
    ) -> Result<(), BackupError> {
        self.ensure_off()?;
        let password = Zeroizing::new(password);
        let device = self.device()?;
        let account_id = device.account_hint()?;
        BackupStore::open(&location, &account_id, keep as usize)?;
        let profile = self.profile();
        let store = self.store.clone();
        self.run(async move {
            let key = BackupKey::generate();
            with_vault(profile, device, async |v| {
                v.register(password.as_bytes(), &key, false).await
            })
            .await?;
            BackupSettings {
                protection: Protection::Password,
                location,
                account_id,
                keep: keep as usize,
                key,
            }
            .save_to(store.as_ref())?;
            Ok(())
        })
        .await
    }

    /// Turns backup on with a new key kept only by the user: returns the
    /// 64-digit key to show once.
    pub fn enable_with_key_only(&self, location: String, keep: u32) -> Result<String, BackupError> {
        self.ensure_off()?;
        let account_id = self.device()?.account_hint()?;
        BackupStore::open(&location, &account_id, keep as usize)?;
        let key = BackupKey::generate();
        let shown = key.to_display();
        BackupSettings {
            protection: Protection::KeyOnly,
            location,
            account_id,
            keep: keep as usize,
            key,
        }
        .save_to(self.store.as_ref())?;
        Ok(shown)
    }

    /// Encrypts and uploads the file or folder at `path` as a new version.
    pub async fn backup_folder(&self, path: String) -> Result<BackupInfo, BackupError> {
        let s = self.settings()?;
        self.run(async move {
            let store = BackupStore::open(&s.location, &s.account_id, s.keep)?;
            let v = backups::backup_path(&store, &s.key, &PathBuf::from(path), &|_| {}).await?;
            Ok(info(&v))
        })
        .await
    }

    /// The backups at this device's location, newest last.
    pub async fn list_backups(&self) -> Result<Vec<BackupInfo>, BackupError> {
        let s = self.settings()?;
        self.run(async move {
            let store = BackupStore::open(&s.location, &s.account_id, s.keep)?;
            Ok(store.list().await?.iter().map(info).collect())
        })
        .await
    }

    /// On a new phone: recovers the key from the vault with `password`,
    /// restores the newest backup at `location` into the new or empty
    /// folder `to`, and turns backup on. Returns the restored path.
    pub async fn restore_with_password(
        &self,
        password: String,
        location: String,
        to: String,
    ) -> Result<String, BackupError> {
        self.ensure_off()?;
        let password = Zeroizing::new(password);
        let device = self.device()?;
        let profile = self.profile();
        let store = self.store.clone();
        self.run(async move {
            let account_id = device.account_hint()?;
            let cloud = BackupStore::open(&location, &account_id, client::cloud::DEFAULT_KEEP)?;
            // No guess is spent when there is nothing to restore.
            cloud
                .latest()
                .await?
                .ok_or_else(|| ClientError::NoBackup(cloud.location().to_owned()))?;
            let key = with_vault(profile, device, async |v| {
                v.recover(password.as_bytes()).await
            })
            .await?;
            restore(
                store,
                cloud,
                key,
                Protection::Password,
                location,
                account_id,
                to,
            )
            .await
        })
        .await
    }

    /// On a new phone: restores the newest backup with the 64-digit key
    /// (no vault needed) and turns backup on.
    pub async fn restore_with_key(
        &self,
        key: String,
        location: String,
        to: String,
    ) -> Result<String, BackupError> {
        self.ensure_off()?;
        let key = BackupKey::parse(&Zeroizing::new(key))?;
        let account_id = self.device()?.account_hint()?;
        let store = self.store.clone();
        self.run(async move {
            let cloud = BackupStore::open(&location, &account_id, client::cloud::DEFAULT_KEEP)?;
            restore(
                store,
                cloud,
                key,
                Protection::KeyOnly,
                location,
                account_id,
                to,
            )
            .await
        })
        .await
    }

    /// What the vault holds for this account.
    pub async fn vault_state(&self) -> Result<VaultState, BackupError> {
        let device = self.device()?;
        let profile = self.profile();
        self.run(async move {
            let st = with_vault(profile, device, async |v| v.status().await).await?;
            Ok(match st {
                Status::NotRegistered => VaultState::NotRegistered,
                Status::LockedOut => VaultState::LockedOut,
                Status::Active {
                    attempts_left,
                    max_attempts,
                    replacement_in,
                } => VaultState::Active {
                    attempts_left,
                    max_attempts,
                    replacement_in_ms: replacement_in.map(millis),
                },
            })
        })
        .await
    }

    /// Changes the vault password (the old one proves it).
    pub async fn change_password(&self, old: String, new: String) -> Result<(), BackupError> {
        let (old, new) = (Zeroizing::new(old), Zeroizing::new(new));
        let device = self.device()?;
        let profile = self.profile();
        self.run(async move {
            with_vault(profile, device, async |v| {
                v.change_password(old.as_bytes(), new.as_bytes()).await
            })
            .await?;
            Ok(())
        })
        .await
    }

    /// Turns backup off: deletes the deposit after proving `password`
    /// (password protection; nothing left in the vault is not an error),
    /// then forgets the key on this device.
    pub async fn disable(&self, password: Option<String>) -> Result<(), BackupError> {
        let s = self.settings()?;
        let device = self.device()?;
        let profile = self.profile();
        let store = self.store.clone();
        self.run(async move {
            if s.protection == Protection::Password {
                let password = Zeroizing::new(password.unwrap_or_default());
                match with_vault(profile, device, async |v| {
                    v.disable(password.as_bytes()).await
                })
                .await
                {
                    Ok(()) | Err(ClientError::NotRegistered | ClientError::LockedOut) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            BackupSettings::remove_from(store.as_ref())?;
            Ok(())
        })
        .await
    }
}

fn info(v: &client::BackupVersion) -> BackupInfo {
    BackupInfo {
        id: v.id.clone(),
        size: v.size,
        created_unix: v
            .created
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

async fn restore(
    store: Arc<Foreign>,
    cloud: BackupStore,
    key: BackupKey,
    protection: Protection,
    location: String,
    account_id: String,
    to: String,
) -> Result<String, BackupError> {
    let r = backups::restore_latest(&cloud, &key, &PathBuf::from(to), &|_| {}).await?;
    BackupSettings {
        protection,
        location,
        account_id,
        keep: client::cloud::DEFAULT_KEEP,
        key,
    }
    .save_to(store.as_ref())?;
    Ok(r.path.to_string_lossy().into_owned())
}

//! Where the library keeps what a device must remember: the app supplies
//! the storage ([`SecureStore`]), the library decides what goes in it and
//! in which encoding. A phone backs the trait with its platform keystore
//! (Android Keystore, iOS Keychain); the CLI uses [`FileStore`], owner-only
//! files in a device folder.
//!
//! The four items and their encodings (stable: an app's store outlives app
//! versions):
//!
//! | item | bytes |
//! | --- | --- |
//! | `device_key` | 64: the X25519 private key, then its public key |
//! | `credential` | the account service's credential, UTF-8 |
//! | `backup_key` | 32: the backup key |
//! | `backup_settings` | TOML: `protection` (`"password"` or `"key-only"`), `location`, `account_id`, `keep` |
//!
//! Turning backup on writes `backup_key` before `backup_settings`, and
//! turning it off deletes them in the other order: the settings' presence
//! is what says "on", so a crash between the two writes leaves backup off
//! (and a stray key that the next `enable` overwrites), never "on" without
//! a key.
//!
//! Must never: log or print an item's value, or keep a secret item outside
//! the store (the library holds them in zeroizing buffers only while it
//! uses them).

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// One thing the library asks the app to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// The device's static Noise key pair (secret).
    DeviceKey,
    /// The credential the account service minted for the device.
    Credential,
    /// The backup key (secret).
    BackupKey,
    /// Backup settings (not secret: protection, location, account, keep).
    BackupSettings,
}

impl Item {
    /// Every item.
    pub const ALL: [Item; 4] = [
        Item::DeviceKey,
        Item::Credential,
        Item::BackupKey,
        Item::BackupSettings,
    ];

    /// The item's stable name, the key an app stores it under.
    pub fn name(self) -> &'static str {
        match self {
            Item::DeviceKey => "device_key",
            Item::Credential => "credential",
            Item::BackupKey => "backup_key",
            Item::BackupSettings => "backup_settings",
        }
    }

    /// Whether the value is a secret (to keep in hardware-backed storage).
    pub fn is_secret(self) -> bool {
        matches!(self, Item::DeviceKey | Item::BackupKey)
    }
}

/// The app's storage failed; its own error is the source.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StoreError {
    /// What failed, in the store's words.
    pub what: String,
    /// The platform's error, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StoreError {
    /// An error with a description only.
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }
}

/// Storage the app implements. Calls are short and may block (a keystore
/// access); the library never calls it while holding a network operation's
/// state that a slow store would stall.
pub trait SecureStore: Send + Sync {
    /// The item's value; `Ok(None)` if it was never saved or was deleted.
    fn load(&self, item: Item) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
    /// Saves the item, replacing any earlier value in one step (a crash
    /// leaves the old value or the new one).
    fn save(&self, item: Item, value: &[u8]) -> Result<(), StoreError>;
    /// Deletes the item; deleting a missing item is not an error.
    fn delete(&self, item: Item) -> Result<(), StoreError>;
}

/// The CLI's store: a device folder with `device.toml` (device key and
/// credential) and `backup.toml` (backup settings and key), owner-only and
/// replaced atomically — the layout device folders have always had.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

/// Fields of each file, by item.
const DEVICE_FILE: &str = crate::device::DEVICE_FILE;
const SETTINGS_FILE: &str = crate::settings::SETTINGS_FILE;
const SETTINGS_FIELDS: [&str; 4] = ["protection", "location", "account_id", "keep"];

impl FileStore {
    /// The store in device folder `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The device folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_of(&self, item: Item) -> PathBuf {
        self.dir.join(match item {
            Item::DeviceKey | Item::Credential => DEVICE_FILE,
            Item::BackupKey | Item::BackupSettings => SETTINGS_FILE,
        })
    }

    fn read_table(&self, p: &Path) -> Result<Option<Zeroizing<String>>, StoreError> {
        match std::fs::read_to_string(p) {
            Ok(t) => Ok(Some(Zeroizing::new(t))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError {
                what: format!("cannot read {}", p.display()),
                source: Some(Box::new(e)),
            }),
        }
    }

    fn parse(p: &Path, text: &str) -> Result<toml::Table, StoreError> {
        toml::from_str(text).map_err(|e| StoreError {
            what: format!("{} is not valid TOML", p.display()),
            source: Some(Box::new(e)),
        })
    }

    fn table(&self, item: Item) -> Result<(PathBuf, toml::Table), StoreError> {
        let p = self.file_of(item);
        let t = match self.read_table(&p)? {
            Some(text) => Self::parse(&p, &text)?,
            None => toml::Table::new(),
        };
        Ok((p, t))
    }

    fn write_table(&self, p: &Path, t: &toml::Table) -> Result<(), StoreError> {
        if t.is_empty() {
            return match std::fs::remove_file(p) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError {
                    what: format!("cannot remove {}", p.display()),
                    source: Some(Box::new(e)),
                }),
            };
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| StoreError {
            what: format!("cannot create the device folder {}", self.dir.display()),
            source: Some(Box::new(e)),
        })?;
        let text = Zeroizing::new(toml::to_string(t).map_err(|e| StoreError {
            what: format!("cannot encode {}", p.display()),
            source: Some(Box::new(e)),
        })?);
        service_kit::files::write_private(p, text.as_bytes(), service_kit::files::Existing::Replace)
            .map_err(|e| StoreError {
                what: format!("cannot write {}", p.display()),
                source: Some(Box::new(e)),
            })
    }

    fn hex_field(p: &Path, t: &toml::Table, field: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match t.get(field) {
            None => Ok(None),
            Some(toml::Value::String(h)) => {
                let h = Zeroizing::new(h.clone());
                hex::decode(h.trim()).map(Some).map_err(|_| {
                    StoreError::new(format!("{} holds a malformed {field}", p.display()))
                })
            }
            Some(_) => Err(StoreError::new(format!(
                "{} holds a malformed {field}",
                p.display()
            ))),
        }
    }
}

impl SecureStore for FileStore {
    fn load(&self, item: Item) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let (p, t) = self.table(item)?;
        let bytes = match item {
            Item::DeviceKey => {
                let private = Self::hex_field(&p, &t, "static_private_hex")?;
                let public = Self::hex_field(&p, &t, "static_public_hex")?;
                match (private, public) {
                    (Some(private), Some(public)) => {
                        let mut v = Zeroizing::new(private);
                        v.extend_from_slice(&public);
                        Some(v)
                    }
                    _ => None,
                }
            }
            Item::Credential => match t.get("credential") {
                Some(toml::Value::String(c)) => Some(Zeroizing::new(c.as_bytes().to_vec())),
                _ => None,
            },
            Item::BackupKey => Self::hex_field(&p, &t, "key_hex")?.map(Zeroizing::new),
            Item::BackupSettings => {
                let mut s = toml::Table::new();
                for f in SETTINGS_FIELDS {
                    if let Some(v) = t.get(f) {
                        s.insert(f.into(), v.clone());
                    }
                }
                match s.is_empty() {
                    true => None,
                    false => Some(Zeroizing::new(
                        toml::to_string(&s)
                            .map_err(|e| StoreError::new(e.to_string()))?
                            .into_bytes(),
                    )),
                }
            }
        };
        Ok(bytes)
    }

    fn save(&self, item: Item, value: &[u8]) -> Result<(), StoreError> {
        let (p, mut t) = self.table(item)?;
        match item {
            Item::DeviceKey => {
                if value.len() != 64 {
                    return Err(StoreError::new("a device key is 64 bytes"));
                }
                t.insert(
                    "static_private_hex".into(),
                    hex::encode(&value[..32]).into(),
                );
                t.insert("static_public_hex".into(), hex::encode(&value[32..]).into());
            }
            Item::Credential => {
                let c = std::str::from_utf8(value)
                    .map_err(|_| StoreError::new("a credential is UTF-8 text"))?;
                t.insert("credential".into(), c.into());
            }
            Item::BackupKey => {
                t.insert("key_hex".into(), hex::encode(value).into());
            }
            Item::BackupSettings => {
                let text = std::str::from_utf8(value)
                    .map_err(|_| StoreError::new("backup settings are UTF-8 TOML"))?;
                let s = Self::parse(&p, text)?;
                for f in SETTINGS_FIELDS {
                    t.remove(f);
                }
                for (k, v) in s {
                    t.insert(k, v);
                }
            }
        }
        self.write_table(&p, &t)
    }

    fn delete(&self, item: Item) -> Result<(), StoreError> {
        let (p, mut t) = self.table(item)?;
        let fields: &[&str] = match item {
            Item::DeviceKey => &["static_private_hex", "static_public_hex"],
            Item::Credential => &["credential"],
            Item::BackupKey => &["key_hex"],
            Item::BackupSettings => &SETTINGS_FIELDS,
        };
        if !fields.iter().any(|f| t.contains_key(*f)) {
            return Ok(());
        }
        for f in fields {
            t.remove(*f);
        }
        self.write_table(&p, &t)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_item_round_trips_through_the_files_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("phone"));
        for item in Item::ALL {
            assert!(store.load(item).unwrap().is_none(), "{item:?}");
            store.delete(item).unwrap();
        }
        let dk: Vec<u8> = (0..64).collect();
        store.save(Item::DeviceKey, &dk).unwrap();
        store.save(Item::Credential, b"v4.public.abc").unwrap();
        store.save(Item::BackupKey, &[7; 32]).unwrap();
        let settings =
            b"protection = \"password\"\nlocation = \"/d\"\naccount_id = \"a\"\nkeep = 3\n";
        store.save(Item::BackupSettings, settings).unwrap();

        // A new store on the same folder (as after a restart) reads them.
        let again = FileStore::new(dir.path().join("phone"));
        assert_eq!(&again.load(Item::DeviceKey).unwrap().unwrap()[..], &dk[..]);
        assert_eq!(
            &again.load(Item::Credential).unwrap().unwrap()[..],
            b"v4.public.abc"
        );
        assert_eq!(&again.load(Item::BackupKey).unwrap().unwrap()[..], &[7; 32]);
        let s: toml::Table = toml::from_str(
            std::str::from_utf8(&again.load(Item::BackupSettings).unwrap().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(s["keep"].as_integer(), Some(3));

        // Deleting the settings keeps the key (and the other file) until it
        // goes too; then backup.toml is gone.
        again.delete(Item::BackupSettings).unwrap();
        assert!(again.load(Item::BackupSettings).unwrap().is_none());
        assert!(again.load(Item::BackupKey).unwrap().is_some());
        again.delete(Item::BackupKey).unwrap();
        assert!(!dir.path().join("phone").join(SETTINGS_FILE).exists());
        assert!(again.load(Item::Credential).unwrap().is_some());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        service_kit::files::write_private(
            &dir.path().join(DEVICE_FILE),
            b"static_private_hex = \"zz\"\nstatic_public_hex = \"00\"\n",
            service_kit::files::Existing::Replace,
        )
        .unwrap();
        assert!(store.load(Item::DeviceKey).is_err());
        service_kit::files::write_private(
            &dir.path().join(SETTINGS_FILE),
            b"not toml [",
            service_kit::files::Existing::Replace,
        )
        .unwrap();
        assert!(store.load(Item::BackupSettings).is_err());
        assert!(store.save(Item::BackupKey, &[1; 32]).is_err());
    }
}

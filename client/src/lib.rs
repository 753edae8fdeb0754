//! The library a phone embeds for end-to-end encrypted backups: backup keys
//! ([`BackupKey`]), the authenticated gateway connection
//! ([`GatewayConnection`]), the vault operations ([`VaultClient`]), the
//! encrypted backup stream ([`backup_stream`]), the untrusted cloud store
//! ([`BackupStore`]) and whole-folder backup and restore ([`backups`]).
//!
//! No terminal assumptions: every operation is an async function returning a
//! typed [`ClientError`] whose message says what went wrong and what to do.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::ClientError> {
//! use client::{BackupKey, ClientProfile, DeviceIdentity, GatewayConnection, VaultClient};
//! let profile = client::profile::load("client-profile.toml".as_ref())?;
//! let device = DeviceIdentity::load("my-phone".as_ref())?;
//! let conn = GatewayConnection::connect(&profile, &device).await?;
//! let vault = VaultClient::new(&conn, &profile)?;
//! let key = BackupKey::generate();
//! vault.register(b"correct horse", &key, false).await?;
//! let again = vault.recover(b"correct horse").await?;
//! assert_eq!(key, again);
//! # Ok(()) }
//! ```
//!
//! Backing up a folder and restoring it on a new phone:
//!
//! ```no_run
//! # async fn demo(key: client::BackupKey) -> Result<(), client::ClientError> {
//! use client::{backups, BackupStore};
//! // A folder standing in for the user's cloud drive, or "s3://bucket/prefix".
//! let store = BackupStore::open("/sdcard/drive", "alice", 3)?;
//! let v = backups::backup_path(&store, &key, "chats".as_ref(), &|bytes| {
//!     println!("{bytes} bytes encrypted");
//! })
//! .await?;
//! println!("uploaded version {} ({} bytes)", v.id, v.size);
//! // On the new phone, with the key from the vault or the 64-digit key:
//! match backups::restore_latest(&store, &key, "restored".as_ref(), &|_| {}).await {
//!     Ok(r) => println!("restored into {}", r.path.display()),
//!     Err(client::ClientError::Backup(client::FormatError::WrongKey)) => {
//!         println!("that key does not open this backup")
//!     }
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

pub mod archive;
pub mod backup_key;
pub mod backup_stream;
pub mod backups;
pub mod cloud;
pub mod connection;
pub mod device;
pub mod error;
pub mod profile;
pub mod settings;
pub mod store;
pub mod vault;

pub use backup_key::BackupKey;
pub use cloud::{BackupStore, BackupVersion};
pub use connection::GatewayConnection;
pub use device::DeviceIdentity;
pub use error::{ClientError, ClientErrorCode};
pub use profile::ClientProfile;
pub use protocol_spec::backup_format::FormatError;
pub use protocol_spec::classify::wait_in_words;
pub use settings::{BackupSettings, Protection};
pub use store::{FileStore, Item, SecureStore, StoreError};
pub use vault::{Exchange, Status, VaultClient};

//! The library a phone embeds to use encrypted backups with the Backup Key
//! Vault: backup keys ([`BackupKey`]), the authenticated gateway connection
//! ([`GatewayConnection`]) and the vault operations ([`VaultClient`]).
//!
//! No terminal assumptions: every operation is an async function returning a
//! typed [`ClientError`] whose message says what went wrong and what to do.
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::ClientError> {
//! use client::{BackupKey, ClientProfile, DeviceIdentity, GatewayConnection, VaultClient};
//! let profile = ClientProfile::load("client-profile.toml".as_ref())?;
//! let device = DeviceIdentity::load("my-phone".as_ref())?;
//! let conn = GatewayConnection::connect(&profile, &device).await?;
//! let vault = VaultClient::new(&conn, &profile)?;
//! let key = BackupKey::generate();
//! vault.register(b"correct horse", &key, false).await?;
//! let again = vault.recover(b"correct horse").await?;
//! assert_eq!(key, again);
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
pub mod vault;

pub use backup_key::BackupKey;
pub use cloud::{BackupStore, BackupVersion};
pub use connection::GatewayConnection;
pub use device::DeviceIdentity;
pub use error::ClientError;
pub use profile::ClientProfile;
pub use protocol_spec::backup_format::FormatError;
pub use settings::{BackupSettings, Protection};
pub use vault::{Status, VaultClient};

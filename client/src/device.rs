//! A device's identity: its static Noise key pair (the device identity the
//! gateway authenticates) and the credential the account service minted for it.

use std::path::Path;

use zeroize::Zeroizing;

use crate::store::{FileStore, Item, SecureStore, StoreError};
use crate::ClientError;

/// File inside a device folder.
pub const DEVICE_FILE: &str = "device.toml";

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
        let token = self
            .credential
            .as_deref()
            .ok_or(ClientError::NoCredential)?;
        protocol_spec::credential::unverified_account(token)
            .map_err(|e| ClientError::Config(format!("the device credential is unreadable: {e}")))
    }

    /// Reads the device from the app's store: `Ok(None)` if it has no
    /// device key yet.
    pub fn load_from(store: &dyn SecureStore) -> Result<Option<Self>, ClientError> {
        let Some(k) = store
            .load(Item::DeviceKey)
            .map_err(ClientError::store(Item::DeviceKey))?
        else {
            return Ok(None);
        };
        if k.len() != 64 {
            return Err(ClientError::Storage {
                item: Item::DeviceKey.name(),
                source: StoreError::new("the stored device key is not 64 bytes"),
            });
        }
        let mut private = Zeroizing::new([0u8; 32]);
        private.copy_from_slice(&k[..32]);
        let mut public = [0u8; 32];
        public.copy_from_slice(&k[32..]);
        let credential = match store
            .load(Item::Credential)
            .map_err(ClientError::store(Item::Credential))?
        {
            None => None,
            Some(c) => Some(
                String::from_utf8(c.to_vec()).map_err(|_| ClientError::Storage {
                    item: Item::Credential.name(),
                    source: StoreError::new("the stored credential is not UTF-8"),
                })?,
            ),
        };
        Ok(Some(Self {
            static_private: private,
            static_public: public,
            credential,
        }))
    }

    /// Writes the device key and credential to the app's store.
    pub fn save_to(&self, store: &dyn SecureStore) -> Result<(), ClientError> {
        let mut k = Zeroizing::new(Vec::with_capacity(64));
        k.extend_from_slice(self.static_private.as_ref());
        k.extend_from_slice(&self.static_public);
        store
            .save(Item::DeviceKey, &k)
            .map_err(ClientError::store(Item::DeviceKey))?;
        match &self.credential {
            Some(c) => store.save(Item::Credential, c.as_bytes()),
            None => store.delete(Item::Credential),
        }
        .map_err(ClientError::store(Item::Credential))
    }

    /// Loads the device of folder `dir` (`device.toml`, [`FileStore`]).
    pub fn load(dir: &Path) -> Result<Self, ClientError> {
        Self::load_from(&FileStore::new(dir))?.ok_or(ClientError::NoDevice)
    }

    /// Saves to `dir/device.toml` (owner-only, [`FileStore`]).
    pub fn save(&self, dir: &Path) -> Result<(), ClientError> {
        self.save_to(&FileStore::new(dir))
    }
}

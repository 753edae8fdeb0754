//! The fleet's long-term secrets: the OPAQUE `ServerSetup` (OPRF seed and the
//! server key pair whose public half clients pin) and the record-sealing key.
//!
//! Generated once by `vault-backend init-cluster`, stored owner-only (0600)
//! and sealed by a key-protection backend ([`crate::keyprotect`]): the file
//! on disk is useless without the backend's key. Must never be logged, sent
//! anywhere, or written unsealed; only the public key and fleet id leave.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use opaque_ke::ServerSetup;
use protocol_spec::opaque_profile::Suite;
use rand::{rngs::OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keyprotect::KeyProtector;
use crate::VaultError;
use service_kit::files::{write_private, Existing};

/// File name of the secrets inside the state folder.
pub const SECRETS_FILE: &str = "fleet-secrets.sealed";

/// Binds sealed secrets to their purpose.
const SEAL_AAD: &[u8] = b"bkv fleet secrets v1";

#[derive(Serialize, Deserialize)]
struct SealedFile {
    /// Which backend sealed it (for humans; not trusted).
    sealed_by: String,
    sealed_hex: String,
}

#[derive(Serialize, Deserialize)]
struct SecretsFile {
    fleet_id: String,
    server_setup_hex: String,
    sealing_key_hex: String,
}

/// Loaded fleet secrets.
pub struct FleetSecrets {
    /// Fleet id (OPAQUE server identity).
    pub fleet_id: String,
    /// OPAQUE server setup.
    pub server_setup: ServerSetup<Suite>,
    sealing_key: Zeroizing<[u8; 32]>,
    ticket_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for FleetSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSecrets")
            .field("fleet_id", &self.fleet_id)
            .finish_non_exhaustive()
    }
}

impl FleetSecrets {
    /// Fresh secrets for a new fleet.
    pub fn generate(fleet_id: &str) -> Self {
        let server_setup = ServerSetup::<Suite>::new(&mut OsRng);
        let mut k = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(k.as_mut());
        Self::from_parts(fleet_id.to_owned(), server_setup, k)
    }

    fn from_parts(
        fleet_id: String,
        server_setup: ServerSetup<Suite>,
        sealing_key: Zeroizing<[u8; 32]>,
    ) -> Self {
        let mut ticket_key = Zeroizing::new([0u8; 32]);
        let _ = Hkdf::<Sha256>::new(None, sealing_key.as_ref())
            .expand(b"bkv vault registration tickets", ticket_key.as_mut());
        Self {
            fleet_id,
            server_setup,
            sealing_key,
            ticket_key,
        }
    }

    /// The fleet public key clients pin (32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.server_setup.keypair().public().serialize().to_vec()
    }

    /// Key for registration-ticket MACs.
    pub fn ticket_key(&self) -> &[u8; 32] {
        &self.ticket_key
    }

    /// Writes the secrets sealed by `protector`, owner-only; refuses to
    /// overwrite.
    pub fn save(&self, path: &Path, protector: &dyn KeyProtector) -> Result<(), VaultError> {
        let file = SecretsFile {
            fleet_id: self.fleet_id.clone(),
            server_setup_hex: hex::encode(self.server_setup.serialize()),
            sealing_key_hex: hex::encode(self.sealing_key.as_ref()),
        };
        let text = Zeroizing::new(
            toml::to_string(&file)
                .map_err(VaultError::internal_from("encoding the fleet secrets"))?,
        );
        let sealed = protector
            .seal(text.as_bytes(), SEAL_AAD)
            .map_err(VaultError::internal_from("sealing the fleet secrets"))?;
        let out = toml::to_string(&SealedFile {
            sealed_by: protector.describe(),
            sealed_hex: hex::encode(sealed),
        })
        .map_err(VaultError::internal_from(
            "encoding the sealed secrets file",
        ))?;
        write_private(path, out.as_bytes(), Existing::Refuse)?;
        Ok(())
    }

    /// Loads secrets written by [`save`](Self::save), unsealing them with
    /// `protector`.
    pub fn load(path: &Path, protector: &dyn KeyProtector) -> Result<Self, VaultError> {
        let outer = std::fs::read_to_string(path).map_err(VaultError::internal_from(format!(
            "cannot read fleet secrets {} (run `vault-backend init-cluster` first)",
            path.display()
        )))?;
        let sealed: SealedFile =
            toml::from_str(&outer).map_err(VaultError::internal_from("bad sealed secrets file"))?;
        let bytes = hex::decode(&sealed.sealed_hex)
            .map_err(VaultError::internal_from("bad sealed secrets file"))?;
        let plain = protector
            .unseal(&bytes, SEAL_AAD)
            .map_err(VaultError::internal_from(format!(
                "cannot unseal {} (sealed by {})",
                path.display(),
                sealed.sealed_by
            )))?;
        let text = Zeroizing::new(
            String::from_utf8(plain.to_vec())
                .map_err(VaultError::internal_from("unsealed secrets are not text"))?,
        );
        let f: SecretsFile =
            toml::from_str(&text).map_err(VaultError::internal_from("bad secrets file"))?;
        let setup_bytes = Zeroizing::new(
            hex::decode(&f.server_setup_hex)
                .map_err(VaultError::internal_from("bad server setup"))?,
        );
        let server_setup = ServerSetup::<Suite>::deserialize(&setup_bytes)
            .map_err(VaultError::internal_from("bad server setup"))?;
        let key_bytes = Zeroizing::new(
            hex::decode(&f.sealing_key_hex)
                .map_err(VaultError::internal_from("bad sealing key"))?,
        );
        let mut k = Zeroizing::new([0u8; 32]);
        if key_bytes.len() != 32 {
            return Err(VaultError::internal("sealing key must be 32 bytes"));
        }
        k.copy_from_slice(&key_bytes);
        Ok(Self::from_parts(f.fleet_id, server_setup, k))
    }

    /// Seals a record: `nonce(12) || ChaCha20-Poly1305(record)`, bound to the
    /// account and registration.
    pub fn seal(
        &self,
        account_id: &str,
        registration_id: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let aad = record_aad(&self.fleet_id, account_id, registration_id);
        let ct = ChaCha20Poly1305::new(Key::from_slice(self.sealing_key.as_ref()))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| VaultError::internal("sealing a record failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a sealed record.
    pub fn open(
        &self,
        account_id: &str,
        registration_id: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if sealed.len() < 12 + 16 {
            return Err(VaultError::internal("sealed record too short"));
        }
        let aad = record_aad(&self.fleet_id, account_id, registration_id);
        ChaCha20Poly1305::new(Key::from_slice(self.sealing_key.as_ref()))
            .decrypt(
                Nonce::from_slice(&sealed[..12]),
                Payload {
                    msg: &sealed[12..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::internal("sealed record does not open with this fleet's key"))
    }
}

fn record_aad(fleet_id: &str, account_id: &str, registration_id: &[u8]) -> Vec<u8> {
    protocol_spec::opaque_profile::credential_identifier(fleet_id, account_id, registration_id)
}

//! Key-protection backends: what seals the fleet secrets (OPAQUE server
//! setup, record-sealing key) at rest. [`KeyProtector`] is the seam; two
//! backends sit behind it:
//!
//! - **software**: a random 256-bit key-encryption key in a file (0600) next
//!   to the sealed secrets; ChaCha20-Poly1305. The embedded default.
//! - **pkcs11**: an AES-256 key generated inside a PKCS#11 token (an HSM;
//!   SoftHSM2 in tests), marked sensitive and non-extractable, used through
//!   `cryptoki` for AES-GCM. The sealed file is useless without the token
//!   and its PIN.
//!
//! Must never: write an unsealed secret to disk, log a PIN or key, or let a
//! generated token key be extractable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand::{rngs::OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Why sealing or unsealing failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyProtectError {
    /// The backend is misconfigured or its key is missing.
    #[error("key protection: {0}")]
    Config(String),
    /// The sealed data does not open with this backend's key.
    #[error("the sealed secrets do not open with this key ({0}); wrong key file or token?")]
    Unseal(String),
    /// The PKCS#11 module or token failed.
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
}

/// Seals and unseals small secrets under a key it protects.
pub trait KeyProtector: Send + Sync {
    /// Encrypts `plain`, authenticating `aad`.
    fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyProtectError>;
    /// Decrypts what [`KeyProtector::seal`] produced.
    fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyProtectError>;
    /// A short description for logs and errors (no secrets).
    fn describe(&self) -> String;
}

/// Which backend protects a replica's secrets (the `[key_protection]`
/// section of its config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyProtection {
    /// A key file next to the secrets.
    Software {
        /// Key file, relative to the state folder. Default `master.key`.
        #[serde(default = "default_key_file")]
        key_file: PathBuf,
    },
    /// A key inside a PKCS#11 token.
    Pkcs11 {
        /// The PKCS#11 module (shared library).
        module: PathBuf,
        /// Label of the token holding the key.
        token_label: String,
        /// Label of the AES key object. Default `bkv-fleet-kek`.
        #[serde(default = "default_key_label")]
        key_label: String,
        /// Environment variable holding the user PIN. Default `BKV_PKCS11_PIN`.
        #[serde(default = "default_pin_env")]
        pin_env: String,
    },
}

fn default_key_file() -> PathBuf {
    PathBuf::from("master.key")
}
fn default_key_label() -> String {
    "bkv-fleet-kek".into()
}
fn default_pin_env() -> String {
    "BKV_PKCS11_PIN".into()
}

impl Default for KeyProtection {
    fn default() -> Self {
        KeyProtection::Software {
            key_file: default_key_file(),
        }
    }
}

impl KeyProtection {
    /// Opens the backend for the replica in `state_dir`. With `create`, a
    /// missing key is generated (a new key file, or a new key in the token);
    /// without it, a missing key is an error.
    pub fn open(
        &self,
        state_dir: &Path,
        create: bool,
    ) -> Result<Box<dyn KeyProtector>, KeyProtectError> {
        match self {
            KeyProtection::Software { key_file } => {
                let path = state_dir.join(key_file);
                Ok(Box::new(SoftwareKey::open(&path, create)?))
            }
            KeyProtection::Pkcs11 {
                module,
                token_label,
                key_label,
                pin_env,
            } => {
                let pin = std::env::var(pin_env).map_err(|_| {
                    KeyProtectError::Config(format!(
                        "set {pin_env} to the user PIN of token `{token_label}`"
                    ))
                })?;
                Ok(Box::new(Pkcs11Key::open(
                    module,
                    token_label,
                    key_label,
                    Zeroizing::new(pin),
                    create,
                )?))
            }
        }
    }
}

/// The software backend.
pub struct SoftwareKey {
    key: Zeroizing<[u8; 32]>,
    path: PathBuf,
}

impl SoftwareKey {
    /// Reads the key file, or creates it (0600) when `create` and missing.
    pub fn open(path: &Path, create: bool) -> Result<Self, KeyProtectError> {
        let mut key = Zeroizing::new([0u8; 32]);
        match std::fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                if bytes.len() != 32 {
                    return Err(KeyProtectError::Config(format!(
                        "{} must hold exactly 32 bytes",
                        path.display()
                    )));
                }
                key.copy_from_slice(&bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                OsRng.fill_bytes(key.as_mut());
                crate::secrets::write_private(path, key.as_ref())
                    .map_err(|e| KeyProtectError::Config(e.to_string()))?;
            }
            Err(e) => {
                return Err(KeyProtectError::Config(format!(
                    "cannot read the key file {}: {e}",
                    path.display()
                )))
            }
        }
        Ok(Self {
            key,
            path: path.to_path_buf(),
        })
    }
}

impl KeyProtector for SoftwareKey {
    fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyProtectError> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ct = ChaCha20Poly1305::new(Key::from_slice(self.key.as_ref()))
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| KeyProtectError::Config("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyProtectError> {
        if sealed.len() < 12 + 16 {
            return Err(KeyProtectError::Unseal("too short".into()));
        }
        ChaCha20Poly1305::new(Key::from_slice(self.key.as_ref()))
            .decrypt(
                Nonce::from_slice(&sealed[..12]),
                Payload {
                    msg: &sealed[12..],
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KeyProtectError::Unseal(self.describe()))
    }

    fn describe(&self) -> String {
        format!("software key file {}", self.path.display())
    }
}

/// The PKCS#11 backend: an AES-256-GCM key that never leaves the token.
pub struct Pkcs11Key {
    ctx: Pkcs11,
    slot: cryptoki::slot::Slot,
    pin: AuthPin,
    token_label: String,
    key_label: String,
}

fn p11(e: cryptoki::error::Error) -> KeyProtectError {
    KeyProtectError::Pkcs11(e.to_string())
}

/// One initialized context per module per process: PKCS#11 libraries are
/// initialized once (a second `C_Initialize` fails), and every replica or
/// tool in the process shares it.
fn context(module: &Path) -> Result<Pkcs11, KeyProtectError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| KeyProtectError::Pkcs11("context lock poisoned".into()))?;
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        KeyProtectError::Pkcs11(format!(
            "cannot load the PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(p11)?;
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

impl Pkcs11Key {
    /// Loads `module`, finds the token labelled `token_label`, logs in, and
    /// finds (or with `create`, generates) the key labelled `key_label`.
    pub fn open(
        module: &Path,
        token_label: &str,
        key_label: &str,
        pin: Zeroizing<String>,
        create: bool,
    ) -> Result<Self, KeyProtectError> {
        let ctx = context(module)?;
        let mut slot = None;
        for s in ctx.get_slots_with_token().map_err(p11)? {
            if ctx.get_token_info(s).map_err(p11)?.label() == token_label {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            KeyProtectError::Config(format!(
                "no PKCS#11 token labelled `{token_label}` in {}; is the token present?",
                module.display()
            ))
        })?;
        let me = Self {
            ctx,
            slot,
            pin: AuthPin::new(pin.as_str().into()),
            token_label: token_label.to_owned(),
            key_label: key_label.to_owned(),
        };
        let session = me.session()?;
        if me.find_key(&session)?.is_none() {
            if !create {
                return Err(KeyProtectError::Config(format!(
                    "token `{token_label}` has no key labelled `{key_label}`"
                )));
            }
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(key_label.as_bytes().to_vec()),
            ];
            session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(p11)?;
        }
        Ok(me)
    }

    fn session(&self) -> Result<Session, KeyProtectError> {
        let session = self.ctx.open_rw_session(self.slot).map_err(p11)?;
        session
            .login(UserType::User, Some(&self.pin))
            .map_err(|e| {
                KeyProtectError::Pkcs11(format!(
                    "login to token `{}` failed ({e}); check the PIN",
                    self.token_label
                ))
            })?;
        Ok(session)
    }

    fn find_key(&self, session: &Session) -> Result<Option<ObjectHandle>, KeyProtectError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(self.key_label.as_bytes().to_vec()),
            ])
            .map_err(p11)?;
        Ok(found.into_iter().next())
    }

    fn key(&self, session: &Session) -> Result<ObjectHandle, KeyProtectError> {
        self.find_key(session)?.ok_or_else(|| {
            KeyProtectError::Config(format!(
                "token `{}` has no key labelled `{}`",
                self.token_label, self.key_label
            ))
        })
    }
}

impl KeyProtector for Pkcs11Key {
    fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyProtectError> {
        let session = self.session()?;
        let key = self.key(&session)?;
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let mut iv_param = iv;
        let mech = Mechanism::AesGcm(GcmParams::new(&mut iv_param, aad, 128.into()).map_err(p11)?);
        let ct = session.encrypt(&mech, key, plain).map_err(p11)?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyProtectError> {
        if sealed.len() < 12 + 16 {
            return Err(KeyProtectError::Unseal("too short".into()));
        }
        let session = self.session()?;
        let key = self.key(&session)?;
        let mut iv = [0u8; 12];
        iv.copy_from_slice(&sealed[..12]);
        let mech = Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into()).map_err(p11)?);
        session
            .decrypt(&mech, key, &sealed[12..])
            .map(Zeroizing::new)
            .map_err(|e| KeyProtectError::Unseal(format!("{}: {e}", self.describe())))
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 key `{}` on token `{}`",
            self.key_label, self.token_label
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_key_seals_and_refuses_another_key_or_context() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = KeyProtection::default();
        let a = p.open(dir.path(), true).unwrap_or_else(|e| panic!("{e}"));
        let sealed = a
            .seal(b"fleet secrets", b"ctx")
            .unwrap_or_else(|e| panic!("{e}"));
        let again = p.open(dir.path(), false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.unseal(&sealed, b"ctx").map(|v| v.to_vec()).ok(),
            Some(b"fleet secrets".to_vec())
        );
        assert!(again.unseal(&sealed, b"other").is_err());
        let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let b = p.open(other.path(), true).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            b.unseal(&sealed, b"ctx"),
            Err(KeyProtectError::Unseal(_))
        ));
        // Without `create`, a missing key file is an error, not a new key.
        let empty = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(p.open(empty.path(), false).is_err());
    }
}

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

/// A small record kept behind the key-protection seam, where the host
/// cannot roll it back together with the data folder: the freshness anchor
/// of `raft::freshness` (DESIGN.md invariant 11). In a PKCS#11 token it is
/// a token data object; in the software backend, a file in the key folder
/// (which only helps if that folder is kept apart from the data folder, so
/// that restoring one does not restore the other).
pub trait AnchorStore: Send + Sync {
    /// The record, if one was ever written.
    fn read(&self) -> Result<Option<Vec<u8>>, KeyProtectError>;
    /// Replaces the record, durably, before returning.
    fn write(&self, value: &[u8]) -> Result<(), KeyProtectError>;
    /// Where it is kept (for logs and errors).
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
        /// Label of the token holding the key (and the replica's freshness
        /// anchor, a data object labelled `bkv-freshness-<cluster id>-<replica
        /// id>`). Give each replica its own token, as each host has its own
        /// HSM: `init-cluster` replaces `{id}` with the replica id.
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

/// The user PIN of `token_label`, from the environment variable `pin_env`.
fn token_pin(pin_env: &str, token_label: &str) -> Result<Zeroizing<String>, KeyProtectError> {
    std::env::var(pin_env).map(Zeroizing::new).map_err(|_| {
        KeyProtectError::Config(format!(
            "set {pin_env} to the user PIN of token `{token_label}`"
        ))
    })
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
                let pin = token_pin(pin_env, token_label)?;
                Ok(Box::new(Pkcs11Key::open(
                    module,
                    token_label,
                    key_label,
                    pin,
                    create,
                )?))
            }
        }
    }
}

impl KeyProtection {
    /// This backend as replica `id` uses it: `{id}` in a PKCS#11 token label
    /// becomes the replica id, so that each replica gets its own token (as
    /// each host has its own HSM) from one setting.
    pub fn for_replica(&self, id: u64) -> Self {
        match self {
            KeyProtection::Pkcs11 {
                module,
                token_label,
                key_label,
                pin_env,
            } => KeyProtection::Pkcs11 {
                module: module.clone(),
                token_label: token_label.replace("{id}", &id.to_string()),
                key_label: key_label.clone(),
                pin_env: pin_env.clone(),
            },
            other => other.clone(),
        }
    }

    /// Opens the anchor record `name` (one per replica) of this backend.
    pub fn open_anchor(
        &self,
        state_dir: &Path,
        name: &str,
    ) -> Result<Box<dyn AnchorStore>, KeyProtectError> {
        match self {
            KeyProtection::Software { key_file } => {
                let key = state_dir.join(key_file);
                let dir = key.parent().unwrap_or(state_dir);
                Ok(Box::new(AnchorFile::new(
                    dir.join(format!("{name}.anchor")),
                )))
            }
            KeyProtection::Pkcs11 {
                module,
                token_label,
                pin_env,
                ..
            } => {
                let pin = token_pin(pin_env, token_label)?;
                Ok(Box::new(Pkcs11Anchor::open(
                    module,
                    token_label,
                    name,
                    pin,
                )?))
            }
        }
    }
}

/// The software anchor: a file of two fixed slots, written in turn, each
/// `[seq u64][len u16][check 8 bytes][record]` with `check` the first 8
/// bytes of SHA-256 over the rest. An update overwrites the older slot in
/// place and fdatasyncs once (measured: the first version, which replaced
/// the file by rename, cost three fsyncs per update and halved committed
/// writes per second; BENCHMARKS.md); a write torn by a crash fails its
/// check, and the other slot, one update older, is read instead.
struct AnchorFile {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

/// Bytes of one slot of the anchor file (a sealed record is ~90).
const ANCHOR_SLOT: usize = 512;

impl AnchorFile {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    fn io(&self, e: std::io::Error) -> KeyProtectError {
        KeyProtectError::Config(format!("anchor file {}: {e}", self.path.display()))
    }

    /// The valid slots: (seq, record).
    fn slots(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        use sha2::Digest;
        bytes
            .chunks(ANCHOR_SLOT)
            .filter_map(|slot| {
                let (seq, rest) = slot.split_first_chunk::<8>()?;
                let (len, rest) = rest.split_first_chunk::<2>()?;
                let (check, rest) = rest.split_first_chunk::<8>()?;
                let rec = rest.get(..usize::from(u16::from_be_bytes(*len)))?;
                let mut h = sha2::Sha256::new();
                h.update(seq);
                h.update(len);
                h.update(rec);
                let sum: [u8; 32] = h.finalize().into();
                (sum[..8] == check[..]).then(|| (u64::from_be_bytes(*seq), rec.to_vec()))
            })
            .collect()
    }
}

impl AnchorStore for AnchorFile {
    fn read(&self) -> Result<Option<Vec<u8>>, KeyProtectError> {
        match std::fs::read(&self.path) {
            // A file without one valid slot is damage, not "no anchor":
            // treating it as absent would let the host reset the anchor.
            Ok(b) => match Self::slots(&b).into_iter().max_by_key(|(seq, _)| *seq) {
                Some((_, rec)) => Ok(Some(rec)),
                None => Err(KeyProtectError::Config(format!(
                    "anchor file {} holds no valid record",
                    self.path.display()
                ))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(e)),
        }
    }

    fn write(&self, value: &[u8]) -> Result<(), KeyProtectError> {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let len = u16::try_from(value.len())
            .ok()
            .filter(|l| usize::from(*l) <= ANCHOR_SLOT - 18)
            .ok_or_else(|| KeyProtectError::Config("anchor record too large".into()))?;
        let mut guard = self
            .file
            .lock()
            .map_err(|_| KeyProtectError::Config("anchor file lock poisoned".into()))?;
        let next = match std::fs::read(&self.path) {
            Ok(b) => Self::slots(&b)
                .iter()
                .map(|(s, _)| s + 1)
                .max()
                .unwrap_or(1),
            Err(_) => 1,
        };
        if guard.is_none() {
            let mut opts = std::fs::OpenOptions::new();
            opts.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let f = opts.open(&self.path).map_err(|e| self.io(e))?;
            // A new file: make its entry in the folder durable too.
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| self.io(e))?;
            }
            *guard = Some(f);
        }
        let Some(f) = guard.as_ref() else {
            return Err(KeyProtectError::Config("anchor file not open".into()));
        };
        let mut slot = vec![0u8; ANCHOR_SLOT];
        slot[..8].copy_from_slice(&next.to_be_bytes());
        slot[8..10].copy_from_slice(&len.to_be_bytes());
        let mut h = sha2::Sha256::new();
        h.update(next.to_be_bytes());
        h.update(len.to_be_bytes());
        h.update(value);
        let sum: [u8; 32] = h.finalize().into();
        slot[10..18].copy_from_slice(&sum[..8]);
        slot[18..18 + value.len()].copy_from_slice(value);
        let offset = (next % 2) * ANCHOR_SLOT as u64;
        f.write_all_at(&slot, offset).map_err(|e| self.io(e))?;
        f.sync_data().map_err(|e| self.io(e))
    }

    fn describe(&self) -> String {
        format!("anchor file {}", self.path.display())
    }
}

/// The PKCS#11 anchor: private token data objects labelled with the
/// anchor's name, each value an 8-byte sequence number and the record.
/// SoftHSM2 (like the standard's default for data objects it chooses) does
/// not let `CKA_VALUE` be changed, so an update creates the next object and
/// then destroys the older ones; a crash between the two leaves both, and
/// the highest sequence number wins.
struct Pkcs11Anchor {
    /// One logged-in session, kept: opening and logging in per update
    /// would cost more than the update.
    session: Mutex<Session>,
    token_label: String,
    label: String,
}

impl Pkcs11Anchor {
    fn open(
        module: &Path,
        token_label: &str,
        label: &str,
        pin: Zeroizing<String>,
    ) -> Result<Self, KeyProtectError> {
        let ctx = context(module)?;
        let slot = find_slot(&ctx, module, token_label)?;
        let session = ctx.open_rw_session(slot).map_err(p11)?;
        login(&session, &AuthPin::new(pin.as_str().into()), token_label)?;
        Ok(Self {
            session: Mutex::new(session),
            token_label: token_label.to_owned(),
            label: label.to_owned(),
        })
    }

    /// Every object of this anchor with its sequence number and record.
    fn objects(
        &self,
        session: &Session,
    ) -> Result<Vec<(ObjectHandle, u64, Vec<u8>)>, KeyProtectError> {
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(self.label.as_bytes().to_vec()),
            ])
            .map_err(p11)?;
        let mut out = Vec::new();
        for o in found {
            let attrs = session
                .get_attributes(o, &[cryptoki::object::AttributeType::Value])
                .map_err(p11)?;
            for a in attrs {
                if let Attribute::Value(v) = a {
                    if v.len() >= 8 {
                        let (seq, rec) = v.split_at(8);
                        let mut n = [0u8; 8];
                        n.copy_from_slice(seq);
                        out.push((o, u64::from_be_bytes(n), rec.to_vec()));
                    }
                }
            }
        }
        out.sort_by_key(|(_, seq, _)| *seq);
        Ok(out)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Session>, KeyProtectError> {
        self.session
            .lock()
            .map_err(|_| KeyProtectError::Pkcs11("anchor session lock poisoned".into()))
    }
}

impl AnchorStore for Pkcs11Anchor {
    fn read(&self) -> Result<Option<Vec<u8>>, KeyProtectError> {
        let session = self.lock()?;
        Ok(self.objects(&session)?.pop().map(|(_, _, rec)| rec))
    }

    fn write(&self, value: &[u8]) -> Result<(), KeyProtectError> {
        let session = self.lock()?;
        let old = self.objects(&session)?;
        let seq = old.last().map(|(_, s, _)| s + 1).unwrap_or(1);
        let mut v = seq.to_be_bytes().to_vec();
        v.extend_from_slice(value);
        session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(self.label.as_bytes().to_vec()),
                Attribute::Application(b"bkv freshness anchor".to_vec()),
                Attribute::Value(v),
            ])
            .map_err(p11)?;
        for (o, _, _) in old {
            session.destroy_object(o).map_err(p11)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 data object `{}` on token `{}`",
            self.label, self.token_label
        )
    }
}

/// Logs the user in. The login state belongs to the application, not the
/// session: while another session of this process is logged in (the
/// anchor keeps one), a new session already is.
fn login(session: &Session, pin: &AuthPin, token_label: &str) -> Result<(), KeyProtectError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) => Ok(()),
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
            Ok(())
        }
        Err(e) => Err(KeyProtectError::Pkcs11(format!(
            "login to token `{token_label}` failed ({e}); check the PIN"
        ))),
    }
}

fn find_slot(
    ctx: &Pkcs11,
    module: &Path,
    token_label: &str,
) -> Result<cryptoki::slot::Slot, KeyProtectError> {
    for s in ctx.get_slots_with_token().map_err(p11)? {
        if ctx.get_token_info(s).map_err(p11)?.label() == token_label {
            return Ok(s);
        }
    }
    Err(KeyProtectError::Config(format!(
        "no PKCS#11 token labelled `{token_label}` in {}; is the token present?",
        module.display()
    )))
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
                service_kit::files::write_private(
                    path,
                    key.as_ref(),
                    service_kit::files::Existing::Refuse,
                )
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
        let slot = find_slot(&ctx, module, token_label)?;
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
        login(&session, &self.pin, &self.token_label)?;
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
    // Forges and tears files on purpose.
    #[allow(clippy::disallowed_methods)]
    fn the_anchor_file_survives_a_torn_write() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let kp = KeyProtection::default();
        let open = || {
            kp.open_anchor(dir.path(), "a")
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(open().read().ok(), Some(None));
        let a = open();
        for v in [b"one".as_slice(), b"two", b"three"] {
            a.write(v).unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(open().read().ok().flatten(), Some(b"three".to_vec()));
        // The newest slot torn half-way: the one before it is read.
        let path = dir.path().join("a.anchor");
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        // Three writes, sequence numbers 1..=3: the third went to slot 3 % 2.
        let newest = ANCHOR_SLOT;
        bytes[newest + 20] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(open().read().ok().flatten(), Some(b"two".to_vec()));
        // And the next write goes after it, into the torn slot.
        open().write(b"four").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(open().read().ok().flatten(), Some(b"four".to_vec()));
    }

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

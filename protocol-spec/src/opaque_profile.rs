//! The OPAQUE configuration both ends must share, and the small key
//! derivations layered on it: wrapping the backup key under the export key,
//! and sealing the released key under the session key.
//!
//! Suite: OPAQUE-3DH with ristretto255 and SHA-512 (RFC 9807 "ristretto255-
//! SHA512" configuration), client KSF Argon2id. Identifiers bind the account id
//! (client identity) and the vault fleet id (server identity), so a record or a
//! login transcript cannot be replayed for another account or fleet.
//!
//! Must never: give the vault anything from which the password or the backup
//! key can be computed without the OPRF key and a guess.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use opaque_ke::{CipherSuite, Identifiers, Ristretto255, TripleDh};
use rand::{rngs::OsRng, RngCore};
use sha2::Sha512;
use zeroize::Zeroizing;

/// The cipher suite of protocol version 1.
#[derive(Debug, Clone, Copy)]
pub struct Suite;

impl CipherSuite for Suite {
    type OprfCs = Ristretto255;
    type KeyExchange = TripleDh<Ristretto255, Sha512>;
    type Ksf = opaque_ke::argon2::Argon2<'static>;
}

/// Serialized sizes of the OPAQUE messages of [`Suite`].
pub const REGISTRATION_REQUEST_LEN: usize = 32;
/// RegistrationResponse: evaluated element + server public key.
pub const REGISTRATION_RESPONSE_LEN: usize = 64;
/// RegistrationUpload: client public key, masking key, envelope.
pub const REGISTRATION_UPLOAD_LEN: usize = 192;
/// CredentialRequest: blinded element + KE1.
pub const CREDENTIAL_REQUEST_LEN: usize = 96;
/// CredentialResponse: evaluated element, masking nonce, masked response, KE2.
pub const CREDENTIAL_RESPONSE_LEN: usize = 320;
/// CredentialFinalization: client MAC.
pub const CREDENTIAL_FINALIZATION_LEN: usize = 64;
/// Vault fleet public key (ristretto255 point).
pub const FLEET_PUBLIC_KEY_LEN: usize = 32;
/// Registration ticket: 16-byte registration id (the issue time, Unix ms as
/// a big-endian u64, then 8 random bytes) + 16-byte MAC. Opaque to phones.
pub const REGISTRATION_TICKET_LEN: usize = 32;
/// Login session id.
pub const LOGIN_SESSION_LEN: usize = 16;
/// Backup key.
pub const BACKUP_KEY_LEN: usize = 32;
/// Wrapped key: 12-byte nonce + 32-byte key + 16-byte tag.
pub const WRAPPED_KEY_LEN: usize = 12 + BACKUP_KEY_LEN + 16;
/// Sealed released key: wrapped key + 16-byte tag.
pub const SEALED_KEY_LEN: usize = WRAPPED_KEY_LEN + 16;

/// HKDF info for the wrap key.
pub const WRAP_INFO: &[u8] = b"bkv/1 backup key wrap";
/// HKDF info for the release key.
pub const RELEASE_INFO: &[u8] = b"bkv/1 key release";
/// Domain prefix of credential identifiers.
pub const CREDENTIAL_ID_PREFIX: &[u8] = b"bkv/1 credential id";

/// Argon2id parameters of the client KSF (RFC 9106 second recommended option,
/// m = 19456 KiB, t = 2, p = 1). Every client of an account must use the same.
pub fn client_ksf() -> opaque_ke::argon2::Argon2<'static> {
    opaque_ke::argon2::Argon2::default()
}

/// A deliberately cheap Argon2id (m = 8 KiB, t = 1) for simulated phones in
/// load tests. It changes only what the *client* computes; the vault's work is
/// identical. Never use it for real deposits.
pub fn cheap_ksf_for_load_tests() -> opaque_ke::argon2::Argon2<'static> {
    let params = opaque_ke::argon2::Params::new(8, 1, 1, None)
        .unwrap_or_else(|_| opaque_ke::argon2::Params::default());
    opaque_ke::argon2::Argon2::new(
        opaque_ke::argon2::Algorithm::Argon2id,
        opaque_ke::argon2::Version::V0x13,
        params,
    )
}

/// OPAQUE identifiers: client = account id, server = fleet id.
pub fn identifiers<'a>(account_id: &'a str, fleet_id: &'a str) -> Identifiers<'a> {
    Identifiers {
        client: Some(account_id.as_bytes()),
        server: Some(fleet_id.as_bytes()),
    }
}

/// The OPAQUE credential identifier of one registration. A fresh random
/// registration id per registration makes each registration's OPRF key
/// unrelated to every other's.
pub fn credential_identifier(fleet_id: &str, account_id: &str, registration_id: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(
        CREDENTIAL_ID_PREFIX.len() + 6 + fleet_id.len() + account_id.len() + registration_id.len(),
    );
    for part in [
        CREDENTIAL_ID_PREFIX,
        fleet_id.as_bytes(),
        account_id.as_bytes(),
        registration_id,
    ] {
        v.extend_from_slice(&(part.len() as u16).to_be_bytes());
        v.extend_from_slice(part);
    }
    v
}

/// Errors of the key-wrapping layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// Wrong size input.
    #[error("{0} has the wrong length")]
    Length(&'static str),
    /// AEAD check failed: wrong key, wrong account/fleet, or tampering.
    #[error("the wrapped key does not open with this password's export key")]
    Open,
}

fn hkdf32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha512>::new(None, ikm);
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is always a valid HKDF-SHA512 output length.
    let _ = hk.expand(info, out.as_mut());
    out
}

fn wrap_aad(account_id: &str, fleet_id: &str) -> Vec<u8> {
    credential_identifier(fleet_id, account_id, b"wrap")
}

/// Wraps the backup key under `HKDF-SHA512(export_key, WRAP_INFO)` with
/// ChaCha20-Poly1305; output `nonce || ciphertext || tag` (60 bytes).
pub fn wrap_backup_key(
    export_key: &[u8],
    account_id: &str,
    fleet_id: &str,
    backup_key: &[u8; BACKUP_KEY_LEN],
) -> Result<Vec<u8>, WrapError> {
    wrap_backup_key_with_nonce(export_key, account_id, fleet_id, backup_key, random_nonce())
}

fn random_nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    OsRng.fill_bytes(&mut n);
    n
}

/// Deterministic variant for test vectors.
pub fn wrap_backup_key_with_nonce(
    export_key: &[u8],
    account_id: &str,
    fleet_id: &str,
    backup_key: &[u8; BACKUP_KEY_LEN],
    nonce: [u8; 12],
) -> Result<Vec<u8>, WrapError> {
    let k = hkdf32(export_key, WRAP_INFO);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(k.as_ref()));
    let aad = wrap_aad(account_id, fleet_id);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: backup_key,
                aad: &aad,
            },
        )
        .map_err(|_| WrapError::Length("backup key"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Inverse of [`wrap_backup_key`].
pub fn unwrap_backup_key(
    export_key: &[u8],
    account_id: &str,
    fleet_id: &str,
    wrapped: &[u8],
) -> Result<Zeroizing<[u8; BACKUP_KEY_LEN]>, WrapError> {
    if wrapped.len() != WRAPPED_KEY_LEN {
        return Err(WrapError::Length("wrapped key"));
    }
    let k = hkdf32(export_key, WRAP_INFO);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(k.as_ref()));
    let aad = wrap_aad(account_id, fleet_id);
    let pt = Zeroizing::new(
        cipher
            .decrypt(
                Nonce::from_slice(&wrapped[..12]),
                Payload {
                    msg: &wrapped[12..],
                    aad: &aad,
                },
            )
            .map_err(|_| WrapError::Open)?,
    );
    let mut key = Zeroizing::new([0u8; BACKUP_KEY_LEN]);
    if pt.len() != BACKUP_KEY_LEN {
        return Err(WrapError::Length("backup key"));
    }
    key.copy_from_slice(&pt);
    Ok(key)
}

/// Seals the wrapped key for release under `HKDF-SHA512(session_key,
/// RELEASE_INFO)`; the key is unique per login, so the nonce is zero. AAD is
/// the login session id.
pub fn seal_release(
    session_key: &[u8],
    login_session: &[u8],
    wrapped: &[u8],
) -> Result<Vec<u8>, WrapError> {
    let k = hkdf32(session_key, RELEASE_INFO);
    ChaCha20Poly1305::new(Key::from_slice(k.as_ref()))
        .encrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: wrapped,
                aad: login_session,
            },
        )
        .map_err(|_| WrapError::Length("wrapped key"))
}

/// Inverse of [`seal_release`].
pub fn open_release(
    session_key: &[u8],
    login_session: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, WrapError> {
    if sealed.len() != SEALED_KEY_LEN {
        return Err(WrapError::Length("sealed key"));
    }
    let k = hkdf32(session_key, RELEASE_INFO);
    ChaCha20Poly1305::new(Key::from_slice(k.as_ref()))
        .decrypt(
            Nonce::from_slice(&[0u8; 12]),
            Payload {
                msg: sealed,
                aad: login_session,
            },
        )
        .map_err(|_| WrapError::Open)
}

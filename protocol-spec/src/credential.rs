//! Device credentials: PASETO `v4.public` tokens (Ed25519) minted by the
//! account service, binding an account id to a device's static Noise key
//! until an expiry.
//!
//! Claims: `sub` = account id, `aud` = [`AUDIENCE`], `dev` = lowercase hex
//! of the device's X25519 static key, `exp`/`iat`/`nbf` (RFC 3339). The
//! implicit assertion [`IMPLICIT_ASSERTION`] keeps tokens of other purposes
//! signed with the same key from being accepted here.
//!
//! Must never: accept a token whose `dev` differs from the key the Noise
//! handshake proved, or call out to anything (verification is offline).

use pasetors::claims::{Claims, ClaimsValidationRules};
use pasetors::keys::{AsymmetricKeyPair, AsymmetricPublicKey, AsymmetricSecretKey, Generate};
use pasetors::token::UntrustedToken;
use pasetors::version4::V4;
use pasetors::{public, Public};

use crate::limits::{MAX_ACCOUNT_ID_LEN, MAX_CREDENTIAL_LEN};

/// Audience claim every credential carries.
pub const AUDIENCE: &str = "bkv-gateway";
/// PASETO implicit assertion for device credentials.
pub const IMPLICIT_ASSERTION: &[u8] = b"bkv/1 device credential";
/// Claim holding the device key.
pub const DEVICE_CLAIM: &str = "dev";

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Longer than the protocol allows.
    #[error("credential is longer than {MAX_CREDENTIAL_LEN} bytes")]
    TooLong,
    /// Not a PASETO v4.public token, bad signature, expired, wrong audience...
    #[error("credential rejected: {0}; ask the account service for a new one")]
    Invalid(String),
    /// Valid token, but for another device key.
    #[error("credential was issued for another device key")]
    WrongDevice,
    /// Account id missing or not allowed.
    #[error("credential has an invalid account id")]
    BadAccount,
    /// Key material could not be used.
    #[error("signing key error: {0}")]
    Key(String),
}

/// Checks the account id alphabet and length (SPEC.md "Account ids").
pub fn valid_account_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ACCOUNT_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:+@-".contains(&b))
}

/// A new account-service signing key pair `(secret 64 bytes, public 32 bytes)`.
pub fn generate_signing_key() -> Result<(Vec<u8>, Vec<u8>), CredentialError> {
    let kp =
        AsymmetricKeyPair::<V4>::generate().map_err(|e| CredentialError::Key(e.to_string()))?;
    Ok((kp.secret.as_bytes().to_vec(), kp.public.as_bytes().to_vec()))
}

/// Mints a credential (the account service's job; used by the mint command and tests).
pub fn mint(
    signing_secret: &[u8],
    account_id: &str,
    device_key: &[u8; 32],
    ttl: std::time::Duration,
) -> Result<String, CredentialError> {
    if !valid_account_id(account_id) {
        return Err(CredentialError::BadAccount);
    }
    let sk = AsymmetricSecretKey::<V4>::from(signing_secret)
        .map_err(|e| CredentialError::Key(e.to_string()))?;
    let mut claims =
        Claims::new_expires_in(&ttl).map_err(|e| CredentialError::Key(e.to_string()))?;
    let inv = |e: pasetors::errors::Error| CredentialError::Invalid(e.to_string());
    claims.subject(account_id).map_err(inv)?;
    claims.audience(AUDIENCE).map_err(inv)?;
    claims
        .add_additional(DEVICE_CLAIM, hex::encode(device_key))
        .map_err(inv)?;
    public::sign(&sk, &claims, None, Some(IMPLICIT_ASSERTION)).map_err(inv)
}

/// Mints a credential with an explicit validity window (RFC 3339 times), for
/// operators back-dating nothing and tests that need an expired credential.
pub fn mint_with_validity(
    signing_secret: &[u8],
    account_id: &str,
    device_key: &[u8; 32],
    not_before: &str,
    expires: &str,
) -> Result<String, CredentialError> {
    if !valid_account_id(account_id) {
        return Err(CredentialError::BadAccount);
    }
    let sk = AsymmetricSecretKey::<V4>::from(signing_secret)
        .map_err(|e| CredentialError::Key(e.to_string()))?;
    let inv = |e: pasetors::errors::Error| CredentialError::Invalid(e.to_string());
    let mut claims = Claims::new().map_err(inv)?;
    claims.issued_at(not_before).map_err(inv)?;
    claims.not_before(not_before).map_err(inv)?;
    claims.expiration(expires).map_err(inv)?;
    claims.subject(account_id).map_err(inv)?;
    claims.audience(AUDIENCE).map_err(inv)?;
    claims
        .add_additional(DEVICE_CLAIM, hex::encode(device_key))
        .map_err(inv)?;
    public::sign(&sk, &claims, None, Some(IMPLICIT_ASSERTION)).map_err(inv)
}

/// A credential that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCredential {
    /// Account the device belongs to.
    pub account_id: String,
}

/// How many account-service keys a gateway accepts at once (the current
/// one and those being retired).
pub const MAX_VERIFICATION_KEYS: usize = 4;

/// Checks device credentials offline with the account service's public
/// key(s).
pub struct CredentialVerifier {
    /// The account service's keys, the current one first; more than one
    /// while the account service rotates its signing key (credentials of
    /// the old key are accepted until they expire or the key is removed).
    keys: Vec<AsymmetricPublicKey<V4>>,
}

impl std::fmt::Debug for CredentialVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialVerifier")
    }
}

impl CredentialVerifier {
    /// From the 32-byte Ed25519 public key.
    pub fn new(public_key: &[u8]) -> Result<Self, CredentialError> {
        Self::with_keys(&[public_key])
    }

    /// From several 32-byte Ed25519 public keys (an account-service key
    /// rotation: a credential signed by any of them is accepted). At least
    /// one, at most [`MAX_VERIFICATION_KEYS`].
    pub fn with_keys(public_keys: &[&[u8]]) -> Result<Self, CredentialError> {
        if public_keys.is_empty() || public_keys.len() > MAX_VERIFICATION_KEYS {
            return Err(CredentialError::Key(format!(
                "between 1 and {MAX_VERIFICATION_KEYS} account-service keys, not {}",
                public_keys.len()
            )));
        }
        let keys = public_keys
            .iter()
            .map(|k| {
                AsymmetricPublicKey::<V4>::from(k).map_err(|e| CredentialError::Key(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// Verifies signature, expiry, audience, and that `dev` equals `device_key`.
    pub fn verify(
        &self,
        token: &str,
        device_key: &[u8; 32],
    ) -> Result<VerifiedCredential, CredentialError> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(CredentialError::TooLong);
        }
        let inv = |e: pasetors::errors::Error| CredentialError::Invalid(e.to_string());
        let untrusted = UntrustedToken::<Public, V4>::try_from(token).map_err(inv)?;
        let mut rules = ClaimsValidationRules::new();
        rules.validate_audience_with(AUDIENCE);
        // Each key in turn: a token signed by none fails with the last
        // key's error (at most MAX_VERIFICATION_KEYS signature checks).
        let mut outcome = Err(pasetors::errors::Error::TokenValidation);
        for key in &self.keys {
            outcome = public::verify(key, &untrusted, &rules, None, Some(IMPLICIT_ASSERTION));
            if outcome.is_ok() {
                break;
            }
        }
        let trusted = outcome.map_err(inv)?;
        let claims = trusted
            .payload_claims()
            .ok_or_else(|| CredentialError::Invalid("no claims".into()))?;
        let dev = claims
            .get_claim(DEVICE_CLAIM)
            .and_then(|v| v.as_str())
            .ok_or_else(|| CredentialError::Invalid("no device claim".into()))?;
        if !dev.eq_ignore_ascii_case(&hex::encode(device_key)) {
            return Err(CredentialError::WrongDevice);
        }
        let account_id = claims
            .get_claim("sub")
            .and_then(|v| v.as_str())
            .filter(|s| valid_account_id(s))
            .ok_or(CredentialError::BadAccount)?;
        Ok(VerifiedCredential {
            account_id: account_id.to_owned(),
        })
    }
}

/// The account a credential names, read **without** checking its signature.
///
/// For local bookkeeping only (which cloud folder a device's backups live
/// in, before or without connecting); never for an access decision — the
/// gateway verifies the credential.
pub fn unverified_account(token: &str) -> Result<String, CredentialError> {
    if token.len() > MAX_CREDENTIAL_LEN {
        return Err(CredentialError::TooLong);
    }
    let untrusted = UntrustedToken::<Public, V4>::try_from(token)
        .map_err(|e| CredentialError::Invalid(e.to_string()))?;
    // The v4.public payload is the claims JSON followed by the signature:
    // take the first JSON value and ignore what follows.
    let claims: serde_json::Value =
        serde_json::Deserializer::from_slice(untrusted.untrusted_message())
            .into_iter()
            .next()
            .ok_or_else(|| CredentialError::Invalid("no claims".into()))?
            .map_err(|e| CredentialError::Invalid(e.to_string()))?;
    claims
        .get("sub")
        .and_then(|v| v.as_str())
        .filter(|s| valid_account_id(s))
        .map(str::to_owned)
        .ok_or(CredentialError::BadAccount)
}

//! Noise parameters and the binding of the Noise handshake to the QUIC
//! connection that carries it.
//!
//! The prologue mixes in a TLS exporter value of the QUIC connection, so a
//! handshake transcript (and therefore the device authentication it carries)
//! is only valid on the connection it was made on: a relaying or replaying
//! party with a different TLS session computes a different prologue and the
//! handshake fails. This module only computes bytes; the caller obtains the
//! exporter from its TLS stack.

use crate::msg::NoisePattern;

/// ALPN of the client ↔ gateway protocol, version 1.
pub const ALPN: &[u8] = b"bkv/1";
/// ALPN of the internal gateway ↔ vault link.
pub const VAULT_ALPN: &[u8] = b"bkv-vault/1";
/// Noise protocol name used when the client knows the gateway static key.
pub const IK_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Noise protocol name used when it does not.
pub const XX_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// TLS exporter label (RFC 8446 §7.5) for the channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-bkv-noise-channel-binding";
/// TLS exporter context (empty).
pub const EXPORTER_CONTEXT: &[u8] = b"";
/// Bytes taken from the exporter.
pub const EXPORTER_LEN: usize = 32;
/// Fixed prefix of every prologue.
pub const PROLOGUE_PREFIX: &[u8] = b"bkv/1 noise prologue";
/// Length of X25519 keys.
pub const KEY_LEN: usize = 32;

/// `PROLOGUE_PREFIX || 0x00 || pattern (1 byte: 1 = IK, 2 = XX) || exporter (32 bytes)`.
pub fn prologue(pattern: NoisePattern, exporter: &[u8; EXPORTER_LEN]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_PREFIX.len() + 2 + EXPORTER_LEN);
    p.extend_from_slice(PROLOGUE_PREFIX);
    p.push(0);
    p.push(pattern as i32 as u8);
    p.extend_from_slice(exporter);
    p
}

/// The Noise protocol name for a pattern, if the pattern is one we speak.
pub fn params_for(pattern: NoisePattern) -> Option<&'static str> {
    match pattern {
        NoisePattern::Ik => Some(IK_PARAMS),
        NoisePattern::Xx => Some(XX_PARAMS),
        NoisePattern::Unspecified => None,
    }
}

/// A fresh X25519 static key pair `(private, public)`.
pub fn generate_static_keypair() -> Result<([u8; KEY_LEN], [u8; KEY_LEN]), snow::Error> {
    let params = IK_PARAMS.parse::<snow::params::NoiseParams>()?;
    let kp =
        snow::Builder::with_resolver(params, crate::noise_resolver::resolver(Default::default()))
            .generate_keypair()?;
    let mut private = [0u8; KEY_LEN];
    let mut public = [0u8; KEY_LEN];
    private.copy_from_slice(&kp.private);
    public.copy_from_slice(&kp.public);
    Ok((private, public))
}

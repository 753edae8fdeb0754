//! Which implementation of Noise's X25519 the handshakes use: snow's default
//! (curve25519-dalek) or aws-lc-rs (measured about twice as fast here; see
//! BENCHMARKS.md). Both compute the same function, so the two sides of a
//! handshake may use either. Ciphers and hashes always come from snow's
//! default resolver.
//!
//! Must never: change a handshake's transcript (same primitives, same
//! names), or accept a low-order peer key the default would refuse.

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{BoxedCryptoResolver, CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

/// The X25519 implementation behind a handshake, chosen per handshake
/// (`Initiator::with_dh_backend`, `Responder::with_dh_backend`): the
/// crypto-floor benchmark measures both side by side in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DhBackend {
    /// snow's default resolver (curve25519-dalek).
    SnowDefault,
    /// aws-lc-rs (the default).
    #[default]
    AwsLc,
}

/// The resolver for `backend`.
pub fn resolver(backend: DhBackend) -> BoxedCryptoResolver {
    match backend {
        DhBackend::SnowDefault => Box::new(DefaultResolver),
        DhBackend::AwsLc => Box::new(FallbackResolver::new(
            Box::new(AwsLcResolver),
            Box::new(DefaultResolver),
        )),
    }
}

/// Provides X25519 from aws-lc-rs and nothing else.
struct AwsLcResolver;

impl CryptoResolver for AwsLcResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(AwsLcX25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }

    fn resolve_cipher(&self, _: &CipherChoice) -> Option<Box<dyn Cipher>> {
        None
    }
}

#[derive(Default)]
struct AwsLcX25519 {
    private: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    key: Option<PrivateKey>,
}

impl Dh for AwsLcX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut k = Zeroizing::new([0u8; 32]);
        let n = privkey.len().min(32);
        k[..n].copy_from_slice(&privkey[..n]);
        self.private = k;
        self.key = PrivateKey::from_private_key(&X25519, self.private.as_ref()).ok();
        self.public = [0u8; 32];
        if let Some(pk) = self.key.as_ref().and_then(|k| k.compute_public_key().ok()) {
            let p = pk.as_ref();
            if p.len() == 32 {
                self.public.copy_from_slice(p);
            }
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(k.as_mut())?;
        self.set(k.as_ref());
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.private.as_ref()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        // snow hands over its whole key buffer (sized for the largest
        // curve); an X25519 key is its first 32 bytes.
        if out.len() < 32 || pubkey.len() < 32 {
            return Err(snow::Error::Dh);
        }
        let pubkey = &pubkey[..32];
        // aws-lc refuses low-order peer keys (an all-zero shared secret).
        agreement::agree(
            key,
            UnparsedPublicKey::new(&X25519, pubkey),
            snow::Error::Dh,
            |secret| {
                if secret.len() != 32 {
                    return Err(snow::Error::Dh);
                }
                out[..32].copy_from_slice(secret);
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(init: DhBackend, resp: DhBackend) -> Vec<u8> {
        let params: snow::params::NoiseParams = crate::noise::IK_PARAMS
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let rk = snow::Builder::with_resolver(params.clone(), resolver(resp))
            .generate_keypair()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut r = snow::Builder::with_resolver(params.clone(), resolver(resp))
            .local_private_key(&rk.private)
            .and_then(|b| b.build_responder())
            .unwrap_or_else(|e| panic!("{e}"));
        let ik = snow::Builder::with_resolver(params.clone(), resolver(init))
            .generate_keypair()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut i = snow::Builder::with_resolver(params, resolver(init))
            .local_private_key(&ik.private)
            .and_then(|b| b.remote_public_key(&rk.public))
            .and_then(|b| b.build_initiator())
            .unwrap_or_else(|e| panic!("{e}"));
        let (mut a, mut b) = ([0u8; 1024], [0u8; 1024]);
        let n = i
            .write_message(b"hi", &mut a)
            .unwrap_or_else(|e| panic!("{e}"));
        r.read_message(&a[..n], &mut b)
            .unwrap_or_else(|e| panic!("{e}"));
        let n = r
            .write_message(&[], &mut a)
            .unwrap_or_else(|e| panic!("{e}"));
        i.read_message(&a[..n], &mut b)
            .unwrap_or_else(|e| panic!("{e}"));
        i.get_handshake_hash().to_vec()
    }

    #[test]
    fn both_backends_interoperate_and_compute_the_same_function() {
        for (a, b) in [
            (DhBackend::SnowDefault, DhBackend::AwsLc),
            (DhBackend::AwsLc, DhBackend::SnowDefault),
            (DhBackend::AwsLc, DhBackend::AwsLc),
        ] {
            assert_eq!(handshake(a, b).len(), 32);
        }
        // The same private key gives the same public key in both.
        let mut d = AwsLcX25519::default();
        d.set(&[9u8; 32]);
        let dalek = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .map(|mut x| {
                x.set(&[9u8; 32]);
                x.pubkey().to_vec()
            })
            .unwrap_or_default();
        assert_eq!(d.pubkey(), dalek.as_slice());
    }

    #[test]
    fn a_low_order_peer_key_is_refused() {
        let mut d = AwsLcX25519::default();
        d.set(&[9u8; 32]);
        let mut out = [0u8; 32];
        assert!(d.dh(&[0u8; 32], &mut out).is_err());
    }
}

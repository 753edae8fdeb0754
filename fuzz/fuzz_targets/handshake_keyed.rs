//! The gateway's Noise responder, reached with real keys: a genuine IK
//! initiator (the fuzz harness holds the device and gateway keys) encrypts
//! the fuzzer's bytes as the handshake payload, so that the responder gets
//! past decryption into what `handshake_responder` cannot reach: the
//! payload's decoding, the credential's size check and its verification
//! (PASETO parsing, signature, claims, the device-key binding).
//!
//! The first byte picks what the bytes become: 0, the raw payload; 1, a
//! well-formed `ClientAuthPayload` whose credential is the bytes; other
//! values, a valid credential for this device with the bytes written over
//! it (so the token parser sees near-valid input). With the first byte's
//! high bit set, the gateway has rotated: the initiator addresses the key
//! now held as the previous one (SPEC §4.6), so the responder's second
//! attempt and its `gateway_key` answer are reached too.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use protocol_spec::credential::{generate_signing_key, mint, CredentialVerifier};
use protocol_spec::handshake::Responder;
use protocol_spec::msg::{ClientAuthPayload, HandshakeMessage, NoisePattern};
use protocol_spec::noise;

struct Keys {
    /// The key a rotation made current (the initiator never uses it).
    rotated_private: [u8; 32],
    rotated_public: [u8; 32],
    gateway_private: [u8; 32],
    gateway_public: [u8; 32],
    device_private: [u8; 32],
    account_service_public: Vec<u8>,
    credential: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (gateway_private, gateway_public) = noise::generate_static_keypair().expect("keys");
        let (rotated_private, rotated_public) = noise::generate_static_keypair().expect("keys");
        let (device_private, device_public) = noise::generate_static_keypair().expect("keys");
        let (secret, public) = generate_signing_key().expect("signing key");
        let credential = mint(
            &secret,
            "fuzz-account",
            &device_public,
            std::time::Duration::from_secs(3600),
        )
        .expect("credential");
        Keys {
            rotated_private,
            rotated_public,
            gateway_private,
            gateway_public,
            device_private,
            account_service_public: public,
            credential,
        }
    })
}

/// A valid credential in each mode.
fn seeds() -> Vec<Vec<u8>> {
    let k = keys();
    let auth = ClientAuthPayload {
        credential: k.credential.clone(),
        client_version: "fuzz".into(),
    }
    .encode_to_vec();
    vec![
        [&[0u8][..], &auth].concat(),
        [&[1u8][..], k.credential.as_bytes()].concat(),
        vec![2, b'x'],
        [&[0x80u8][..], &auth].concat(),
    ]
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("handshake_keyed", seeds);
    },
    |data: &[u8]| {
    let k = keys();
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let rotated = first & 0x80 != 0;
    let mode = first & 0x7f;
    let auth = |credential: String| {
        ClientAuthPayload {
            credential,
            client_version: "fuzz".into(),
        }
        .encode_to_vec()
    };
    let payload = match mode {
        0 => rest.to_vec(),
        1 => auth(String::from_utf8_lossy(rest).into_owned()),
        _ => {
            let mut c = k.credential.clone().into_bytes();
            for (i, b) in rest.iter().enumerate() {
                let at = (i * 31 + usize::from(mode)) % c.len();
                c[at] = *b;
            }
            auth(String::from_utf8_lossy(&c).into_owned())
        }
    };
    let exporter = [7u8; noise::EXPORTER_LEN];
    let Ok(params) = noise::IK_PARAMS.parse::<snow::params::NoiseParams>() else {
        return;
    };
    let prologue = noise::prologue(NoisePattern::Ik, &exporter);
    let Ok(mut hs) = snow::Builder::new(params)
        .local_private_key(&k.device_private)
        .and_then(|b| b.remote_public_key(&k.gateway_public))
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.build_initiator())
    else {
        return;
    };
    let mut buf = vec![0u8; 65_535];
    let Ok(n) = hs.write_message(&payload, &mut buf) else {
        return;
    };
    let frame = HandshakeMessage {
        pattern: NoisePattern::Ik as i32,
        noise: buf[..n].to_vec(),
    }
    .encode_to_vec();
    let verifier = CredentialVerifier::new(&k.account_service_public).expect("verifier");
    let mut responder = if rotated {
        Responder::new(k.rotated_private, exporter, &verifier)
            .with_previous_key(k.gateway_private, k.rotated_public)
    } else {
        Responder::new(k.gateway_private, exporter, &verifier)
    };
    let _ = responder.on_frame(&frame);
});

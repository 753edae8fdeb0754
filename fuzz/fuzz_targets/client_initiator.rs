//! The phone's side of the Noise handshake against a hostile gateway: a
//! real `Initiator` (IK with the gateway key pinned, or XX with the pin
//! checked) sends its first message, and the fuzzer answers as the
//! gateway. The first byte picks how:
//!
//! - 0: the fuzzer's bytes are the gateway's reply frame body, raw;
//! - 1: the harness holds the gateway's keys and answers the IK message
//!   honestly, then encrypts the fuzzer's bytes as the `AuthResult`
//!   (reaching its decoding);
//! - 2: the same with XX, the fuzzer's bytes as message 2's payload, then
//!   the `AuthResult` as in 1;
//! - 3: XX answered with a key that is not the pinned one.
//!
//! Checked beyond "no panic": without the gateway's keys (0) or with the
//! wrong key (3), the phone never reaches "authenticated" and in 3 never
//! sends its credential (it stops with `GatewayKeyMismatch`).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use protocol_spec::handshake::{HandshakeError, Initiator, InitiatorStep};
use protocol_spec::msg::{self, NoisePattern};
use protocol_spec::{framing, noise};

struct Keys {
    gateway: ([u8; 32], [u8; 32]),
    impostor: ([u8; 32], [u8; 32]),
    device_private: [u8; 32],
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        gateway: noise::generate_static_keypair().expect("keys"),
        impostor: noise::generate_static_keypair().expect("keys"),
        device_private: noise::generate_static_keypair().expect("keys").0,
    })
}

const EXPORTER: [u8; noise::EXPORTER_LEN] = [5; noise::EXPORTER_LEN];

fn body(frame: &[u8]) -> &[u8] {
    frame.get(framing::HEADER_LEN..).unwrap_or(&[])
}

fn responder(pattern: NoisePattern, private: &[u8; 32]) -> Option<snow::HandshakeState> {
    let params = noise::params_for(pattern)?.parse().ok()?;
    let prologue = noise::prologue(pattern, &EXPORTER);
    snow::Builder::new(params)
        .local_private_key(private)
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.build_responder())
        .ok()
}

fn seeds() -> Vec<Vec<u8>> {
    let ok = framing::encode(&msg::AuthResult {
        account_id: "fuzz-account".into(),
        error: None,
        gateway_key: Vec::new(),
    })
    .expect("encodes");
    let refused = framing::encode(&msg::AuthResult {
        account_id: String::new(),
        error: Some(msg::Error::new(msg::ErrorCode::Unauthenticated, "expired")),
        gateway_key: Vec::new(),
    })
    .expect("encodes");
    let mut out = Vec::new();
    // A rotation's answer: the gateway names its new key.
    let rotated = framing::encode(&msg::AuthResult {
        account_id: "fuzz-account".into(),
        error: None,
        gateway_key: vec![9u8; 32],
    })
    .expect("encodes");
    for mode in [1u8, 2] {
        for r in [&ok, &refused, &rotated] {
            let mut s = vec![mode];
            s.extend_from_slice(body(r));
            out.push(s);
        }
    }
    out.push(vec![0]);
    out.push(vec![3]);
    out
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("client_initiator", seeds);
    },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = keys();
    let force_xx = mode % 4 >= 2;
    let mut phone = Initiator::new(
        k.device_private,
        Some(k.gateway.1),
        force_xx,
        EXPORTER,
        "v4.local.credential",
        "fuzz",
    );
    let Ok(first) = phone.start() else {
        return;
    };
    match mode % 4 {
        0 => {
            let r = phone.on_frame(rest);
            assert!(!matches!(r, Ok(InitiatorStep::Done { .. })), "authenticated by no gateway");
            if r.is_ok() {
                let again = phone.on_frame(rest);
                assert!(!matches!(again, Ok(InitiatorStep::Done { .. })), "authenticated by no gateway");
            }
        }
        m => {
            let private = if m == 3 { &k.impostor.0 } else { &k.gateway.0 };
            let pattern = if force_xx { NoisePattern::Xx } else { NoisePattern::Ik };
            let Some(mut hs) = responder(pattern, private) else {
                return;
            };
            let Ok(m1) = framing::decode::<msg::HandshakeMessage>(body(&first)) else {
                return;
            };
            let mut scratch = vec![0u8; 65_535];
            if hs.read_message(&m1.noise, &mut scratch).is_err() {
                return;
            }
            let payload: &[u8] = if m == 2 { rest } else { &[] };
            let Ok(n) = hs.write_message(payload, &mut scratch) else {
                return;
            };
            let reply = framing::encode(&msg::HandshakeMessage {
                pattern: pattern as i32,
                noise: scratch[..n].to_vec(),
            })
            .expect("encodes");
            let step = phone.on_frame(body(&reply));
            if m == 3 {
                assert!(
                    matches!(step, Err(HandshakeError::GatewayKeyMismatch { .. })),
                    "an impostor's key was accepted"
                );
                return;
            }
            match step {
                Ok(InitiatorStep::Send(third)) => {
                    let Ok(m3) = framing::decode::<msg::HandshakeMessage>(body(&third)) else {
                        return;
                    };
                    if hs.read_message(&m3.noise, &mut scratch).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
            let Ok(mut t) = hs.into_transport_mode() else {
                return;
            };
            let Ok(n) = t.write_message(rest, &mut scratch) else {
                return;
            };
            let result = framing::encode(&msg::HandshakeMessage {
                pattern: NoisePattern::Unspecified as i32,
                noise: scratch[..n].to_vec(),
            })
            .expect("encodes");
            let _ = phone.on_frame(body(&result));
        }
    }
});

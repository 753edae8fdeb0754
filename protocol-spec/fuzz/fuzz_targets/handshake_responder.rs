//! Arbitrary frames into the gateway's Noise responder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::credential::{generate_signing_key, CredentialVerifier};
use protocol_spec::handshake::Responder;

fuzz_target!(|data: &[u8]| {
    let (_, pk) = generate_signing_key().expect("key");
    let verifier = CredentialVerifier::new(&pk).expect("verifier");
    let mut r = Responder::new([1; 32], [2; 32], &verifier);
    for frame in data.split(|b| *b == 0xff) {
        if r.on_frame(frame).is_err() {
            return;
        }
    }
});

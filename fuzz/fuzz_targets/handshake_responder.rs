//! Arbitrary frames into the gateway's Noise responder.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::credential::{generate_signing_key, CredentialVerifier};
use protocol_spec::handshake::Responder;

/// A real phone's first message, IK and XX (frame bodies).
fn seeds() -> Vec<Vec<u8>> {
    [false, true]
        .iter()
        .filter_map(|&xx| {
            let mut i = protocol_spec::handshake::Initiator::new(
                [3; 32],
                Some([4; 32]),
                xx,
                [2; 32],
                "v4.local.credential",
                "fuzz",
            );
            i.start()
                .ok()
                .map(|f| f[protocol_spec::framing::HEADER_LEN..].to_vec())
        })
        .collect()
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("handshake_responder", seeds);
    },
    |data: &[u8]| {
    let (_, pk) = generate_signing_key().expect("key");
    let verifier = CredentialVerifier::new(&pk).expect("verifier");
    let mut r = Responder::new([1; 32], [2; 32], &verifier);
    for frame in data.split(|b| *b == 0xff) {
        if r.on_frame(frame).is_err() {
            return;
        }
    }
});

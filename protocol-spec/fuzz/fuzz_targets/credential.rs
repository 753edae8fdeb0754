//! Arbitrary text as a device credential.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::credential::{generate_signing_key, CredentialVerifier};

fuzz_target!(|data: &[u8]| {
    let (_, pk) = generate_signing_key().expect("key");
    let verifier = CredentialVerifier::new(&pk).expect("verifier");
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = verifier.verify(s, &[0; 32]);
    }
});

//! Arbitrary text as a device credential.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::credential::{generate_signing_key, CredentialVerifier};

/// A well-formed credential (signed by another key) and its parts.
fn seeds() -> Vec<Vec<u8>> {
    let Ok((sk, _)) = generate_signing_key() else {
        return Vec::new();
    };
    let Ok(c) = protocol_spec::credential::mint(
        &sk,
        "fuzz-account",
        &[0; 32],
        std::time::Duration::from_secs(60),
    ) else {
        return Vec::new();
    };
    let mut out = vec![c.clone().into_bytes()];
    out.extend(c.split('.').map(|p| p.as_bytes().to_vec()));
    out
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("credential", seeds);
    },
    |data: &[u8]| {
    let (_, pk) = generate_signing_key().expect("key");
    let verifier = CredentialVerifier::new(&pk).expect("verifier");
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = verifier.verify(s, &[0; 32]);
    }
});

//! Arbitrary bytes as a downloaded backup: raw, or behind a valid header so
//! the chunk parser is reached, fed in fuzzer-chosen pieces. Must never
//! panic, and must never release plaintext from a chunk that did not
//! authenticate (with a fixed valid header, any released byte came from a
//! chunk the fuzzer could only have forged by breaking Poly1305).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::backup_format::{Params, StreamDecryptor, StreamEncryptor};

const KEY: [u8; 32] = [9; 32];

/// BACKUP-FORMAT.md's vector as it is (mode 0), and a real two-chunk
/// backup under another key (under this target's key it would rightly
/// release plaintext), fed in 128-byte pieces.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(v) = bkv_fuzz::spec_vector("backup-short") {
        out.push([&[0u8][..], &v].concat());
    }
    let mut ct = Vec::new();
    if let Ok(mut e) = StreamEncryptor::with_salt(&[8; 32], Params { chunk_log2: 12 }, [1; 32]) {
        let _ = e.update(&[0x61; 5000], &mut ct);
        let _ = e.finish(&mut ct);
    }
    out.push([&[0xfeu8][..], &ct].concat());
    out
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("backup_decryptor", seeds);
    },
    |data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut input = Vec::new();
    if mode & 1 == 1 {
        let mut e = StreamEncryptor::with_salt(&KEY, Params { chunk_log2: 12 }, [1; 32]).expect("params");
        e.update(&[], &mut input).expect("header");
    }
    input.extend_from_slice(rest);
    let step = 1 + (mode as usize >> 1);
    let mut d = StreamDecryptor::new(&KEY);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + step).min(input.len());
        match d.update(&input[pos..end], &mut out) {
            Ok(n) => pos += n,
            Err(_) => {
                assert!(out.is_empty(), "plaintext released from forged input");
                return;
            }
        }
    }
    let _ = d.finish(&mut out);
    assert!(out.is_empty(), "plaintext released from forged input");
});

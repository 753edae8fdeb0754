//! Arbitrary bytes as a downloaded backup: raw, or behind a valid header so
//! the chunk parser is reached, fed in fuzzer-chosen pieces. Must never
//! panic, and must never release plaintext from a chunk that did not
//! authenticate (with a fixed valid header, any released byte came from a
//! chunk the fuzzer could only have forged by breaking Poly1305).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::backup_format::{Params, StreamDecryptor, StreamEncryptor};

const KEY: [u8; 32] = [9; 32];

fuzz_target!(|data: &[u8]| {
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

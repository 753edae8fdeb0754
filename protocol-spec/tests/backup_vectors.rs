#![allow(clippy::unwrap_used)]
//! Test vectors published in BACKUP-FORMAT.md. If one of these fails, the
//! document and the code disagree.

use protocol_spec::backup_format::{decrypt_to_vec, Params, StreamEncryptor};
use sha2::{Digest, Sha256};

fn vector(name: &str) -> String {
    let spec = include_str!("../BACKUP-FORMAT.md");
    let start = spec
        .find(&format!("<!-- vector:{name} -->"))
        .unwrap_or_else(|| panic!("vector {name} missing"));
    let block = &spec[start..];
    let open = block.find("```").unwrap() + 3;
    let body = &block[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let close = body.find("```").unwrap();
    body[..close].split_whitespace().collect()
}

fn key() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

fn salt() -> [u8; 32] {
    std::array::from_fn(|i| 0x20 + i as u8)
}

fn encrypt(pt: &[u8]) -> Vec<u8> {
    let mut e = StreamEncryptor::with_salt(&key(), Params { chunk_log2: 12 }, salt()).unwrap();
    let mut out = Vec::new();
    e.update(pt, &mut out).unwrap();
    e.finish(&mut out).unwrap();
    out
}

#[test]
fn short_backup_vector() {
    let ct = encrypt(b"hello, backup");
    assert_eq!(hex::encode(&ct), vector("backup-short"));
    assert_eq!(decrypt_to_vec(&key(), &ct).unwrap(), b"hello, backup");
}

#[test]
fn two_chunk_backup_vector() {
    let pt: Vec<u8> = (0..5000u32).map(|i| (i % 256) as u8).collect();
    let ct = encrypt(&pt);
    assert_eq!(ct.len(), 108 + 4096 + 16 + 904 + 16);
    assert_eq!(
        hex::encode(Sha256::digest(&ct)),
        vector("backup-two-chunks-sha256")
    );
    assert_eq!(decrypt_to_vec(&key(), &ct).unwrap(), pt);
}

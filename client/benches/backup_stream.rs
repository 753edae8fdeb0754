//! Backup encryption throughput against the bare AEAD it is built on,
//! measured in the same run: `cargo bench -p client --bench backup_stream`.
//!
//! - `bare_aead/*`: XChaCha20-Poly1305 sealing/opening 64 KiB buffers in place
//!   (the unavoidable cost).
//! - `format/*`: the sans-IO STREAM encryptor/decryptor over the same bytes.
//! - `pipeline/*`: the async drivers (`client::backup_stream`) from an
//!   in-memory reader to a discarding writer.

use std::hint::black_box;

use chacha20poly1305_stream::aead::AeadInOut;
use chacha20poly1305_stream::{KeyInit, XChaCha20Poly1305, XNonce};
use client::{backup_stream, BackupKey};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use protocol_spec::backup_format::{
    decrypt_to_vec, encrypt_to_vec, Params, StreamDecryptor, StreamEncryptor,
};

const TOTAL: usize = 64 << 20;
const CHUNK: usize = 64 << 10;

fn bench(c: &mut Criterion) {
    let key = BackupKey::generate();
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let mut g = c.benchmark_group("backup_64MiB");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.sample_size(10);

    let aead = XChaCha20Poly1305::new(&(*key.as_bytes()).into());
    let nonce = XNonce::default();
    g.bench_function("bare_aead/seal", |b| {
        let mut buf = Vec::with_capacity(CHUNK + 16);
        b.iter(|| {
            for chunk in data.chunks(CHUNK) {
                buf.clear();
                buf.extend_from_slice(chunk);
                aead.encrypt_in_place(&nonce, &[], &mut buf).expect("seal");
                black_box(&buf);
            }
        })
    });
    let sealed: Vec<Vec<u8>> = data
        .chunks(CHUNK)
        .map(|c| {
            let mut v = c.to_vec();
            aead.encrypt_in_place(&nonce, &[], &mut v).expect("seal");
            v
        })
        .collect();
    g.bench_function("bare_aead/open", |b| {
        let mut buf = Vec::with_capacity(CHUNK + 16);
        b.iter(|| {
            for s in &sealed {
                buf.clear();
                buf.extend_from_slice(s);
                aead.decrypt_in_place(&nonce, &[], &mut buf).expect("open");
                black_box(&buf);
            }
        })
    });

    g.bench_function("format/encrypt", |b| {
        let mut out = Vec::with_capacity(2 * CHUNK);
        b.iter(|| {
            let mut e = StreamEncryptor::new(key.as_bytes(), Params::default()).expect("params");
            for piece in data.chunks(CHUNK) {
                out.clear();
                e.update(piece, &mut out).expect("update");
                black_box(&out);
            }
            out.clear();
            e.finish(&mut out).expect("finish");
        })
    });
    let ct = encrypt_to_vec(key.as_bytes(), Params::default(), &data).expect("encrypt");
    assert_eq!(
        decrypt_to_vec(key.as_bytes(), &ct).expect("decrypt").len(),
        TOTAL
    );
    g.bench_function("format/decrypt", |b| {
        let mut out = Vec::with_capacity(2 * CHUNK);
        b.iter(|| {
            let mut d = StreamDecryptor::new(key.as_bytes());
            let mut rest = &ct[..];
            while !rest.is_empty() {
                out.clear();
                let n = d.update(rest, &mut out).expect("update");
                rest = &rest[n..];
                black_box(&out);
            }
            out.clear();
            d.finish(&mut out).expect("finish");
        })
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    g.bench_function("pipeline/encrypt", |b| {
        b.iter(|| {
            rt.block_on(backup_stream::encrypt(
                &key,
                Params::default(),
                &data[..],
                tokio::io::sink(),
                &|_| {},
            ))
            .expect("encrypt")
        })
    });
    g.bench_function("pipeline/decrypt", |b| {
        b.iter(|| {
            rt.block_on(backup_stream::decrypt(
                &key,
                &ct[..],
                tokio::io::sink(),
                &|_| {},
            ))
            .expect("decrypt")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

#![allow(clippy::unwrap_used)]
//! A 1 GiB backup streams through encrypt and decrypt in constant memory.
//! Alone in its test binary so that the peak-RSS reading is its own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use client::{backup_stream, BackupKey};
use protocol_spec::backup_format::Params;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const GIB: u64 = 1 << 30;

/// A prime-length random block repeated: cheap to produce and to check,
/// and never aligned with the 64 KiB chunks.
const PATTERN_LEN: usize = 65_537;

fn pattern() -> Vec<u8> {
    let mut p = vec![0u8; PATTERN_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut p);
    p
}

struct Source<'a> {
    left: u64,
    offset: usize,
    pattern: &'a [u8],
}

impl AsyncRead for Source<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = (buf.remaining() as u64)
            .min(self.left)
            .min((PATTERN_LEN - self.offset) as u64) as usize;
        buf.put_slice(&self.pattern[self.offset..self.offset + n]);
        self.offset = (self.offset + n) % PATTERN_LEN;
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Checks what is written against the pattern, keeps nothing.
struct Sink<'a> {
    len: u64,
    pattern: &'a [u8],
    mismatch: bool,
}

impl AsyncWrite for Sink<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut rest = b;
        while !rest.is_empty() {
            let off = (self.len % PATTERN_LEN as u64) as usize;
            let n = rest.len().min(PATTERN_LEN - off);
            if rest[..n] != self.pattern[off..off + n] {
                self.mismatch = true;
            }
            self.len += n as u64;
            rest = &rest[n..];
        }
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Peak resident set size (VmHWM) in KiB.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "current_thread")]
async fn one_gib_round_trip_in_constant_memory() {
    let key = BackupKey::generate();
    let pattern = pattern();
    let before = peak_rss_kib();

    // Encrypt 1 GiB into a pipe whose other end decrypts concurrently, so
    // neither the plaintext nor the ciphertext is ever held whole.
    let (ct_w, ct_r) = tokio::io::duplex(256 * 1024);
    let enc = async {
        let mut w = ct_w;
        let n = backup_stream::encrypt(
            &key,
            Params::default(),
            Source {
                left: GIB,
                offset: 0,
                pattern: &pattern,
            },
            &mut w,
            &|_| {},
        )
        .await
        .unwrap();
        drop(w);
        n
    };
    let dec = async {
        let mut sink = Sink {
            len: 0,
            pattern: &pattern,
            mismatch: false,
        };
        backup_stream::decrypt(&key, ct_r, &mut sink, &|_| {})
            .await
            .unwrap();
        sink
    };
    let (n, sink) = tokio::join!(enc, dec);
    assert_eq!(n, GIB);
    assert_eq!(sink.len, GIB);

    assert!(!sink.mismatch, "decrypted bytes differ from the input");

    if let (Some(b), Some(a)) = (before, peak_rss_kib()) {
        // Chunk (64 KiB) + read buffers + pipe: well under 16 MiB of growth.
        assert!(
            a.saturating_sub(b) < 16 * 1024,
            "peak RSS grew by {} KiB",
            a - b
        );
    }
}

#![allow(clippy::unwrap_used)]
//! The backup stream through the async drivers and the cloud store: sizes,
//! tampering, atomic and versioned uploads.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use client::backup_stream;
use client::{BackupKey, BackupStore, ClientError, FormatError};
use protocol_spec::backup_format::{Params, HEADER_LEN, TAG_LEN};
use tokio::io::{AsyncRead, ReadBuf};

fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect()
}

async fn enc(key: &BackupKey, pt: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    backup_stream::encrypt(key, Params::default(), pt, &mut out, &|_| {})
        .await
        .unwrap();
    out
}

async fn dec(key: &BackupKey, ct: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    backup_stream::decrypt(key, ct, &mut out, &|_| {}).await?;
    Ok(out)
}

const CHUNK: usize = 64 * 1024;

#[tokio::test]
async fn round_trips_empty_one_byte_and_chunk_boundaries() {
    let key = BackupKey::generate();
    for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
        let pt = data(n);
        let ct = enc(&key, &pt).await;
        assert_eq!(
            ct.len(),
            HEADER_LEN + n + (n / CHUNK + 1) * TAG_LEN,
            "n={n}"
        );
        assert_eq!(dec(&key, &ct).await.unwrap(), pt, "n={n}");
    }
}

fn backup_err(r: Result<Vec<u8>, ClientError>) -> FormatError {
    match r {
        Err(ClientError::Backup(e)) => e,
        other => panic!("expected a backup format error, got {other:?}"),
    }
}

#[tokio::test]
async fn each_tampering_case_has_its_own_error() {
    let key = BackupKey::generate();
    let pt = data(4 * CHUNK + 100);
    let ct = enc(&key, &pt).await;
    let full = CHUNK + TAG_LEN;

    // Wrong key: reported as a wrong key, not as corruption.
    assert_eq!(
        backup_err(dec(&BackupKey::generate(), &ct).await),
        FormatError::WrongKey
    );

    // Header tampering (chunk size byte).
    let mut h = ct.clone();
    h[10] = 17;
    assert_eq!(backup_err(dec(&key, &h).await), FormatError::HeaderTampered);

    // Truncation at a chunk boundary and inside the last chunk.
    assert_eq!(
        backup_err(dec(&key, &ct[..HEADER_LEN + 2 * full]).await),
        FormatError::Truncated { complete_chunks: 2 }
    );
    assert!(matches!(
        backup_err(dec(&key, &ct[..ct.len() - 5]).await),
        FormatError::Truncated { .. }
    ));

    // Reordering two chunks.
    let mut r = ct.clone();
    let (a, b) = (HEADER_LEN + full, HEADER_LEN + 3 * full);
    let tmp = r[a..a + full].to_vec();
    r.copy_within(b..b + full, a);
    r[b..b + full].copy_from_slice(&tmp);
    assert_eq!(
        backup_err(dec(&key, &r).await),
        FormatError::Reordered {
            found_at: 1,
            belongs_at: 3
        }
    );

    // A chunk swapped in from another backup of the same data and key.
    let other = enc(&key, &pt).await;
    let mut s = ct.clone();
    s[a..a + full].copy_from_slice(&other[a..a + full]);
    assert_eq!(
        backup_err(dec(&key, &s).await),
        FormatError::ChunkCorrupted { index: 1 }
    );
}

/// A reader that yields `n` bytes and then fails, like a disk error mid-backup.
struct FailingReader {
    left: usize,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(io::Error::other("disk on fire")));
        }
        let n = self.left.min(buf.remaining()).min(10_000);
        buf.put_slice(&vec![0x5a; n]);
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn uploads_are_atomic_and_versioned() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap().to_owned();
    let store = BackupStore::open(&loc, "alice@example", 3).unwrap();
    let key = BackupKey::generate();
    assert_eq!(store.latest().await.unwrap(), None);

    let mut ids = Vec::new();
    for i in 0..5u8 {
        let v = store
            .upload(&key, &data(1000 + i as usize)[..], &|_| {})
            .await
            .unwrap();
        ids.push(v.id);
    }
    let kept: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(
        kept,
        ids[2..].to_vec(),
        "the newest three are kept, in order"
    );

    // A failed upload publishes nothing and prunes nothing.
    let failed = store
        .upload(&key, FailingReader { left: 300_000 }, &|_| {})
        .await;
    assert!(matches!(failed, Err(ClientError::Io { .. })), "{failed:?}");
    let after: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(after, kept);

    let latest = store.latest().await.unwrap().unwrap();
    let mut out = Vec::new();
    store
        .download(&latest, &key, &mut out, &|_| {})
        .await
        .unwrap();
    assert_eq!(out, data(1004));

    // Nothing in the folder holds the plaintext (the drive sees ciphertext only).
    for e in walk(dir.path()) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes.windows(64).any(|w| w == &data(1004)[200..264]),
            "{} holds plaintext",
            e.display()
        );
    }
}

/// A phone whose clock runs behind the one that made the newest backup
/// (or two uploads in one millisecond) must still publish the newest version.
#[tokio::test]
async fn a_new_upload_sorts_last_even_with_a_clock_behind() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap().to_owned();
    let store = BackupStore::open(&loc, "bob@example", 5).unwrap();
    let key = BackupKey::generate();
    let first = store.upload(&key, &data(10)[..], &|_| {}).await.unwrap();
    // Move the stored version a year into the future, as another phone with
    // a fast clock would have named it.
    let backups = dir.path().join("bob@example").join("backups");
    let (ms, rnd) = first.id.split_once('-').unwrap();
    let future = ms.parse::<u64>().unwrap() + 365 * 24 * 3600 * 1000;
    std::fs::rename(
        backups.join(format!("{}.bkv", first.id)),
        backups.join(format!("{future:016}-{rnd}.bkv")),
    )
    .unwrap();
    let second = store.upload(&key, &data(20)[..], &|_| {}).await.unwrap();
    let latest = store.latest().await.unwrap().unwrap();
    assert_eq!(latest.id, second.id);
    assert!(second.id.starts_with(&format!("{:016}-", future + 1)));
    let mut out = Vec::new();
    store
        .download(&latest, &key, &mut out, &|_| {})
        .await
        .unwrap();
    assert_eq!(out, data(20));
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            v.extend(walk(&path));
        } else {
            v.push(path);
        }
    }
    v
}

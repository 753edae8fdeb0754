//! The encrypted backup format (`BACKUP-FORMAT.md`), as sans-IO streaming
//! state machines: [`StreamEncryptor`] turns plaintext bytes into a header
//! and STREAM-encrypted chunks, [`StreamDecryptor`] turns them back, and both
//! hold at most one chunk in memory whatever the backup's size.
//!
//! The chunk cipher is the STREAM construction of `aead-stream` (BE32 flavour)
//! over XChaCha20-Poly1305; keys come from HKDF-SHA256 over the 256-bit backup
//! key and the header's per-backup salt. This module never reads files or
//! sockets, never returns unauthenticated plaintext, and never allocates more
//! than one chunk plus a header for any input, however hostile.

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305_stream::{KeyInit, XChaCha20Poly1305};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{rngs::OsRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

/// First eight bytes of every backup.
pub const MAGIC: [u8; 8] = *b"BKV-BAK\0";
/// Format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Cipher suite 1: HKDF-SHA256, XChaCha20-Poly1305, STREAM BE32, HMAC-SHA256 header tag.
pub const SUITE_XCHACHA20POLY1305_STREAM_BE32: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 108;
/// Poly1305 tag appended to every chunk.
pub const TAG_LEN: usize = 16;
/// Smallest allowed chunk size exponent (4 KiB).
pub const MIN_CHUNK_LOG2: u8 = 12;
/// Largest allowed chunk size exponent (1 MiB): bounds a reader's memory.
pub const MAX_CHUNK_LOG2: u8 = 20;
/// Default chunk size exponent (64 KiB).
pub const DEFAULT_CHUNK_LOG2: u8 = 16;
/// How far from its place the decryptor looks for a chunk that fails to
/// authenticate, to tell "reordered" from "modified or foreign" (error path only).
pub const REORDER_SEARCH_WINDOW: u32 = 64;

const SALT_LEN: usize = 32;
const INFO_PAYLOAD: &[u8] = b"bkv backup v1 payload key";
const INFO_HEADER: &[u8] = b"bkv backup v1 header key";
const INFO_CHECK: &[u8] = b"bkv backup v1 key check";

type Stream = StreamBE32<XChaCha20Poly1305>;

/// Why a backup could not be written or read. Each tampering case has its own
/// variant so that a user (and a test) can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The bytes do not start with [`MAGIC`].
    #[error("this is not an encrypted backup (unknown file signature)")]
    NotABackup,
    /// A version or cipher suite this code does not know.
    #[error("this backup uses format version {version}, suite {suite}, which this app cannot read; update the app")]
    Unsupported {
        /// Version byte.
        version: u8,
        /// Suite byte.
        suite: u8,
    },
    /// The key does not open this backup.
    #[error("wrong key: this backup key does not open this backup (check the key, or that this is your backup)")]
    WrongKey,
    /// The key is right but a header field was changed.
    #[error("the backup's header was modified after it was written; the backup cannot be trusted")]
    HeaderTampered,
    /// The stream ended before its final chunk.
    #[error("the backup is incomplete: it ends after {complete_chunks} chunk(s) without its final chunk (cut short during upload or download, or its end was damaged)")]
    Truncated {
        /// Chunks that did authenticate before the end.
        complete_chunks: u32,
    },
    /// A chunk of this backup sits at the wrong position.
    #[error("the backup was rearranged: the chunk at position {found_at} belongs at position {belongs_at}")]
    Reordered {
        /// Where it was found.
        found_at: u32,
        /// Where it authenticates.
        belongs_at: u32,
    },
    /// A chunk authenticates nowhere: it was modified or comes from another backup.
    #[error("chunk {index} of the backup failed authentication: it was modified, or mixed in from another backup")]
    ChunkCorrupted {
        /// Position of the chunk.
        index: u32,
    },
    /// More than 2^32 chunks.
    #[error("backup too large for one stream (more than 2^32 chunks)")]
    TooLarge,
    /// Parameters out of range.
    #[error("invalid backup parameters: {0}")]
    BadParameters(&'static str),
    /// The state machine was used after it finished or failed.
    #[error("the backup stream was already finished or failed")]
    Finished,
}

/// Encryption parameters a writer chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Plaintext chunk size is `1 << chunk_log2` bytes.
    pub chunk_log2: u8,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            chunk_log2: DEFAULT_CHUNK_LOG2,
        }
    }
}

struct Keys {
    stream: Stream,
    header_key: Zeroizing<[u8; 32]>,
    key_check: [u8; 32],
}

fn derive(backup_key: &[u8; 32], salt: &[u8; SALT_LEN]) -> Keys {
    let hk = Hkdf::<Sha256>::new(Some(salt), backup_key);
    let mut payload = Zeroizing::new([0u8; 32]);
    let mut header_key = Zeroizing::new([0u8; 32]);
    let mut key_check = [0u8; 32];
    // Expanding 32 bytes from HKDF-SHA256 cannot fail (limit is 255 * 32).
    for (info, out) in [
        (INFO_PAYLOAD, &mut *payload),
        (INFO_HEADER, &mut *header_key),
        (INFO_CHECK, &mut key_check),
    ] {
        if hk.expand(info, out).is_err() {
            unreachable!("32-byte HKDF-SHA256 output is always in range");
        }
    }
    let aead = XChaCha20Poly1305::new(&(*payload).into());
    // The payload key is unique per backup (fresh 256-bit salt), so a fixed
    // nonce prefix never repeats a (key, nonce) pair.
    let stream = Stream::from_aead(aead, &Default::default());
    Keys {
        stream,
        header_key,
        key_check,
    }
}

fn header_tag(header_key: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(header_key) else {
        unreachable!("HMAC accepts any key length");
    };
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// Constant-time equality for fixed-size secrets-derived values.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Plaintext in, header and ciphertext chunks out.
///
/// Feed plaintext with [`StreamEncryptor::update`] and end with
/// [`StreamEncryptor::finish`]; each appends output bytes to `out`. Every
/// full chunk is sealed as soon as it fills, so the final chunk is always
/// shorter than the chunk size (possibly empty).
pub struct StreamEncryptor {
    stream: Stream,
    chunk_size: usize,
    buf: Vec<u8>,
    position: u32,
    header: Option<[u8; HEADER_LEN]>,
    finished: bool,
}

impl std::fmt::Debug for StreamEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncryptor")
            .field("chunk_size", &self.chunk_size)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl StreamEncryptor {
    /// Starts a backup under `backup_key` with a fresh random salt.
    pub fn new(backup_key: &[u8; 32], params: Params) -> Result<Self, FormatError> {
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        Self::with_salt(backup_key, params, salt)
    }

    /// Starts a backup with a given salt. Only for test vectors: reusing a
    /// salt with the same key reuses nonces.
    pub fn with_salt(
        backup_key: &[u8; 32],
        params: Params,
        salt: [u8; SALT_LEN],
    ) -> Result<Self, FormatError> {
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&params.chunk_log2) {
            return Err(FormatError::BadParameters("chunk size out of range"));
        }
        let keys = derive(backup_key, &salt);
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8] = VERSION;
        header[9] = SUITE_XCHACHA20POLY1305_STREAM_BE32;
        header[10] = params.chunk_log2;
        header[11] = 0;
        header[12..44].copy_from_slice(&salt);
        header[44..76].copy_from_slice(&keys.key_check);
        let tag = header_tag(&keys.header_key, &header[..76]);
        header[76..].copy_from_slice(&tag);
        let chunk_size = 1usize << params.chunk_log2;
        Ok(Self {
            stream: keys.stream,
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG_LEN),
            position: 0,
            header: Some(header),
            finished: false,
        })
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    fn emit_header(&mut self, out: &mut Vec<u8>) {
        if let Some(h) = self.header.take() {
            out.extend_from_slice(&h);
        }
    }

    fn seal(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), FormatError> {
        self.stream
            .encrypt_in_place(self.position, last, &[], &mut self.buf)
            .map_err(|_| FormatError::TooLarge)?;
        out.extend_from_slice(&self.buf);
        self.buf.clear();
        if !last {
            self.position = self.position.checked_add(1).ok_or(FormatError::TooLarge)?;
        }
        Ok(())
    }

    /// Consumes all of `input`, appending the header (first call) and any
    /// chunks that filled up to `out`.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), FormatError> {
        if self.finished {
            return Err(FormatError::Finished);
        }
        self.emit_header(out);
        while !input.is_empty() {
            let take = (self.chunk_size - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.buf.len() == self.chunk_size {
                self.seal(false, out)?;
            }
        }
        Ok(())
    }

    /// Seals the final (short, possibly empty) chunk.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        if self.finished {
            return Err(FormatError::Finished);
        }
        self.emit_header(out);
        self.finished = true;
        self.seal(true, out)
    }
}

/// Parsed, authenticated header.
struct Opened {
    stream: Stream,
    chunk_ct_len: usize,
}

fn open_header(backup_key: &[u8; 32], h: &[u8; HEADER_LEN]) -> Result<Opened, FormatError> {
    if h[..8] != MAGIC {
        return Err(FormatError::NotABackup);
    }
    if h[8] != VERSION || h[9] != SUITE_XCHACHA20POLY1305_STREAM_BE32 {
        return Err(FormatError::Unsupported {
            version: h[8],
            suite: h[9],
        });
    }
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&h[12..44]);
    let keys = derive(backup_key, &salt);
    if !ct_eq(&keys.key_check, &h[44..76]) {
        return Err(FormatError::WrongKey);
    }
    if !ct_eq(&header_tag(&keys.header_key, &h[..76]), &h[76..]) {
        return Err(FormatError::HeaderTampered);
    }
    // Authenticated, so out-of-range values were written deliberately.
    if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&h[10]) || h[11] != 0 {
        return Err(FormatError::BadParameters(
            "chunk size or flags out of range",
        ));
    }
    Ok(Opened {
        stream: keys.stream,
        chunk_ct_len: (1usize << h[10]) + TAG_LEN,
    })
}

/// Ciphertext in, authenticated plaintext out.
///
/// Feed bytes with [`StreamDecryptor::update`]; it returns how many it
/// consumed (it stops after each chunk so that `out` holds at most one
/// chunk) — call again with the rest. [`StreamDecryptor::finish`] checks the
/// final chunk. Plaintext is only ever appended after its chunk authenticated,
/// but a caller must still treat everything written as untrusted until
/// `finish` succeeds (the end of the stream proves nothing was cut off).
pub struct StreamDecryptor {
    key: Zeroizing<[u8; 32]>,
    header: Vec<u8>,
    opened: Option<Opened>,
    buf: Vec<u8>,
    position: u32,
    failed: bool,
    finished: bool,
}

impl std::fmt::Debug for StreamDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecryptor")
            .field("position", &self.position)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StreamDecryptor {
    /// A decryptor for a backup under `backup_key`.
    pub fn new(backup_key: &[u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(*backup_key),
            header: Vec::with_capacity(HEADER_LEN),
            opened: None,
            buf: Vec::new(),
            position: 0,
            failed: false,
            finished: false,
        }
    }

    /// Chunks authenticated so far.
    pub fn chunks_done(&self) -> u32 {
        self.position
    }

    fn fail<T>(&mut self, e: FormatError) -> Result<T, FormatError> {
        self.failed = true;
        self.buf = Vec::new();
        Err(e)
    }

    /// Consumes a prefix of `input` (returns its length) and appends at most
    /// one chunk of authenticated plaintext to `out`.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, FormatError> {
        if self.failed || self.finished {
            return Err(FormatError::Finished);
        }
        let mut used = 0;
        if self.opened.is_none() {
            let take = (HEADER_LEN - self.header.len()).min(input.len());
            self.header.extend_from_slice(&input[..take]);
            used += take;
            if self.header.len() < HEADER_LEN {
                if self.header.len() >= 8 && self.header[..8] != MAGIC {
                    return self.fail(FormatError::NotABackup);
                }
                return Ok(used);
            }
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.header);
            match open_header(&self.key, &h) {
                Ok(o) => {
                    self.buf = Vec::with_capacity(o.chunk_ct_len);
                    self.opened = Some(o);
                }
                Err(e) => return self.fail(e),
            }
        }
        let Some(o) = &self.opened else {
            return Ok(used);
        };
        let ct_len = o.chunk_ct_len;
        let rest = &input[used..];
        let take = (ct_len - self.buf.len()).min(rest.len());
        self.buf.extend_from_slice(&rest[..take]);
        used += take;
        if self.buf.len() == ct_len {
            // A full-size chunk is never the final one (the final chunk is short).
            if o.stream
                .decrypt_in_place(self.position, false, &[], &mut self.buf)
                .is_err()
            {
                let e = self.classify_failure();
                return self.fail(e);
            }
            out.extend_from_slice(&self.buf);
            self.buf.clear();
            self.position = match self.position.checked_add(1) {
                Some(p) => p,
                None => return self.fail(FormatError::TooLarge),
            };
        }
        Ok(used)
    }

    /// Tells a reordered chunk (authenticates at another position of this
    /// backup) from a modified or foreign one. Error path only, bounded work.
    fn classify_failure(&self) -> FormatError {
        let Some(o) = &self.opened else {
            return FormatError::Finished;
        };
        let lo = self.position.saturating_sub(REORDER_SEARCH_WINDOW);
        let hi = self.position.saturating_add(REORDER_SEARCH_WINDOW);
        for p in lo..=hi {
            for last in [false, true] {
                if p == self.position {
                    continue;
                }
                let mut trial = self.buf.clone();
                if o.stream.decrypt_in_place(p, last, &[], &mut trial).is_ok() {
                    return FormatError::Reordered {
                        found_at: self.position,
                        belongs_at: p,
                    };
                }
            }
        }
        FormatError::ChunkCorrupted {
            index: self.position,
        }
    }

    /// Checks the final chunk and appends its plaintext.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), FormatError> {
        if self.failed || self.finished {
            return Err(FormatError::Finished);
        }
        let Some(o) = &self.opened else {
            if self.header.len() >= 8 && self.header[..8] == MAGIC {
                return self.fail(FormatError::Truncated { complete_chunks: 0 });
            }
            return self.fail(FormatError::NotABackup);
        };
        if self.buf.len() < TAG_LEN
            || o.stream
                .decrypt_in_place(self.position, true, &[], &mut self.buf)
                .is_err()
        {
            return self.fail(FormatError::Truncated {
                complete_chunks: self.position,
            });
        }
        out.extend_from_slice(&self.buf);
        self.buf = Vec::new();
        self.finished = true;
        Ok(())
    }
}

/// Encrypts a whole buffer (tests and small payloads).
pub fn encrypt_to_vec(
    backup_key: &[u8; 32],
    params: Params,
    plaintext: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut enc = StreamEncryptor::new(backup_key, params)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN * 2);
    enc.update(plaintext, &mut out)?;
    enc.finish(&mut out)?;
    Ok(out)
}

/// Decrypts a whole buffer (tests and small payloads).
pub fn decrypt_to_vec(
    backup_key: &[u8; 32],
    mut ciphertext: &[u8],
) -> Result<Vec<u8>, FormatError> {
    let mut dec = StreamDecryptor::new(backup_key);
    let mut out = Vec::with_capacity(ciphertext.len());
    while !ciphertext.is_empty() {
        let n = dec.update(ciphertext, &mut out)?;
        ciphertext = &ciphertext[n..];
    }
    dec.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [7u8; 32];
    const SMALL: Params = Params { chunk_log2: 12 };
    const CS: usize = 1 << 12;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_interesting_size() {
        for n in [0, 1, CS - 1, CS, CS + 1, 2 * CS, 3 * CS - 1, 5 * CS + 17] {
            let ct = encrypt_to_vec(&K, SMALL, &data(n)).unwrap();
            // Full chunks, then a short final chunk.
            assert_eq!(ct.len(), HEADER_LEN + n + (n / CS + 1) * TAG_LEN, "n={n}");
            assert_eq!(decrypt_to_vec(&K, &ct).unwrap(), data(n), "n={n}");
        }
    }

    #[test]
    fn feeding_one_byte_at_a_time_works() {
        let pt = data(2 * CS + 5);
        let ct = encrypt_to_vec(&K, SMALL, &pt).unwrap();
        let mut dec = StreamDecryptor::new(&K);
        let mut out = Vec::new();
        for b in &ct {
            assert_eq!(dec.update(std::slice::from_ref(b), &mut out).unwrap(), 1);
        }
        dec.finish(&mut out).unwrap();
        assert_eq!(out, pt);
    }

    #[test]
    fn wrong_key_is_wrong_key() {
        let ct = encrypt_to_vec(&K, SMALL, b"hello").unwrap();
        assert_eq!(decrypt_to_vec(&[8u8; 32], &ct), Err(FormatError::WrongKey));
    }

    #[test]
    fn header_tampering_is_detected() {
        let ct = encrypt_to_vec(&K, SMALL, &data(CS * 2)).unwrap();
        for i in [10usize, 11, 80, 107] {
            let mut bad = ct.clone();
            bad[i] ^= 1;
            assert_eq!(
                decrypt_to_vec(&K, &bad),
                Err(FormatError::HeaderTampered),
                "byte {i}"
            );
        }
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(decrypt_to_vec(&K, &bad), Err(FormatError::NotABackup));
        let mut bad = ct.clone();
        bad[8] = 2;
        assert!(matches!(
            decrypt_to_vec(&K, &bad),
            Err(FormatError::Unsupported { version: 2, .. })
        ));
    }

    #[test]
    fn truncation_is_detected_at_and_between_chunk_boundaries() {
        let ct = encrypt_to_vec(&K, SMALL, &data(CS * 3 + 100)).unwrap();
        let full = CS + TAG_LEN;
        for cut in [
            HEADER_LEN,
            HEADER_LEN + 1,
            HEADER_LEN + full,
            HEADER_LEN + 2 * full,
            HEADER_LEN + 3 * full,
            ct.len() - 1,
        ] {
            assert!(
                matches!(
                    decrypt_to_vec(&K, &ct[..cut]),
                    Err(FormatError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        assert_eq!(
            decrypt_to_vec(&K, &ct[..HEADER_LEN + 2 * full]),
            Err(FormatError::Truncated { complete_chunks: 2 })
        );
        assert_eq!(
            decrypt_to_vec(&K, &ct[..40]),
            Err(FormatError::Truncated { complete_chunks: 0 })
        );
    }

    #[test]
    fn reordering_is_detected() {
        let ct = encrypt_to_vec(&K, SMALL, &data(CS * 3 + 100)).unwrap();
        let full = CS + TAG_LEN;
        let mut bad = ct.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + full);
        let first = ct[a..a + full].to_vec();
        bad.copy_within(b..b + full, a);
        bad[b..b + full].copy_from_slice(&first);
        assert_eq!(
            decrypt_to_vec(&K, &bad),
            Err(FormatError::Reordered {
                found_at: 0,
                belongs_at: 1
            })
        );
    }

    #[test]
    fn chunks_from_another_backup_are_rejected() {
        let pt = data(CS * 3);
        let a = encrypt_to_vec(&K, SMALL, &pt).unwrap();
        let b = encrypt_to_vec(&K, SMALL, &pt).unwrap();
        let full = CS + TAG_LEN;
        let mut mixed = a.clone();
        let at = HEADER_LEN + full;
        mixed[at..at + full].copy_from_slice(&b[at..at + full]);
        assert_eq!(
            decrypt_to_vec(&K, &mixed),
            Err(FormatError::ChunkCorrupted { index: 1 })
        );
        let mut flipped = a.clone();
        flipped[at + 3] ^= 0x80;
        assert_eq!(
            decrypt_to_vec(&K, &flipped),
            Err(FormatError::ChunkCorrupted { index: 1 })
        );
    }

    #[test]
    fn garbage_is_not_a_backup_and_nothing_is_output() {
        let mut dec = StreamDecryptor::new(&K);
        let mut out = Vec::new();
        assert_eq!(
            dec.update(b"PK\x03\x04 zip file", &mut out),
            Err(FormatError::NotABackup)
        );
        assert!(out.is_empty());
        assert_eq!(dec.update(b"more", &mut out), Err(FormatError::Finished));
    }
}

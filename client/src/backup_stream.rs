//! Moves bytes through the backup format's sans-IO state machines
//! (`protocol_spec::backup_format`): any `AsyncRead` in, any `AsyncWrite`
//! out, one chunk in memory at a time.
//!
//! Must never: hold more than a chunk and a read buffer, or report success
//! for a decryption whose final chunk did not authenticate.

use protocol_spec::backup_format::{Params, StreamDecryptor, StreamEncryptor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{BackupKey, ClientError};

const READ_BUF: usize = 64 * 1024;

/// Encrypts everything `reader` yields into `writer` (header and chunks),
/// flushing but not shutting down `writer`. `progress` is called with the
/// plaintext bytes read so far. Returns the plaintext length.
pub async fn encrypt<R, W>(
    key: &BackupKey,
    params: Params,
    mut reader: R,
    mut writer: W,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut enc = StreamEncryptor::new(key.as_bytes(), params)?;
    let mut input = vec![0u8; READ_BUF];
    let mut out = Vec::with_capacity(READ_BUF + enc.chunk_size() + 256);
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut input)
            .await
            .map_err(ClientError::io("reading the data to back up"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        enc.update(&input[..n], &mut out)?;
        if !out.is_empty() {
            write_all(&mut writer, &out).await?;
            out.clear();
        }
        progress(total);
    }
    enc.finish(&mut out)?;
    write_all(&mut writer, &out).await?;
    writer
        .flush()
        .await
        .map_err(ClientError::io("writing the backup"))?;
    Ok(total)
}

async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, b: &[u8]) -> Result<(), ClientError> {
    w.write_all(b).await.map_err(ClientError::io("writing"))
}

/// Decrypts a backup from `reader` into `writer`. `progress` gets the
/// ciphertext bytes read so far. Returns the plaintext length. On error,
/// whatever was already written must be discarded by the caller: only a
/// successful return proves the stream was complete.
pub async fn decrypt<R, W>(
    key: &BackupKey,
    mut reader: R,
    mut writer: W,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, ClientError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut dec = StreamDecryptor::new(key.as_bytes());
    let mut input = vec![0u8; READ_BUF];
    let mut out = Vec::new();
    let (mut read, mut total) = (0u64, 0u64);
    loop {
        let n = reader
            .read(&mut input)
            .await
            .map_err(ClientError::io("reading the backup"))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        let mut rest = &input[..n];
        while !rest.is_empty() {
            let used = dec.update(rest, &mut out)?;
            rest = &rest[used..];
            if !out.is_empty() {
                total += out.len() as u64;
                write_all(&mut writer, &out).await?;
                out.clear();
            }
        }
        progress(read);
    }
    dec.finish(&mut out)?;
    total += out.len() as u64;
    write_all(&mut writer, &out).await?;
    writer
        .flush()
        .await
        .map_err(ClientError::io("writing the restored data"))?;
    Ok(total)
}

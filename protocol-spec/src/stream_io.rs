//! Moves frames over tokio byte streams (quinn's `RecvStream`/`SendStream`):
//! a 4-byte big-endian length, then the body. The only I/O in this crate,
//! and the one length-prefixed framing of the workspace: the client and
//! gateway protocol uses it with [`crate::framing`]'s 16 KiB limit, the
//! replicas' peer links with their own limit ([`read_frame_limited`]).
//!
//! Must never: allocate from a length the peer announced before the bytes
//! arrive (the body buffer grows as they do), or accept a body over the
//! limit.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::framing::{self, FrameError, HEADER_LEN};

/// Errors reading or writing a framed stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Framing or decoding problem (the peer's fault).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The transport failed.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame body (at most [`crate::limits::MAX_FRAME_LEN`] bytes).
/// `Ok(None)` if the stream ended cleanly before a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, StreamError> {
    read_frame_limited(r, crate::limits::MAX_FRAME_LEN).await
}

/// The most a reader reserves before a body's bytes arrive; beyond it the
/// buffer grows as they do. 1 KiB holds every Noise handshake frame but the
/// largest credentials and most requests; a phone that announces the full
/// 16 KiB and sends nothing (the handshake flood of issue 13 held 3,000 of
/// them, 16 KiB each) now costs 1 KiB.
const FIRST_RESERVE: usize = 1024;

/// Reads one frame body of at most `max` bytes. `Ok(None)` if the stream
/// ended cleanly before a frame. A peer that announces `max` bytes and
/// sends fewer costs at most what it sent (plus [`FIRST_RESERVE`]).
pub async fn read_frame_limited<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, StreamError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                have: got,
                need: HEADER_LEN,
            }
            .into());
        }
        got += n;
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max }.into());
    }
    let mut body = Vec::with_capacity(len.min(FIRST_RESERVE));
    let have = (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if have < len {
        return Err(FrameError::Truncated {
            have: HEADER_LEN + have,
            need: HEADER_LEN + len,
        }
        .into());
    }
    Ok(Some(body))
}

/// Writes `body` with its length prefix, refusing one over `max` bytes.
pub async fn write_body_limited<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
    max: usize,
) -> Result<(), StreamError> {
    if body.len() > max {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max,
        }
        .into());
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max,
    })?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(body).await?;
    Ok(())
}

/// Reads one frame and decodes it as `M`; a missing frame is `Truncated`.
pub async fn read_message<M: prost::Message + Default, R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<M, StreamError> {
    let body = read_frame(r).await?.ok_or(FrameError::Truncated {
        have: 0,
        need: HEADER_LEN,
    })?;
    Ok(framing::decode(&body)?)
}

/// Writes one already-encoded frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
) -> Result<(), StreamError> {
    w.write_all(frame).await?;
    Ok(())
}

/// Encodes and writes one message.
pub async fn write_message<M: prost::Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    m: &M,
) -> Result<(), StreamError> {
    write_frame(w, &framing::encode(m)?).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_announced_frame_that_never_comes_is_truncated_not_allocated() {
        let mut bytes = (16u32 * 1024 * 1024).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"only this");
        let err = read_frame_limited(&mut bytes.as_slice(), 16 * 1024 * 1024)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StreamError::Frame(FrameError::Truncated { have: 13, .. })
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_is_refused_both_ways() {
        let bytes = 5000u32.to_be_bytes();
        let err = read_frame_limited(&mut bytes.as_slice(), 4096)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            StreamError::Frame(FrameError::TooLarge {
                len: 5000,
                max: 4096
            })
        ));
        let mut out = Vec::new();
        assert!(write_body_limited(&mut out, &[0; 5000], 4096)
            .await
            .is_err());
        write_body_limited(&mut out, b"abc", 4096).await.unwrap();
        assert_eq!(
            read_frame_limited(&mut out.as_slice(), 4096).await.unwrap(),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            read_frame_limited(&mut [].as_slice(), 4096).await.unwrap(),
            None
        );
    }
}

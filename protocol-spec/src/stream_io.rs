//! Moves frames over tokio byte streams (quinn's `RecvStream`/`SendStream`).
//! The only I/O in this crate; the limits are those of [`crate::framing`].

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

/// Reads one frame body. `Ok(None)` if the stream ended cleanly before a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, StreamError> {
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
    let len = framing::body_len(header)?;
    let mut body = vec![0u8; len];
    let mut have = 0;
    while have < len {
        let n = r.read(&mut body[have..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                have: HEADER_LEN + have,
                need: HEADER_LEN + len,
            }
            .into());
        }
        have += n;
    }
    Ok(Some(body))
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

//! Length-prefixed framing: a 4-byte big-endian body length, then a protobuf
//! body of at most [`MAX_FRAME_LEN`] bytes.
//!
//! The decoder is sans-IO: feed it bytes as they arrive, take frames out. It
//! rejects an oversized length *before* buffering the body, so a hostile peer
//! cannot make it allocate more than one maximum frame.

use prost::Message;

use crate::limits::MAX_FRAME_LEN;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why bytes could not be turned into a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces a body larger than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({have} of {need} bytes received)")]
    Truncated {
        /// Bytes received of the frame (header included).
        have: usize,
        /// Bytes the frame needed (header included).
        need: usize,
    },
    /// The body is not a valid protobuf message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message decoded but lacks a required part or breaks a rule of the spec.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// Encodes `msg` as one frame (prefix + body).
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut out)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(out)
}

/// Decodes a frame body as `M`.
pub fn decode<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    if body.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    M::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads the body length from a 4-byte prefix, enforcing the limit.
pub fn body_len(header: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Incremental frame decoder for a byte stream.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes. Fails as soon as a length prefix is over the limit.
    pub fn push(&mut self, data: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.buf[..HEADER_LEN]);
            let len = body_len(h)?;
            // Never hold more than one maximal frame plus one read's worth.
            if self.buf.len() > HEADER_LEN + len + MAX_FRAME_LEN + HEADER_LEN {
                return Err(FrameError::TooLarge {
                    len: self.buf.len(),
                    max: MAX_FRAME_LEN,
                });
            }
        }
        Ok(())
    }

    /// Takes the next complete frame body, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[..HEADER_LEN]);
        let len = body_len(h)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(body))
    }

    /// Call when the stream ended: fails if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = if self.buf.len() >= HEADER_LEN {
            let mut h = [0u8; HEADER_LEN];
            h.copy_from_slice(&self.buf[..HEADER_LEN]);
            HEADER_LEN + body_len(h)?
        } else {
            HEADER_LEN
        };
        Err(FrameError::Truncated {
            have: self.buf.len(),
            need,
        })
    }
}

/// Checks that a decoded `Request` is well-formed before anything acts on it:
/// a kind is present and every byte field has its exact size for this suite.
pub fn validate_request(req: &crate::msg::Request) -> Result<(), FrameError> {
    use crate::msg::request::Kind;
    use crate::opaque_profile as op;
    let check = |b: &[u8], n: usize, what: &'static str| {
        if b.len() == n {
            Ok(())
        } else {
            Err(FrameError::Invalid(what))
        }
    };
    match req.kind.as_ref() {
        None => Err(FrameError::Invalid("request has no kind")),
        Some(Kind::Status(_)) => Ok(()),
        Some(Kind::RegisterStart(r)) => check(
            &r.registration_request,
            op::REGISTRATION_REQUEST_LEN,
            "registration_request has the wrong size",
        ),
        Some(Kind::RegisterFinish(r)) => {
            check(
                &r.registration_ticket,
                op::REGISTRATION_TICKET_LEN,
                "registration_ticket has the wrong size",
            )?;
            check(
                &r.registration_upload,
                op::REGISTRATION_UPLOAD_LEN,
                "registration_upload has the wrong size",
            )?;
            check(
                &r.wrapped_key,
                op::WRAPPED_KEY_LEN,
                "wrapped_key has the wrong size",
            )?;
            use crate::msg::register_finish_request::Authorization;
            match &r.authorization {
                None => Ok(()),
                Some(Authorization::ReplaceExisting(_)) => Ok(()),
                Some(Authorization::LoginSession(s)) => {
                    check(s, op::LOGIN_SESSION_LEN, "login_session has the wrong size")
                }
            }
        }
        Some(Kind::LoginStart(r)) => {
            check(
                &r.credential_request,
                op::CREDENTIAL_REQUEST_LEN,
                "credential_request has the wrong size",
            )?;
            match crate::msg::LoginPurpose::try_from(r.purpose) {
                Ok(crate::msg::LoginPurpose::Unspecified) | Err(_) => {
                    Err(FrameError::Invalid("login purpose missing or unknown"))
                }
                Ok(_) => Ok(()),
            }
        }
        Some(Kind::LoginFinish(r)) => {
            check(
                &r.login_session,
                op::LOGIN_SESSION_LEN,
                "login_session has the wrong size",
            )?;
            check(
                &r.credential_finalization,
                op::CREDENTIAL_FINALIZATION_LEN,
                "credential_finalization has the wrong size",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg;

    #[test]
    fn round_trip_and_split_delivery() {
        let req = msg::Request {
            kind: Some(msg::request::Kind::Status(msg::StatusRequest {})),
        };
        let mut bytes = encode(&req).unwrap();
        bytes.extend(encode(&req).unwrap());
        let mut d = FrameDecoder::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b)).unwrap();
        }
        let f1 = d.next_frame().unwrap().unwrap();
        let f2 = d.next_frame().unwrap().unwrap();
        assert_eq!(decode::<msg::Request>(&f1).unwrap(), req);
        assert_eq!(f1, f2);
        assert!(d.next_frame().unwrap().is_none());
        d.finish().unwrap();
    }

    #[test]
    fn oversized_prefix_rejected_before_body() {
        let mut d = FrameDecoder::new();
        let err = d
            .push(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn truncated_frame_reported_at_end() {
        let mut d = FrameDecoder::new();
        d.push(&[0, 0, 0, 10, 1, 2]).unwrap();
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(
            d.finish().unwrap_err(),
            FrameError::Truncated { have: 6, need: 14 }
        );
    }

    #[test]
    fn request_without_kind_is_invalid() {
        assert!(validate_request(&msg::Request { kind: None }).is_err());
    }
}

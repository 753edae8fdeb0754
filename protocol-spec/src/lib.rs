//! The Backup Key Vault wire protocol, as code: message types generated from
//! `proto/*.proto`, the length-prefixed framing with its limits, the Noise
//! handshake binding to the QUIC connection, the device credential format and
//! the OPAQUE profile shared by client and vault.
//!
//! This crate owns the *meaning of bytes*. It must never open sockets, touch
//! files or spawn tasks (the optional `tokio-io` feature only adapts framing to
//! tokio streams); every decoder takes untrusted bytes and returns a typed
//! error instead of panicking. `SPEC.md` beside this crate is the normative
//! text; the test vectors in `tests/vectors.rs` pin the two together.

pub mod backup_format;
pub mod classify;
pub mod credential;
pub mod framing;
pub mod handshake;
pub mod limits;
pub mod noise;
pub mod noise_resolver;
pub mod opaque_profile;
pub mod profile;
#[cfg(feature = "tokio-io")]
pub mod stream_io;

/// Generated protobuf types (prost).
#[allow(clippy::all, missing_docs)]
pub mod backupvault {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/backupvault.v1.rs"));
    }
    pub mod internal {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/backupvault.internal.v1.rs"));
        }
    }
}

/// Gateway ↔ vault messages (`backupvault.internal.v1`).
pub use backupvault::internal::v1 as internal;
/// Client-visible messages (`backupvault.v1`).
pub use backupvault::v1 as msg;

impl msg::Error {
    /// Builds an error response body.
    pub fn new(code: msg::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code as i32,
            message: message.into(),
            attempts_left: 0,
            retry_after_ms: 0,
        }
    }
}

impl msg::ErrorCode {
    /// The code as a low-cardinality metric label.
    pub fn label(self) -> &'static str {
        use msg::ErrorCode as C;
        match self {
            C::Unspecified => "unspecified",
            C::ProtocolError => "protocol_error",
            C::Unauthenticated => "unauthenticated",
            C::NotRegistered => "not_registered",
            C::WrongPassword => "wrong_password",
            C::LockedOut => "locked_out",
            C::AlreadyRegistered => "already_registered",
            C::SessionExpired => "session_expired",
            C::Busy => "busy",
            C::Unavailable => "unavailable",
            C::Internal => "internal",
            C::PermissionDenied => "permission_denied",
            C::ReplacementPending => "replacement_pending",
        }
    }
}

impl msg::Request {
    /// The request's kind as a low-cardinality metric label: the one list
    /// every crate's metrics use.
    pub fn kind_label(&self) -> &'static str {
        use msg::request::Kind;
        match self.kind {
            Some(Kind::Status(_)) => "status",
            Some(Kind::RegisterStart(_)) => "register_start",
            Some(Kind::RegisterFinish(_)) => "register_finish",
            Some(Kind::LoginStart(_)) => "login_start",
            Some(Kind::LoginFinish(_)) => "login_finish",
            None => "empty",
        }
    }
}

impl msg::Response {
    /// A response carrying only an error.
    pub fn error(code: msg::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            kind: Some(msg::response::Kind::Error(msg::Error::new(code, message))),
        }
    }
}

/// QUIC application error codes used when a peer closes a connection.
/// Values are part of the wire protocol (SPEC.md, "Connection close codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Normal close by either side.
    Normal = 0,
    /// The peer sent bytes that do not follow the protocol.
    ProtocolError = 1,
    /// The device could not be authenticated (bad credential, or a request
    /// before the handshake finished).
    Unauthenticated = 2,
    /// The handshake did not finish in time.
    HandshakeTimeout = 3,
    /// The server is draining and every request it took on this connection
    /// was answered and the answer delivered: a request without an answer
    /// was not relayed, so it can be sent again on a new connection
    /// (possibly elsewhere).
    GoingAway = 4,
    /// The server failed internally.
    Internal = 5,
    /// The server stopped with requests possibly in flight (its drain
    /// deadline passed, or it was stopped at once): reconnect (possibly
    /// elsewhere), but a request without an answer may have been relayed.
    ShutDown = 6,
    /// The gateway could not decrypt the client's Noise message: with IK,
    /// the pinned gateway key is none the gateway holds (rotated past the
    /// client's profile), or the channel binding differs. A pinned client
    /// tries XX once, accepting only its pinned or next key (SPEC §4.6).
    HandshakeUnreadable = 7,
}

impl CloseCode {
    /// Maps a received QUIC application close code back to a `CloseCode`.
    pub fn from_u64(v: u64) -> Option<Self> {
        Some(match v {
            0 => Self::Normal,
            1 => Self::ProtocolError,
            2 => Self::Unauthenticated,
            3 => Self::HandshakeTimeout,
            4 => Self::GoingAway,
            5 => Self::Internal,
            6 => Self::ShutDown,
            7 => Self::HandshakeUnreadable,
            _ => return None,
        })
    }

    /// Human-readable reason sent with the close frame.
    pub fn reason(self) -> &'static [u8] {
        match self {
            Self::Normal => b"bye",
            Self::ProtocolError => b"protocol error",
            Self::Unauthenticated => b"unauthenticated",
            Self::HandshakeTimeout => b"handshake timeout",
            Self::GoingAway => b"going away",
            Self::Internal => b"internal error",
            Self::ShutDown => b"shut down",
            Self::HandshakeUnreadable => b"handshake unreadable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CloseCode;

    #[test]
    fn every_close_code_maps_back_and_unknown_ones_do_not() {
        use CloseCode::*;
        for c in [
            Normal,
            ProtocolError,
            Unauthenticated,
            HandshakeTimeout,
            GoingAway,
            Internal,
            ShutDown,
            HandshakeUnreadable,
        ] {
            assert_eq!(CloseCode::from_u64(c as u64), Some(c));
            assert!(!c.reason().is_empty());
        }
        assert_eq!(CloseCode::from_u64(8), None);
        assert_eq!(CloseCode::from_u64(u64::MAX), None);
    }
}

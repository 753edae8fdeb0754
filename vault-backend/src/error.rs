//! The vault's error type and its mapping onto wire error codes.

use protocol_spec::classify::classify;
use protocol_spec::msg::{self, ErrorCode};

/// Everything a vault request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The request is malformed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No deposit for this account.
    #[error("no backup key is deposited for this account")]
    NotRegistered,
    /// The guess limit was used up; the deposit is gone.
    #[error("the guess limit was reached and the deposited key was erased for good")]
    LockedOut,
    /// The password did not verify.
    #[error("wrong password")]
    WrongPassword {
        /// Guesses left.
        attempts_left: u32,
    },
    /// A deposit exists and the request did not authorize replacing it.
    #[error(
        "a backup key is already deposited; change the password or replace the deposit explicitly"
    )]
    AlreadyRegistered,
    /// Login session unknown, expired, or already used.
    #[error("login session expired or unknown; start the login again")]
    SessionExpired,
    /// The presented proof does not authorize the change.
    #[error("not authorized: {0}")]
    PermissionDenied(&'static str),
    /// Too many pending logins.
    #[error("vault busy; retry shortly")]
    Busy,
    /// A guess too soon after the previous one (pacing); nothing counted.
    #[error("too many password attempts in a short time: the next one is allowed in {}", words(*wait_ms))]
    Paced {
        /// Until the next guess may be counted, ms.
        wait_ms: u64,
    },
    /// The last guess's login is still open.
    #[error("the last password attempt is still being checked: try again in {}", words(*wait_ms))]
    LastGuessOpen {
        /// Until it expires, ms.
        wait_ms: u64,
    },
    /// A replacement without the password is pending.
    #[error("the deposit will be replaced in {} unless the owner logs in with the password first; until then the old deposit stays", words(*wait_ms))]
    ReplacementPending {
        /// Until this device may complete it, ms.
        wait_ms: u64,
    },
    /// This replica does not lead its cluster; nothing was done.
    #[error("this vault replica is not the leader; ask the leader")]
    NotLeader {
        /// Leader's replica id, if one is known.
        leader_id: Option<u64>,
        /// Leader's gateway-facing address, if known.
        leader_addr: Option<std::net::SocketAddr>,
    },
    /// No majority of the cluster is reachable (or consensus stopped).
    #[error("vault unavailable: {0}")]
    Unavailable(String),
    /// Storage failed (the database, or a row that does not decode).
    #[error("storage error: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A file of the replica's state could not be read or written.
    #[error(transparent)]
    File(#[from] service_kit::files::FileError),
    /// A certificate or key could not be made or loaded.
    #[error(transparent)]
    Pki(#[from] service_kit::pki::PkiError),
    /// Anything else that is our fault: what failed, and its cause when
    /// there is one.
    #[error("internal error: {what}")]
    Internal {
        /// What the vault was doing.
        what: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

fn words(ms: u64) -> String {
    protocol_spec::classify::wait_in_words(std::time::Duration::from_millis(ms))
}

impl VaultError {
    /// An internal failure without an underlying error.
    pub fn internal(what: impl Into<String>) -> Self {
        Self::Internal {
            what: what.into(),
            source: None,
        }
    }

    /// An internal failure while doing `what`, caused by the error the
    /// returned closure is given (for `map_err`).
    pub fn internal_from<E>(what: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let what = what.into();
        move |e| Self::Internal {
            what,
            source: Some(Box::new(e)),
        }
    }

    /// The wire code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Protocol(_) => ErrorCode::ProtocolError,
            Self::NotRegistered => ErrorCode::NotRegistered,
            Self::LockedOut => ErrorCode::LockedOut,
            Self::WrongPassword { .. } => ErrorCode::WrongPassword,
            Self::AlreadyRegistered => ErrorCode::AlreadyRegistered,
            Self::SessionExpired => ErrorCode::SessionExpired,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::Busy | Self::Paced { .. } | Self::LastGuessOpen { .. } => ErrorCode::Busy,
            Self::ReplacementPending { .. } => ErrorCode::ReplacementPending,
            Self::NotLeader { .. } | Self::Unavailable(_) | Self::Storage(_) => {
                ErrorCode::Unavailable
            }
            Self::Internal { .. } | Self::File(_) | Self::Pki(_) => ErrorCode::Internal,
        }
    }

    /// The wire error for this failure, with the retry hint of its class
    /// (`protocol_spec::classify`). Storage and internal failures reach
    /// the phone without their details (paths, causes), which go to the
    /// replica's log instead.
    pub fn to_wire(&self) -> msg::Error {
        let code = self.code();
        let message = match self {
            Self::Storage(_) => {
                tracing::error!(error = %service_kit::report::one_line(self), "vault storage failed");
                "the vault could not use its storage; retry in a moment".to_owned()
            }
            Self::Internal { .. } | Self::File(_) | Self::Pki(_) => {
                tracing::error!(error = %service_kit::report::one_line(self), "vault request failed");
                "the vault failed on its side; retry later and report it if it persists".to_owned()
            }
            other => other.to_string(),
        };
        let mut e = msg::Error::new(code, message);
        if let Self::WrongPassword { attempts_left } = self {
            e.attempts_left = *attempts_left;
        }
        e.retry_after_ms = match self {
            Self::Paced { wait_ms }
            | Self::LastGuessOpen { wait_ms }
            | Self::ReplacementPending { wait_ms } => u32::try_from(*wait_ms).unwrap_or(u32::MAX),
            _ => classify(code).retry_after_ms(),
        };
        e
    }
}

impl From<redb::Error> for VaultError {
    fn from(e: redb::Error) -> Self {
        Self::Storage(Box::new(e))
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for VaultError {
            fn from(e: $t) -> Self { Self::Storage(Box::new(e)) }
        }
    )*};
}
storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

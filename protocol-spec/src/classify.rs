//! One classification of a failure, shared by everything that reports or
//! handles one (the vault's `VaultError::to_wire`, the gateway's answers,
//! the client's errors): whose fault it is, and whether trying again can
//! help and after how long. Modelled on pingora's error type (source and
//! retry flag); the wire carries the code, so both sides derive the same
//! class from it.
//!
//! Must never: call a refusal of the account rules (wrong password, locked
//! out) retryable: retrying spends the guess limit, not a transient fault.

use std::time::Duration;

use crate::msg::ErrorCode;

/// Whose fault a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request or the user's input: fix it, do not repeat it.
    Caller,
    /// The account's state says no (no deposit, locked out, wrong password).
    Account,
    /// The service (overloaded, no majority, a bug).
    Service,
}

/// What a failure means for the one who sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// Whose fault.
    pub fault: Fault,
    /// `Some(pause)`: the same request may succeed if sent again after
    /// about this long; `None`: repeating it cannot help.
    pub retry_after: Option<Duration>,
}

/// How long a phone should wait before trying again after "busy".
pub const BUSY_RETRY_AFTER: Duration = Duration::from_millis(500);
/// How long a phone should wait before trying again after "unavailable"
/// (about one election).
pub const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_millis(1000);

/// The class of a wire error code.
pub fn classify(code: ErrorCode) -> Class {
    let (fault, retry_after) = match code {
        ErrorCode::Unspecified | ErrorCode::ProtocolError | ErrorCode::Unauthenticated => {
            (Fault::Caller, None)
        }
        // A new login session (a new start) is the remedy, not a resend.
        ErrorCode::SessionExpired | ErrorCode::PermissionDenied => (Fault::Caller, None),
        ErrorCode::NotRegistered
        | ErrorCode::WrongPassword
        | ErrorCode::LockedOut
        | ErrorCode::AlreadyRegistered => (Fault::Account, None),
        ErrorCode::Busy => (Fault::Service, Some(BUSY_RETRY_AFTER)),
        ErrorCode::Unavailable => (Fault::Service, Some(UNAVAILABLE_RETRY_AFTER)),
        ErrorCode::Internal => (Fault::Service, None),
    };
    Class { fault, retry_after }
}

impl Class {
    /// Whether sending the same request again may help.
    pub fn retryable(&self) -> bool {
        self.retry_after.is_some()
    }

    /// The `retry_after_ms` a wire error of this class carries (0: none).
    pub fn retry_after_ms(&self) -> u32 {
        self.retry_after
            .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_faults_are_retryable_and_no_account_refusal_is() {
        for c in [
            ErrorCode::ProtocolError,
            ErrorCode::Unauthenticated,
            ErrorCode::NotRegistered,
            ErrorCode::WrongPassword,
            ErrorCode::LockedOut,
            ErrorCode::AlreadyRegistered,
            ErrorCode::SessionExpired,
            ErrorCode::PermissionDenied,
            ErrorCode::Internal,
        ] {
            assert!(!classify(c).retryable(), "{c:?}");
        }
        assert_eq!(classify(ErrorCode::Busy).retry_after_ms(), 500);
        assert_eq!(classify(ErrorCode::Unavailable).retry_after_ms(), 1000);
        assert_eq!(classify(ErrorCode::WrongPassword).fault, Fault::Account);
    }
}

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
        | ErrorCode::AlreadyRegistered
        | ErrorCode::ReplacementPending => (Fault::Account, None),
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

/// A wait in words for a person ("4 minutes", "2 hours", "less than a
/// second"), rounded up to the unit it is said in, so that trying again
/// after the said time works.
pub fn wait_in_words(wait: Duration) -> String {
    let ms = wait.as_millis();
    if ms == 0 {
        return "less than a second".to_owned();
    }
    // Each unit rounded up from the one below, so "60 seconds" is said
    // "1 minute" and "90 minutes" "2 hours".
    let secs = ms.div_ceil(1000);
    let mins = secs.div_ceil(60);
    let hours = mins.div_ceil(60);
    let (n, unit) = if secs < 60 {
        (secs, "second")
    } else if mins < 90 {
        (mins, "minute")
    } else if hours < 48 {
        (hours, "hour")
    } else {
        (hours.div_ceil(24), "day")
    };
    if n == 1 {
        format!("1 {unit}")
    } else {
        format!("{n} {unit}s")
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
            ErrorCode::ReplacementPending,
            ErrorCode::Internal,
        ] {
            assert!(!classify(c).retryable(), "{c:?}");
        }
        assert_eq!(classify(ErrorCode::Busy).retry_after_ms(), 500);
        assert_eq!(classify(ErrorCode::Unavailable).retry_after_ms(), 1000);
        assert_eq!(classify(ErrorCode::WrongPassword).fault, Fault::Account);
    }

    #[test]
    fn waits_are_said_in_the_unit_a_person_uses_rounded_up() {
        let w = |ms| wait_in_words(Duration::from_millis(ms));
        assert_eq!(w(0), "less than a second");
        assert_eq!(w(1), "1 second");
        assert_eq!(w(58_001), "59 seconds");
        assert_eq!(w(59_981), "1 minute");
        assert_eq!(w(60_000), "1 minute");
        assert_eq!(w(3 * 60_000 + 1), "4 minutes");
        assert_eq!(w(89 * 60_000), "89 minutes");
        assert_eq!(w(90 * 60_000), "2 hours");
        assert_eq!(w(47 * 3_600_000), "47 hours");
        assert_eq!(w(7 * 86_400_000), "7 days");
    }
}

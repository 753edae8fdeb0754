//! Errors a client user can act on.

use protocol_spec::msg::ErrorCode;

/// Everything a client operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A 64-digit key was mistyped.
    #[error("{0}")]
    BadKey(String),
    /// Local configuration problem.
    #[error("{0}")]
    Config(String),
    /// The app's store has no device key: the device was never set up.
    #[error("this device has no device key yet")]
    NoDevice,
    /// The device has no credential from the account service yet.
    #[error("this device has no credential from the account service yet")]
    NoCredential,
    /// The app's store failed or holds a damaged item.
    #[error("the device's store failed on its {item}")]
    Storage {
        /// The item's name (`store::Item::name`).
        item: &'static str,
        /// The store's error.
        #[source]
        source: crate::store::StoreError,
    },
    /// Could not reach or complete TLS with the gateway.
    #[error("cannot connect to the gateway at {addr}: {reason}. Check the address and that the gateway is running")]
    Connect {
        /// Gateway address.
        addr: String,
        /// What the QUIC or TLS layer said.
        reason: String,
    },
    /// The gateway's Noise key is not one this app knows: it was rotated
    /// past the app's profile (or this is not the real gateway).
    #[error("{0}. The gateway's key was changed and this app's copy is out of date: update the app, or its client profile's gateway_noise_key, from your operator")]
    GatewayKeyOutdated(String),
    /// Device authentication failed.
    #[error("the gateway did not accept this device: {0}")]
    Authentication(String),
    /// The vault presented a key that is not the pinned fleet key.
    #[error("the vault's public key {got} is not the pinned fleet key {pinned}; refusing to continue (possible impostor vault or wrong profile)")]
    VaultKeyMismatch {
        /// The key the vault presented, hex.
        got: String,
        /// The key the profile pins, hex.
        pinned: String,
    },
    /// Wrong password.
    #[error("wrong password: {attempts_left} attempt(s) left before the key is erased for good")]
    WrongPassword {
        /// Guesses left.
        attempts_left: u32,
    },
    /// Guess limit used up.
    #[error("too many wrong passwords: the vault erased the backup key for good, and backups protected by it cannot be restored through the vault; a phone that still has backup turned on keeps the key and can deposit it again with a new password")]
    LockedOut,
    /// Too many guesses in a short time: the vault paces them.
    #[error("too many password attempts in a short time: to protect your backup, the vault allows the next one in {}", protocol_spec::classify::wait_in_words(*retry_after))]
    Paced {
        /// Until the next attempt is allowed.
        retry_after: std::time::Duration,
    },
    /// A replacement of the deposit without its password was accepted and
    /// waits out the vault's period.
    #[error("a backup key is already deposited for this account, and replacing it without its password waits out the vault's period: this phone can complete the replacement in {}; until then the old key stays, and a login with the old password on any phone cancels the replacement", protocol_spec::classify::wait_in_words(*retry_after))]
    ReplacementPending {
        /// Until this phone may complete it.
        retry_after: std::time::Duration,
    },
    /// Nothing deposited.
    #[error("no backup key is deposited in the vault for this account")]
    NotRegistered,
    /// A deposit exists.
    #[error("a backup key is already deposited for this account; change its password, or replace it (which makes backups protected by the old one unrecoverable through the vault)")]
    AlreadyRegistered,
    /// Retryable condition.
    #[error("the vault is unavailable right now ({0}); try again in a moment")]
    Unavailable(String),
    /// The gateway or the vault sheds load, or a budget of this device or
    /// account is used up (`BUSY`).
    #[error("{message}; try again in {}", protocol_spec::classify::wait_in_words(*retry_after))]
    Busy {
        /// What the server said.
        message: String,
        /// How long to wait.
        retry_after: std::time::Duration,
    },
    /// The server said something the client does not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local file or stream failed; the I/O error is the source.
    #[error("{what}")]
    Io {
        /// What the client was doing, and with which path.
        what: String,
        /// The operating system's (or the archive reader's) error.
        #[source]
        source: std::io::Error,
    },
    /// A local precondition does not hold (a restore destination that is
    /// not empty, a path that is not a folder); the message says what to do.
    #[error("{0}")]
    Local(String),
    /// The cloud store failed; the store's error is the source.
    #[error("cloud storage: {what} (check the backup location and your connection, then retry)")]
    Store {
        /// What the client was doing, and where.
        what: String,
        /// The object store's error (or the upload stream's).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The backup could not be opened (wrong key, damaged, tampered...).
    #[error("{0}")]
    Backup(#[from] protocol_spec::backup_format::FormatError),
    /// No backup at the location.
    #[error("there is no backup for this account at {0}; check the backup location")]
    NoBackup(String),
    /// Other server-side refusal.
    #[error("the vault refused the request ({code:?}): {message}")]
    Refused {
        /// The wire error code.
        code: ErrorCode,
        /// Server message.
        message: String,
    },
}

/// A `BUSY` to a login start asking to wait longer than this is the
/// vault's pacing of guesses (an overload asks for
/// `classify::BUSY_RETRY_AFTER`, 500 ms).
pub(crate) const PACED_ABOVE: std::time::Duration = std::time::Duration::from_secs(5);

impl ClientError {
    /// A failure of the app's store on `item`.
    pub fn store(item: crate::store::Item) -> impl FnOnce(crate::store::StoreError) -> Self {
        move |source| Self::Storage {
            item: item.name(),
            source,
        }
    }

    /// A local I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Maps a wire error.
    pub fn from_wire(e: &protocol_spec::msg::Error) -> Self {
        match e.code() {
            ErrorCode::WrongPassword => Self::WrongPassword {
                attempts_left: e.attempts_left,
            },
            ErrorCode::LockedOut => Self::LockedOut,
            ErrorCode::NotRegistered => Self::NotRegistered,
            ErrorCode::AlreadyRegistered => Self::AlreadyRegistered,
            ErrorCode::ReplacementPending => Self::ReplacementPending {
                retry_after: std::time::Duration::from_millis(e.retry_after_ms.into()),
            },
            ErrorCode::Busy => Self::Busy {
                message: e.message.clone(),
                retry_after: std::time::Duration::from_millis(e.retry_after_ms.into()),
            },
            ErrorCode::Unavailable | ErrorCode::SessionExpired => {
                Self::Unavailable(e.message.clone())
            }
            ErrorCode::Unauthenticated => Self::Authentication(e.message.clone()),
            ErrorCode::ProtocolError => Self::Protocol(e.message.clone()),
            code => Self::Refused {
                code,
                message: e.message.clone(),
            },
        }
    }

    /// Whether the same operation, started again, may succeed (the shared
    /// classification of `protocol_spec::classify`; an expired login
    /// session is retried by starting the login again).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Unavailable(_)
            | Self::Busy { .. }
            | Self::Connect { .. }
            | Self::Io { .. }
            | Self::Store { .. } => true,
            Self::Refused { code, .. } => protocol_spec::classify::classify(*code).retryable(),
            _ => false,
        }
    }
}

/// What went wrong, as a stable code an app translates into its own words
/// (the `Display` text of a [`ClientError`] is for logs and developers).
/// Codes are never renamed or reused; new ones may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientErrorCode {
    /// A typed 64-digit key is malformed (`BadKey`).
    BadKey,
    /// The profile or another local setting is invalid (`Config`).
    Config,
    /// The device was never set up: no device key in the store.
    NoDevice,
    /// The device has no credential from the account service yet.
    NoCredential,
    /// The app's store failed.
    Storage,
    /// The gateway cannot be reached (data: none; retry later).
    Connect,
    /// The gateway's key changed past this app's profile: update the app.
    GatewayKeyOutdated,
    /// The gateway did not accept the device or its credential.
    Authentication,
    /// The vault is not the pinned one: stop.
    VaultKeyMismatch,
    /// Wrong password (data: `attempts_left`).
    WrongPassword,
    /// The guess limit is used up; the deposit is erased for good.
    LockedOut,
    /// Too many guesses in a short time (data: `retry_after`).
    Paced,
    /// A replacement without the password waits out its period (data:
    /// `retry_after`).
    ReplacementPending,
    /// Nothing is deposited for this account.
    NotRegistered,
    /// A deposit exists already.
    AlreadyRegistered,
    /// The vault is unavailable for now; retry.
    Unavailable,
    /// The service sheds load or a budget is used up (data: `retry_after`).
    Busy,
    /// The server broke the protocol.
    Protocol,
    /// A local file failed.
    Io,
    /// A local precondition does not hold (a non-empty destination...).
    Local,
    /// The cloud store failed.
    CloudStore,
    /// The backup key does not open this backup.
    BackupWrongKey,
    /// The backup is damaged, tampered with, or not a backup.
    BackupUnreadable,
    /// The backup needs a newer app.
    BackupUnsupported,
    /// There is no backup at the location.
    NoBackup,
    /// Another refusal of the vault.
    Refused,
}

impl ClientErrorCode {
    /// Every code.
    pub const ALL: [ClientErrorCode; 26] = [
        Self::BadKey,
        Self::Config,
        Self::NoDevice,
        Self::NoCredential,
        Self::Storage,
        Self::Connect,
        Self::GatewayKeyOutdated,
        Self::Authentication,
        Self::VaultKeyMismatch,
        Self::WrongPassword,
        Self::LockedOut,
        Self::Paced,
        Self::ReplacementPending,
        Self::NotRegistered,
        Self::AlreadyRegistered,
        Self::Unavailable,
        Self::Busy,
        Self::Protocol,
        Self::Io,
        Self::Local,
        Self::CloudStore,
        Self::BackupWrongKey,
        Self::BackupUnreadable,
        Self::BackupUnsupported,
        Self::NoBackup,
        Self::Refused,
    ];

    /// The code's stable name (`snake_case`), for an app's string tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadKey => "bad_key",
            Self::Config => "config",
            Self::NoDevice => "no_device",
            Self::NoCredential => "no_credential",
            Self::Storage => "storage",
            Self::Connect => "connect",
            Self::GatewayKeyOutdated => "gateway_key_outdated",
            Self::Authentication => "authentication",
            Self::VaultKeyMismatch => "vault_key_mismatch",
            Self::WrongPassword => "wrong_password",
            Self::LockedOut => "locked_out",
            Self::Paced => "paced",
            Self::ReplacementPending => "replacement_pending",
            Self::NotRegistered => "not_registered",
            Self::AlreadyRegistered => "already_registered",
            Self::Unavailable => "unavailable",
            Self::Busy => "busy",
            Self::Protocol => "protocol",
            Self::Io => "io",
            Self::Local => "local",
            Self::CloudStore => "cloud_store",
            Self::BackupWrongKey => "backup_wrong_key",
            Self::BackupUnreadable => "backup_unreadable",
            Self::BackupUnsupported => "backup_unsupported",
            Self::NoBackup => "no_backup",
            Self::Refused => "refused",
        }
    }
}

impl std::fmt::Display for ClientErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ClientError {
    /// The stable code of this error.
    pub fn code(&self) -> ClientErrorCode {
        use protocol_spec::backup_format::FormatError as F;
        use ClientErrorCode as C;
        match self {
            Self::BadKey(_) => C::BadKey,
            Self::Config(_) => C::Config,
            Self::NoDevice => C::NoDevice,
            Self::NoCredential => C::NoCredential,
            Self::Storage { .. } => C::Storage,
            Self::Connect { .. } => C::Connect,
            Self::GatewayKeyOutdated(_) => C::GatewayKeyOutdated,
            Self::Authentication(_) => C::Authentication,
            Self::VaultKeyMismatch { .. } => C::VaultKeyMismatch,
            Self::WrongPassword { .. } => C::WrongPassword,
            Self::LockedOut => C::LockedOut,
            Self::Paced { .. } => C::Paced,
            Self::ReplacementPending { .. } => C::ReplacementPending,
            Self::NotRegistered => C::NotRegistered,
            Self::AlreadyRegistered => C::AlreadyRegistered,
            Self::Unavailable(_) => C::Unavailable,
            Self::Busy { .. } => C::Busy,
            Self::Protocol(_) => C::Protocol,
            Self::Io { .. } => C::Io,
            Self::Local(_) => C::Local,
            Self::Store { .. } => C::CloudStore,
            Self::Backup(F::WrongKey) => C::BackupWrongKey,
            Self::Backup(F::Unsupported { .. }) => C::BackupUnsupported,
            Self::Backup(_) => C::BackupUnreadable,
            Self::NoBackup(_) => C::NoBackup,
            Self::Refused { .. } => C::Refused,
        }
    }

    /// Guesses left, for `WrongPassword`.
    pub fn attempts_left(&self) -> Option<u32> {
        match self {
            Self::WrongPassword { attempts_left } => Some(*attempts_left),
            _ => None,
        }
    }

    /// How long to wait before trying again, for `Paced`,
    /// `ReplacementPending` and `Busy`.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Paced { retry_after }
            | Self::ReplacementPending { retry_after }
            | Self::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_distinct_stable_names() {
        let names: std::collections::BTreeSet<_> =
            ClientErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ClientErrorCode::ALL.len());
        // Apps key their string tables on these: renaming one is a break.
        assert_eq!(ClientErrorCode::WrongPassword.as_str(), "wrong_password");
        assert_eq!(ClientErrorCode::LockedOut.as_str(), "locked_out");
        assert_eq!(ClientErrorCode::BackupWrongKey.as_str(), "backup_wrong_key");
    }

    #[test]
    fn a_wire_error_keeps_its_data() {
        let e = ClientError::from_wire(&protocol_spec::msg::Error {
            code: ErrorCode::WrongPassword as i32,
            attempts_left: 3,
            ..Default::default()
        });
        assert_eq!(e.code(), ClientErrorCode::WrongPassword);
        assert_eq!(e.attempts_left(), Some(3));
        let e = ClientError::from_wire(&protocol_spec::msg::Error {
            code: ErrorCode::Busy as i32,
            retry_after_ms: 1500,
            ..Default::default()
        });
        assert_eq!(e.code(), ClientErrorCode::Busy);
        assert_eq!(
            e.retry_after(),
            Some(std::time::Duration::from_millis(1500))
        );
    }
}

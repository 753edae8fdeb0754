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
    #[error("too many wrong passwords: the vault erased the backup key for good, and backups protected by it cannot be restored through the vault. A phone that still has backup turned on keeps the key: run `backup-client enable` there to protect it with a new password")]
    LockedOut,
    /// Too many guesses in a short time: the vault paces them.
    #[error("too many password attempts in a short time: to protect your backup, the vault allows the next one in {}", protocol_spec::classify::wait_in_words(*retry_after))]
    Paced {
        /// Until the next attempt is allowed.
        retry_after: std::time::Duration,
    },
    /// A replacement of the deposit without its password was accepted and
    /// waits out the vault's period.
    #[error("a backup key is already deposited for this account, and replacing it without its password takes a waiting period: this phone can complete the replacement in {} by running `backup-client enable --replace` again. Until then the old key stays in the vault, and a login with the old password on any phone cancels the replacement. To back up now, use a 64-digit key instead: `backup-client enable --key-only`", protocol_spec::classify::wait_in_words(*retry_after))]
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

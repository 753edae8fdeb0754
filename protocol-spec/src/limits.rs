//! Every size and time limit of the protocol, in one place so the spec, the
//! servers and the fuzz targets agree. Changing a value here is a wire change:
//! update `SPEC.md` ("Limits") in the same commit.

use std::time::Duration;

/// Largest frame body (bytes after the 4-byte length prefix) either side accepts.
pub const MAX_FRAME_LEN: usize = 16 * 1024;
/// Longest device credential (PASETO token text) a gateway parses.
pub const MAX_CREDENTIAL_LEN: usize = 2048;
/// Longest account id, in bytes.
pub const MAX_ACCOUNT_ID_LEN: usize = 128;
/// Longest client version string.
pub const MAX_CLIENT_VERSION_LEN: usize = 64;
/// Time a client has from connection establishment to the end of the Noise handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a phone waits for the answer to one request before it gives up
/// and may retry. The outermost request budget: every budget below is
/// smaller than the one around it, so that the inner one runs out first and
/// its typed answer (`UNAVAILABLE` with `retry_after_ms`) still reaches the
/// phone instead of a reset stream.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the gateway keeps one request stream (read the request, relay
/// it, write the answer); inside [`CLIENT_REQUEST_TIMEOUT`].
pub const RELAY_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the gateway spends on one vault call, every attempt, redirect
/// and pause included, before it answers `UNAVAILABLE`; inside
/// [`RELAY_TIMEOUT`], leaving time to read the request and write the answer.
pub const VAULT_CALL_DEADLINE: Duration = Duration::from_secs(20);
/// How long a vault replica works on one request (read, serve, write)
/// before it answers `UNAVAILABLE`; inside [`VAULT_CALL_DEADLINE`], so the
/// gateway sees the answer and not a lost stream.
pub const VAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest commit timeout a replica accepts (`raft.commit_timeout_ms`,
/// default 3 s): one request may wait for a commit and, on the reply path,
/// a second one, both inside [`VAULT_REQUEST_TIMEOUT`].
pub const MAX_COMMIT_TIMEOUT: Duration = Duration::from_secs(7);

// The nesting above, checked when the crate compiles.
const _: () = {
    assert!(CLIENT_REQUEST_TIMEOUT.as_millis() > RELAY_TIMEOUT.as_millis());
    assert!(RELAY_TIMEOUT.as_millis() > VAULT_CALL_DEADLINE.as_millis());
    assert!(VAULT_CALL_DEADLINE.as_millis() > VAULT_REQUEST_TIMEOUT.as_millis());
    assert!(VAULT_REQUEST_TIMEOUT.as_millis() > 2 * MAX_COMMIT_TIMEOUT.as_millis());
};
/// Request streams a client may have open at once on one connection.
pub const MAX_CONCURRENT_REQUESTS: u32 = 16;
/// How long a login session (between LoginStart and LoginFinish, or between a
/// verified change-password login and its RegisterFinish) stays usable.
pub const LOGIN_SESSION_TTL: Duration = Duration::from_secs(120);
/// How long a registration ticket (`RegisterStartResponse`) may be used for
/// its `RegisterFinish`. Long enough for the slowest phone's key stretching
/// and a retry; short enough that a finish recorded by a compromised
/// gateway cannot be replayed after the deposit's guesses are used up (at
/// the default pacing, guesses past the third take an hour and more).
pub const REGISTRATION_TICKET_TTL: Duration = Duration::from_secs(600);
/// Idle time after which QUIC closes a connection without keep-alives.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of password guesses a deposit allows (a vault policy).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

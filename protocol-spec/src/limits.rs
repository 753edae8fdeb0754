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
/// Time a request stream may stay open (read request, relay, write response).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Request streams a client may have open at once on one connection.
pub const MAX_CONCURRENT_REQUESTS: u32 = 16;
/// How long a login session (between LoginStart and LoginFinish, or between a
/// verified change-password login and its RegisterFinish) stays usable.
pub const LOGIN_SESSION_TTL: Duration = Duration::from_secs(120);
/// Idle time after which QUIC closes a connection without keep-alives.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of password guesses a deposit allows (a vault policy).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

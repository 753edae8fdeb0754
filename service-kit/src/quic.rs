//! Closing a QUIC endpoint the same way in every server and tool.
//!
//! Must never: wait out every peer's draining period (up to three PTOs
//! each): the close frames are sent at once, and waiting longer only delays
//! the caller's shutdown.

use std::time::Duration;

/// How long [`close_endpoint`] waits for close frames to leave.
pub const CLOSE_GRACE: Duration = Duration::from_millis(300);

/// Closes every connection of `endpoint` with `code` and `reason`, then
/// waits at most [`CLOSE_GRACE`] for the endpoint to go idle.
pub async fn close_endpoint(endpoint: &quinn::Endpoint, code: u32, reason: &[u8]) {
    endpoint.close(code.into(), reason);
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
}

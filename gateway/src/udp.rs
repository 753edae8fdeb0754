//! The gateway's public UDP socket and its options.
//!
//! Owns how the public endpoint is bound. Must never change what is sent.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

/// Kernel buffer asked for in each direction, so a burst of handshakes (a
/// reconnect storm after a gateway restart) queues instead of being dropped.
/// The kernel caps it at `net.core.rmem_max` / `wmem_max`. Measured in
/// BENCHMARKS.md ("Idle connections"): with the default buffers, 20,000
/// connections opened at once saw p99 connect 3.0 s and lost handshakes.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Binds the public endpoint with large kernel buffers.
pub fn public_endpoint(
    listen: SocketAddr,
    server_config: quinn::ServerConfig,
) -> io::Result<quinn::Endpoint> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a smaller kernel buffer still works, it only drops sooner.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&listen.into())?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

//! What an idle authenticated connection would cost the gateway if it drove
//! `quinn-proto` directly, with no `quinn` around it: no per-connection
//! task, event channel, timer or send buffer, only the sans-IO connection
//! state, its TLS session and keys, and the endpoint's maps. The floor of
//! that design, measured before building it (BENCHMARKS.md, "Memory per
//! idle connection").
//!
//! In one process, with the servers' counted allocator: N client
//! connections handshake with one server endpoint over an in-memory
//! "network" (datagrams passed by value), with the gateway's real server
//! config (`gateway::server::server_config`: its certificate, ALPN,
//! transport settings, post-quantum key exchange) and the phone's real
//! client config. Each connection then carries one request stream each way,
//! as the Noise handshake does. Then every client side is dropped, and what
//! the heap still holds, over what it held before, is the server's: N
//! connections and the endpoint's per-connection entries.
//!
//! `cargo run --release -p testing --example idle_floor -- 5000`

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    ServerConfig,
};

#[global_allocator]
static ALLOCATOR: service_kit::heap::Allocator = service_kit::heap::allocator();

/// One side of the in-memory network: an endpoint and its connections.
struct Side {
    endpoint: Endpoint,
    conns: Vec<(ConnectionHandle, Connection)>,
    addr: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    service_kit::heap::follow_the_heap();
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5000);
    let rt = tokio::runtime::Runtime::new()?;
    let (server_cfg, client_cfg) = rt.block_on(configs())?;
    drop(rt);

    let server_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 4433));
    // Before the table of connections, which holds each one inline (as a
    // driver's slab would): its 6 KB are part of what a connection costs.
    let before = ALLOCATOR.allocated();
    let mut server = Side {
        endpoint: Endpoint::new(
            Arc::new(EndpointConfig::default()),
            Some(server_cfg),
            false,
            None,
        ),
        conns: Vec::with_capacity(n),
        addr: server_addr,
    };
    let started = Instant::now();
    // Clients in batches of 100 (each batch its own client endpoint and
    // source port), dropped once their connections are established and
    // their request answered, so their memory is not counted.
    let mut done = 0;
    while done < n {
        let batch = (n - done).min(100);
        // This batch's server connections: only their timers are run (the
        // earlier ones are idle, their clients gone).
        let first = server.conns.len();
        let mut client = Side {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None),
            conns: Vec::new(),
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 10000 + (done / 100) as u16)),
        };
        for _ in 0..batch {
            let (h, c) = client.endpoint.connect(
                Instant::now(),
                client_cfg.clone(),
                server_addr,
                "localhost",
            )?;
            client.conns.push((h, c));
        }
        // Handshakes, then one request and one answer per connection.
        let mut opened = vec![false; batch];
        let mut answered = 0;
        for _round in 0..400 {
            let moved = pump(&mut client, &mut server)? + pump(&mut server, &mut client)?;
            for (i, (_, c)) in client.conns.iter_mut().enumerate() {
                if !opened[i] && !c.is_handshaking() {
                    if let Some(id) = c.streams().open(Dir::Bi) {
                        c.send_stream(id).write(&[1u8; 96])?;
                        c.send_stream(id).finish()?;
                        opened[i] = true;
                    }
                }
            }
            for (_, c) in server.conns.iter_mut() {
                while let Some(id) = c.streams().accept(Dir::Bi) {
                    let mut recv = c.recv_stream(id);
                    if let Ok(mut chunks) = recv.read(true) {
                        while let Ok(Some(_)) = chunks.next(usize::MAX) {}
                        let _ = chunks.finalize();
                    }
                    c.send_stream(id).write(&[2u8; 96])?;
                    c.send_stream(id).finish()?;
                }
            }
            for (_, c) in client.conns.iter_mut() {
                while let Some(id) = c.streams().accept(Dir::Bi) {
                    let _ = id;
                }
            }
            answered = 0;
            for (i, (_, c)) in client.conns.iter_mut().enumerate() {
                if opened[i] && answered_all(c) {
                    answered += 1;
                }
            }
            if moved == 0 {
                if answered == batch {
                    break;
                }
                // Nothing in flight: let delayed acknowledgements and
                // loss timers fire, as they would on a real network.
                std::thread::sleep(std::time::Duration::from_millis(30));
                fire_timers(&mut client.conns);
                fire_timers(&mut server.conns[first..]);
            }
        }
        anyhow::ensure!(
            answered == batch,
            "{answered} of {batch} requests answered in the batch after {done}; {} server connections",
            server.conns.len()
        );
        // A last exchange of acknowledgements, so that neither side keeps
        // records of packets waiting for one.
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(30));
            fire_timers(&mut client.conns);
            fire_timers(&mut server.conns[first..]);
            pump(&mut client, &mut server)?;
            pump(&mut server, &mut client)?;
        }
        done += batch;
        drop(client);
    }
    // The server's connections that finished their handshake and are idle.
    let up = server
        .conns
        .iter()
        .filter(|(_, c)| !c.is_handshaking())
        .count();
    let after = ALLOCATOR.allocated();
    let per = (after - before) as f64 / server.conns.len().max(1) as f64;
    println!(
        "quinn-proto, driven directly: {up} of {n} server connections up after {:.1} s; \
         heap {:.1} MiB -> {:.1} MiB, {per:.0} bytes per connection \
         (size_of::<quinn_proto::Connection>() = {} bytes of it)",
        started.elapsed().as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        std::mem::size_of::<Connection>(),
    );
    Ok(())
}

/// The gateway's server config and a phone's client config, from a
/// one-replica local stack's keys and profile (the stack is stopped before
/// anything is measured).
async fn configs() -> anyhow::Result<(Arc<ServerConfig>, ClientConfig)> {
    let stack = testing::local_stack::LocalStack::start(testing::local_stack::StackOptions {
        replicas: 1,
        ..Default::default()
    })
    .await?;
    let keys = gateway::keys::GatewayKeys::load(&stack.gateway_dir())?;
    let server = gateway::server::server_config(&keys)?;
    let tls = client::connection::rustls_config(&stack.profile)?;
    let client = client::connection::quinn_config(tls)?;
    stack.shutdown().await;
    Ok((Arc::new(server), client))
}

/// Moves everything `from` has to send to `to`, and the endpoint and
/// connection events both ways, until `from` has nothing left to send.
fn pump(from: &mut Side, to: &mut Side) -> anyhow::Result<usize> {
    let now = Instant::now();
    let mut buf = Vec::with_capacity(1500);
    let mut out = Vec::new();
    for (_, c) in from.conns.iter_mut() {
        while let Some(t) = c.poll_transmit(now, 1, &mut buf) {
            out.push((t.destination, BytesMut::from(&buf[..t.size])));
            buf.clear();
        }
    }
    let moved = out.len();
    // Only to the live peer: a server connection of an earlier batch
    // has no client any more.
    let peer = to.addr;
    for (_, data) in out.into_iter().filter(|(dest, _)| *dest == peer) {
        deliver(to, from.addr, data, now)?;
    }
    for side in [from, to] {
        for (h, c) in side.conns.iter_mut() {
            while let Some(ev) = c.poll_endpoint_events() {
                if let Some(back) = side.endpoint.handle_event(*h, ev) {
                    c.handle_event(back);
                }
            }
            while c.poll().is_some() {}
        }
    }
    Ok(moved)
}

fn deliver(to: &mut Side, source: SocketAddr, data: BytesMut, now: Instant) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    match to.endpoint.handle(now, source, None, None, data, &mut buf) {
        Some(DatagramEvent::ConnectionEvent(h, ev)) => {
            if let Some((_, c)) = to.conns.iter_mut().find(|(ch, _)| *ch == h) {
                c.handle_event(ev);
            }
        }
        Some(DatagramEvent::NewConnection(incoming)) => {
            let (h, c) = to
                .endpoint
                .accept(incoming, now, &mut buf, None)
                .map_err(|e| anyhow::anyhow!("accept: {:?}", e.cause))?;
            to.conns.push((h, c));
        }
        Some(DatagramEvent::Response(_)) | None => {}
    }
    Ok(())
}

/// Runs the timers of `conns` that are due (delayed acknowledgements,
/// loss detection).
fn fire_timers(conns: &mut [(ConnectionHandle, Connection)]) {
    let now = Instant::now();
    for (_, c) in conns {
        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
        }
    }
}

/// Whether the client read the whole answer on its one request stream.
fn answered_all(c: &mut Connection) -> bool {
    let id = quinn_proto::StreamId::new(quinn_proto::Side::Client, Dir::Bi, 0);
    let mut recv = c.recv_stream(id);
    let Ok(mut chunks) = recv.read(true) else {
        // Read to its end before: the stream is gone.
        return true;
    };
    let mut finished = false;
    loop {
        match chunks.next(usize::MAX) {
            Ok(Some(_)) => continue,
            Ok(None) => {
                finished = true;
                break;
            }
            Err(_) => break,
        }
    }
    let _ = chunks.finalize();
    finished
}

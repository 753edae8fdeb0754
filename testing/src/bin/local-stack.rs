//! `local-stack`: the whole system on loopback with embedded defaults. Keys
//! and certificates are generated into `.local-stack/` on first run; the
//! command then shows the flow working and keeps serving until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use client::{BackupKey, BackupStore, ClientError, GatewayConnection, VaultClient};
use testing::local_stack::{LocalStack, StackOptions, PROFILE_FILE};

#[derive(Parser)]
#[command(
    name = "local-stack",
    about = "Run vault + gateway on loopback and demonstrate the flow"
)]
struct Args {
    /// State folder (created on first run).
    #[arg(long, default_value = ".local-stack")]
    state_dir: PathBuf,
    /// Where the gateway listens for phones (UDP); the written client
    /// profile points at it.
    #[arg(long, default_value = "127.0.0.1:7443")]
    gateway_listen: SocketAddr,
    /// Replicas per vault cluster (1, 3, 5 or 7).
    #[arg(long, default_value_t = 5)]
    replicas: u64,
    /// Vault clusters to shard accounts across.
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// First vault port on first start (replicas serve from here, peer
    /// ports from here + 100).
    #[arg(long, default_value_t = 7801)]
    vault_base_port: u16,
    /// Exit after the demonstration instead of serving.
    #[arg(long)]
    demo_only: bool,
    /// Serve the gateway's admin port here (`/metrics`, `/health`,
    /// `/ready`), as `gateway run` does; its `/metrics` is the whole
    /// stack's, including `process_heap_allocated_bytes` (what `loadtest
    /// idle --metrics` reads for the heap per connection). Off by default.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
}

// The servers' allocator and memory settings (service_kit::heap), so that
// memory measured on the local stack is what the gateway and replica
// binaries would show.
#[global_allocator]
static ALLOCATOR: service_kit::heap::Allocator = service_kit::heap::allocator();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::observability::init_tracing("warn,openraft=off");
    service_kit::heap::follow_the_heap();
    let args = Args::parse();
    // Before the stack starts, so that its metrics are recorded.
    let admin =
        match args.admin_listen {
            Some(addr) => {
                service_kit::observability::install_recorder()?;
                service_kit::heap::export(&ALLOCATOR);
                Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    anyhow::anyhow!("cannot listen on {addr} for the admin port: {e}")
                })?)
            }
            None => None,
        };
    let stack = LocalStack::start(StackOptions {
        state_dir: Some(args.state_dir.clone()),
        gateway_listen: args.gateway_listen,
        replicas: args.replicas,
        clusters: args.clusters,
        vault_base_port: Some(args.vault_base_port),
        ..StackOptions::default()
    })
    .await?;
    let p = &stack.profile;
    println!("local stack up (state in {})", stack.dir.display());
    if let (Some(listener), Some(g)) = (admin, stack.gateway.as_ref()) {
        println!(
            "  admin port       http://{}/metrics",
            listener.local_addr()?
        );
        gateway::admin::serve(
            listener,
            g.readiness(),
            service_kit::observability::prometheus(),
        );
    }
    println!("  gateway          {} (QUIC, ALPN bkv/1)", p.gateway_addr);
    println!(
        "  gateway noise    {}",
        p.gateway_noise_key.as_deref().unwrap_or("-")
    );
    println!(
        "  vault fleet      {} key {}",
        p.fleet_id, p.fleet_public_key
    );
    for (k, c) in stack.clusters.iter().enumerate() {
        let addrs: Vec<String> = c.configs.iter().map(|r| r.listen.to_string()).collect();
        println!(
            "  vault {:<10} {} replicas (Raft), leader replica {}: {}",
            c.name,
            c.configs.len(),
            stack
                .leader(k)
                .await
                .map(|i| c.configs[i].node_id.to_string())
                .unwrap_or_else(|| "-".into()),
            addrs.join(" ")
        );
    }
    println!(
        "  client profile   {}",
        stack.dir.join(PROFILE_FILE).display()
    );
    println!();

    let account = format!(
        "demo-{}",
        &hex::encode(BackupKey::generate().as_bytes())[..8]
    );
    println!("demo: phone A of account {account} deposits a key with a password");
    let phone_a = stack.enroll_device(&account)?;
    let conn = GatewayConnection::connect(&stack.profile, &phone_a).await?;
    let vault = VaultClient::new(&conn, &stack.profile)?;
    let key = BackupKey::generate();
    let t = Instant::now();
    vault.register(b"demo password", &key, false).await?;
    println!(
        "  registered in {:?}; key {}",
        t.elapsed(),
        key.to_display()
    );
    conn.close().await;

    // Phone A backs up a small chat history to the local "cloud drive".
    let history = stack.dir.join("demo-history");
    std::fs::create_dir_all(history.join("media"))?;
    service_kit::files::write_public(&history.join("msgstore.txt"), b"hi from phone A\n")?;
    service_kit::files::write_public(&history.join("media/photo.bin"), &[7u8; 200_000])?;
    let drive = stack.dir.join("cloud-drive");
    let store = BackupStore::open(drive.to_str().unwrap_or("cloud-drive"), &account, 3)?;
    let v = client::backups::backup_path(&store, &key, &history, &|_| {}).await?;
    println!(
        "  backed up {} to {} (version {}, {} bytes of ciphertext)",
        history.display(),
        drive.display(),
        v.id,
        v.size
    );

    println!("demo: phone B (new device key) recovers the key and restores the backup");
    let phone_b = stack.enroll_device(&account)?;
    let conn = GatewayConnection::connect(&stack.profile, &phone_b).await?;
    let vault = VaultClient::new(&conn, &stack.profile)?;
    match vault.recover(b"wrong guess").await {
        Err(e @ ClientError::WrongPassword { .. }) => println!("  wrong password -> {e}"),
        other => anyhow::bail!("expected a wrong-password answer, got {other:?}"),
    }
    let t = Instant::now();
    let got = vault.recover(b"demo password").await?;
    println!("  recovered in {:?}; same key: {}", t.elapsed(), got == key);
    // The verified login's reset (forgiving the wrong guess and its own)
    // commits just after the answer; show the status once it has.
    let mut status = vault.status().await?;
    let until = Instant::now() + std::time::Duration::from_secs(2);
    while !matches!(
        status,
        client::Status::Active {
            attempts_left: 10,
            ..
        }
    ) && Instant::now() < until
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        status = vault.status().await?;
    }
    println!("  status: {status:?} (the verified login forgave both guesses)");
    conn.close().await;
    anyhow::ensure!(got == key, "recovered key differs");
    let restored = stack.dir.join(format!("demo-restored-{}", v.id));
    let r = client::backups::restore_latest(&store, &got, &restored, &|_| {}).await?;
    let same = std::fs::read(history.join("media/photo.bin"))?
        == std::fs::read(r.path.join("media/photo.bin"))?;
    println!(
        "  restored into {} ; files identical: {same}",
        r.path.display()
    );
    anyhow::ensure!(same, "restored files differ");
    println!("\nthe flow works. Try the CLI (see README.md).");

    if !args.demo_only {
        println!("serving; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    stack.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_flag_has_help() {
        use clap::CommandFactory;
        let missing = service_kit::cli::flags_without_help(&super::Args::command());
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }
}

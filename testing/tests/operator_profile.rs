#![allow(clippy::unwrap_used)]
//! The operator's command that writes a client profile (`gateway
//! client-profile`, SPEC §1.1) makes one a phone can use: a phone with
//! only that file and its device registers and recovers through the real
//! stack. The profile carries a prepared next Noise key, and a TLS name
//! the certificate does not have is refused with the names it has.

use client::{BackupKey, GatewayConnection, VaultClient};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use testing::local_stack::LocalStack;
use vault_backend::config::files;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_written_profile_gets_a_phone_in() {
    let stack = LocalStack::start(Default::default()).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("profile.toml");
    let gw_dir = stack.gateway_dir();
    let fleet_public = stack.clusters[0].dir.join(files::FLEET_PUBLIC);
    let gateway = testing::bins::gateway();
    let prepared = std::process::Command::new(&gateway)
        .args(["prepare-noise-key", "--state-dir"])
        .arg(&gw_dir)
        .output()
        .unwrap();
    assert!(prepared.status.success());
    let next_key = String::from_utf8(prepared.stdout)
        .unwrap()
        .trim()
        .to_owned();

    let run = |server_name: &str| {
        std::process::Command::new(&gateway)
            .args(["client-profile", "--state-dir"])
            .arg(&gw_dir)
            .arg("--public-addr")
            .arg(stack.profile.gateway_addr.to_string())
            .args(["--server-name", server_name, "--fleet-public"])
            .arg(&fleet_public)
            .arg("--out")
            .arg(&path)
            .output()
            .unwrap()
    };
    let wrong = run("vault.example.org");
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("localhost") && err.contains("--server-name"),
        "{err}"
    );
    assert!(!path.exists());

    let ok = run("localhost");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let profile = client::profile::load(&path).unwrap();
    assert_eq!(profile.fleet_id, stack.profile.fleet_id);
    assert_eq!(profile.fleet_public_key, stack.profile.fleet_public_key);
    assert_eq!(profile.gateway_noise_key, stack.profile.gateway_noise_key);
    assert_eq!(
        profile.gateway_noise_next_key.as_deref(),
        Some(next_key.as_str())
    );

    let dev = stack.enroll_device("profiled").unwrap();
    let conn = GatewayConnection::connect(&profile, &dev).await.unwrap();
    let v = VaultClient::new(&conn, &profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    let key = BackupKey::generate();
    v.register(b"pw", &key, false).await.unwrap();
    assert_eq!(v.recover(b"pw").await.unwrap(), key);
    conn.close().await;
    stack.shutdown().await;
}

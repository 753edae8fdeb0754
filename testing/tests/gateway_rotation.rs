#![allow(clippy::unwrap_used)]
//! Key rotation on a running gateway process (SPEC §4.6), reloaded by
//! SIGHUP without dropping connections: a phone pinned to the old Noise key
//! gets in during the overlap and learns the new key; a connection opened
//! before the reload keeps working; new connections get the new TLS
//! certificate; credentials of a new account-service key are accepted;
//! after the overlap the old pin is refused with a typed error that says to
//! update, while a profile carrying the next key gets in; a reload from a
//! broken state folder keeps the keys the gateway had.

use std::path::Path;

use client::{ClientError, ClientProfile, DeviceIdentity, GatewayConnection, VaultClient};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use testing::gateway_process::GatewayProcess;
use testing::helpers::copy_dir;
use testing::local_stack::{LocalStack, StackOptions};

/// Runs `gateway <args>` and returns what it printed.
fn gateway_cmd(args: &[&str]) -> String {
    let out = std::process::Command::new(testing::bins::gateway())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gateway {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn status_works(conn: &GatewayConnection, profile: &ClientProfile) {
    let v = VaultClient::new(conn, profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    v.status().await.unwrap();
}

fn peer_cert(conn: &GatewayConnection) -> Vec<u8> {
    let id = conn.quic().peer_identity().unwrap();
    let certs = id
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .unwrap();
    certs[0].to_vec()
}

/// Issues a new TLS certificate from the gateway's own CA in `dir`.
fn reissue_tls(dir: &Path) {
    let ca = service_kit::pki::read(dir, gateway::keys::files::GATEWAY_CA).unwrap();
    let tls = service_kit::pki::issue(
        &ca,
        "bkv gateway (reissued)",
        &["localhost", "127.0.0.1"],
        service_kit::pki::Usage::Server,
    )
    .unwrap();
    for ext in ["pem", "key"] {
        std::fs::remove_file(dir.join(format!("{}.{ext}", gateway::keys::files::GATEWAY_TLS)))
            .unwrap();
    }
    service_kit::pki::write(dir, gateway::keys::files::GATEWAY_TLS, &tls).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_on_sighup_without_stranding_phones_or_dropping_connections() {
    let stack = LocalStack::start(StackOptions {
        replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    // The process gets a state folder of its own (a copy of the stack's
    // gateway keys), so rotating it leaves the stack's gateway alone.
    let dir = stack.dir.join("gateway-rotating");
    copy_dir(&stack.gateway_dir(), &dir).unwrap();
    let state = dir.to_str().unwrap().to_string();
    let d = dir.clone();
    let gw = GatewayProcess::start(&stack, "gateway-rotating", move |c| c.state_dir = d)
        .await
        .unwrap();
    let mut old_profile = stack.profile.clone();
    old_profile.gateway_addr = gw.addr;
    old_profile.other_gateways.clear();
    let old_key = old_profile.gateway_noise_key.clone().unwrap();

    let before = GatewayConnection::connect(&old_profile, &stack.enroll_device("early").unwrap())
        .await
        .unwrap();
    status_works(&before, &old_profile).await;
    assert_eq!(before.gateway_key_update(), None);
    let old_cert = peer_cert(&before);

    // The operator prepares the next key, rotates, reissues the TLS
    // certificate, adds a new account-service key, and sends SIGHUP.
    let next = gateway_cmd(&["prepare-noise-key", "--state-dir", &state]);
    assert_eq!(next.len(), 64);
    assert_eq!(
        gateway_cmd(&["prepare-noise-key", "--state-dir", &state]),
        next,
        "preparing twice keeps the prepared key"
    );
    let rotated = gateway_cmd(&[
        "rotate-noise-key",
        "--state-dir",
        &state,
        "--overlap-days",
        "30",
    ]);
    assert_eq!(rotated, next);
    reissue_tls(&dir);
    let (new_signer, new_public) = protocol_spec::credential::generate_signing_key().unwrap();
    let pub_path = dir.join(gateway::keys::files::ACCOUNT_SERVICE_PUBLIC);
    let old_public = std::fs::read_to_string(&pub_path).unwrap();
    service_kit::files::write_public(
        &pub_path,
        format!("{}\n{}\n", hex::encode(&new_public), old_public.trim()).as_bytes(),
    )
    .unwrap();
    assert!(gw.reload().await.unwrap(), "{}", gw.log());

    // The connection made before the reload carries on.
    status_works(&before, &old_profile).await;
    assert_eq!(peer_cert(&before), old_cert);

    // During the overlap: a phone pinned to the old key gets in (IK to the
    // previous key), is told the new one, and sees the new certificate.
    let during = GatewayConnection::connect(&old_profile, &stack.enroll_device("during").unwrap())
        .await
        .unwrap();
    assert_eq!(
        during.gateway_key_update().map(hex::encode),
        Some(next.clone())
    );
    assert_ne!(
        peer_cert(&during),
        old_cert,
        "new connections get the new certificate"
    );
    status_works(&during, &old_profile).await;

    // A credential from the new account-service key, and one from the old.
    let mut fresh = DeviceIdentity::generate().unwrap();
    fresh.credential = Some(
        protocol_spec::credential::mint(
            &new_signer,
            "fresh",
            &fresh.static_public,
            std::time::Duration::from_secs(600),
        )
        .unwrap(),
    );
    let c = GatewayConnection::connect(&old_profile, &fresh)
        .await
        .unwrap();
    status_works(&c, &old_profile).await;
    let c = GatewayConnection::connect(&old_profile, &stack.enroll_device("old-signer").unwrap())
        .await
        .unwrap();
    status_works(&c, &old_profile).await;

    // A reload from a broken folder keeps the keys the gateway had.
    let noise_file = dir.join(gateway::keys::files::NOISE_KEY);
    let good = std::fs::read(&noise_file).unwrap();
    service_kit::files::write_public(
        &noise_file,
        b"private_hex = \"not hex\"\npublic_hex = \"\"\n",
    )
    .unwrap();
    assert!(
        !gw.reload().await.unwrap(),
        "a broken key file must not be taken"
    );
    let c = GatewayConnection::connect(&old_profile, &stack.enroll_device("still").unwrap())
        .await
        .unwrap();
    assert_eq!(c.gateway_key_update().map(hex::encode), Some(next.clone()));
    service_kit::files::write_public(&noise_file, &good).unwrap();

    // The overlap ends (a second rotation retires the key at once): the old
    // pin is refused with an error that says to update the app ...
    let third = gateway_cmd(&[
        "rotate-noise-key",
        "--state-dir",
        &state,
        "--overlap-days",
        "0",
    ]);
    assert!(gw.reload().await.unwrap(), "{}", gw.log());
    let err = GatewayConnection::connect(&old_profile, &stack.enroll_device("late").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::GatewayKeyOutdated(_)), "{err}");
    assert!(err.to_string().contains("update the app"), "{err}");
    // ... a phone whose profile carries the next key gets in and pins it ...
    let mut ahead = old_profile.clone();
    ahead.gateway_noise_next_key = Some(third.clone());
    let c = GatewayConnection::connect(&ahead, &stack.enroll_device("ahead").unwrap())
        .await
        .unwrap();
    assert_eq!(c.gateway_key_update().map(hex::encode), Some(third.clone()));
    status_works(&c, &ahead).await;
    // ... and so does one that pins the current key, told nothing.
    let mut current = old_profile.clone();
    current.gateway_noise_key = Some(third);
    let c = GatewayConnection::connect(&current, &stack.enroll_device("current").unwrap())
        .await
        .unwrap();
    assert_eq!(c.gateway_key_update(), None);
    // The connection from before every rotation still works.
    status_works(&before, &old_profile).await;
    assert_ne!(old_key, next);
    assert!(gw.log().contains("handshake unreadable"));
}

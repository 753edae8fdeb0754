#![allow(clippy::unwrap_used)]
// Tests write fixtures and forged files directly.
#![allow(clippy::disallowed_methods)]
//! The PKCS#11 key-protection backend against SoftHSM2: a cluster whose
//! replicas' fleet secrets are sealed by a key inside a token initializes
//! and serves; the sealed files are useless without that token and PIN.
//!
//! Needs SoftHSM2 (`apt-get install softhsm2`; `.ci/run` installs it).

use std::path::{Path, PathBuf};

use client::{BackupKey, GatewayConnection, VaultClient};
use protocol_spec::opaque_profile::cheap_ksf_for_load_tests;
use testing::local_stack::{LocalStack, StackOptions};
use testing::softhsm::{SoftHsm, MODULE};
use vault_backend::config::files;
use vault_backend::keyprotect::{KeyProtection, Pkcs11Key};
use vault_backend::secrets::FleetSecrets;
use zeroize::Zeroizing;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_sealed_cluster_serves_and_its_secrets_need_the_token() {
    let hsm = SoftHsm::new();
    let conf = hsm.conf.clone();
    // Both tokens exist before the library is first initialized here.
    hsm.init_token("bkv-vault", "1234");
    hsm.init_token("another-hsm", "1234");
    // The only test in this binary: nothing else reads the environment.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::set_var("BKV_PKCS11_PIN", "1234");

    let protection = KeyProtection::Pkcs11 {
        module: MODULE.into(),
        token_label: "bkv-vault".into(),
        key_label: "bkv-fleet-kek".into(),
        pin_env: "BKV_PKCS11_PIN".into(),
    };
    // A wrong PIN does not log in. (Checked first: PKCS#11 login state
    // belongs to the process, and once the replicas below have logged in,
    // every later session of this process is logged in, whatever its PIN.)
    let wrong_pin = Pkcs11Key::open(
        Path::new(MODULE),
        "bkv-vault",
        "bkv-fleet-kek",
        Zeroizing::new("0000".into()),
        false,
    );
    assert!(wrong_pin.is_err());
    let stack = LocalStack::start(StackOptions {
        replicas: 3,
        key_protection: protection.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // It serves.
    let dev = stack.enroll_device("hsm-user").unwrap();
    let conn = GatewayConnection::connect(&stack.profile, &dev)
        .await
        .unwrap();
    let v = VaultClient::new(&conn, &stack.profile)
        .unwrap()
        .with_ksf(cheap_ksf_for_load_tests());
    let key = BackupKey::generate();
    v.register(b"pw", &key, false).await.unwrap();
    assert_eq!(v.recover(b"pw").await.unwrap(), key);
    conn.close().await;

    let replica_dir: PathBuf = stack.clusters[0].configs[0].state_dir.clone();
    let sealed = replica_dir.join(files::SECRETS);
    let text = std::fs::read_to_string(&sealed).unwrap();
    assert!(text.contains("PKCS#11"), "{text}");
    assert!(!text.contains("server_setup"), "secrets on disk are sealed");
    assert!(
        !replica_dir.join("master.key").exists(),
        "no software key next to HSM-sealed secrets"
    );
    // The right token opens them.
    let right = protection.open(&replica_dir, false).unwrap();
    let fleet = FleetSecrets::load(&sealed, right.as_ref()).unwrap();
    assert_eq!(
        hex::encode(fleet.public_key()),
        stack.profile.fleet_public_key
    );

    // Without that token they are useless: another token's key of the same
    // label, a wrong PIN, or a software key file all fail.
    let other = Pkcs11Key::open(
        Path::new(MODULE),
        "another-hsm",
        "bkv-fleet-kek",
        Zeroizing::new("1234".into()),
        true,
    )
    .unwrap();
    let err = FleetSecrets::load(&sealed, &other).unwrap_err();
    assert!(err.to_string().contains("cannot unseal"), "{err}");
    let missing = Pkcs11Key::open(
        Path::new(MODULE),
        "no-such-token",
        "bkv-fleet-kek",
        Zeroizing::new("1234".into()),
        false,
    );
    assert!(missing
        .err()
        .unwrap()
        .to_string()
        .contains("no PKCS#11 token"));
    assert!(KeyProtection::default().open(&replica_dir, false).is_err());

    stack.shutdown().await;
}

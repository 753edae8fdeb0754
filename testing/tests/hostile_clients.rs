#![allow(clippy::unwrap_used)]
//! Hostile and confused clients against the real gateway: unauthenticated
//! requests, bad credentials, other accounts, malformed frames, and peers
//! without a gateway certificate on the vault's port.

use std::time::Duration;

use client::{BackupKey, ClientError, DeviceIdentity, GatewayConnection, Status, VaultClient};
use opaque_ke::ClientLogin;
use protocol_spec::msg::{
    self, request::Kind as Req, response::Kind as Resp, ErrorCode, LoginPurpose,
};
use protocol_spec::opaque_profile::Suite;
use protocol_spec::stream_io::read_message;
use protocol_spec::CloseCode;
use rand::rngs::OsRng;
use testing::local_stack::{LocalStack, StackOptions};

async fn stack() -> LocalStack {
    LocalStack::start(StackOptions::default())
        .await
        .expect("stack starts")
}

async fn raw_connection(stack: &LocalStack) -> (quinn::Endpoint, quinn::Connection) {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(client::connection::tls_config(&stack.profile).unwrap());
    let conn = ep
        .connect(stack.profile.gateway_addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

async fn close_code(conn: &quinn::Connection) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(15), conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

fn status_frame() -> Vec<u8> {
    protocol_spec::framing::encode(&msg::Request {
        kind: Some(Req::Status(msg::StatusRequest {})),
    })
    .unwrap()
}

#[tokio::test]
async fn a_request_before_the_handshake_finishes_closes_the_connection() {
    let stack = stack().await;
    let (_ep, conn) = raw_connection(&stack).await;
    // Handshake stream opened but left unfinished (only a length prefix).
    let (mut hs_send, _hs_recv) = conn.open_bi().await.unwrap();
    hs_send.write_all(&[0, 0, 0, 40]).await.unwrap();
    // A request stream before authentication.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&status_frame()).await.unwrap();
    let _ = send.finish();
    assert!(
        read_message::<msg::Response, _>(&mut recv).await.is_err(),
        "no answer may come"
    );
    assert_eq!(
        close_code(&conn).await,
        Some(CloseCode::Unauthenticated as u64)
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn a_request_sent_as_the_handshake_is_a_protocol_error() {
    let stack = stack().await;
    let (_ep, conn) = raw_connection(&stack).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&status_frame()).await.unwrap();
    let _ = send.finish();
    assert_eq!(
        close_code(&conn).await,
        Some(CloseCode::ProtocolError as u64)
    );
    stack.shutdown().await;
}

async fn expect_refused(stack: &LocalStack, dev: &DeviceIdentity, what: &str) {
    match GatewayConnection::connect(&stack.profile, dev).await {
        Err(ClientError::Authentication(msg)) => {
            assert!(!msg.is_empty(), "{what}: refusal should explain itself")
        }
        other => panic!("{what}: expected refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_credentials_are_refused() {
    let stack = stack().await;
    // Credential minted for another device key.
    let mut dev = DeviceIdentity::generate().unwrap();
    let other = DeviceIdentity::generate().unwrap();
    dev.credential = Some(
        stack
            .mint("acct", &other.static_public, Duration::from_secs(600))
            .unwrap(),
    );
    expect_refused(&stack, &dev, "other device key").await;

    // Expired credential.
    let secret = gateway::keys::account_service_secret(&stack.gateway_dir()).unwrap();
    dev.credential = Some(
        protocol_spec::credential::mint_with_validity(
            &secret,
            "acct",
            &dev.static_public,
            "2020-01-01T00:00:00+00:00",
            "2020-01-02T00:00:00+00:00",
        )
        .unwrap(),
    );
    expect_refused(&stack, &dev, "expired").await;

    // Forged: signed by a key that is not the account service's.
    let (forger, _) = protocol_spec::credential::generate_signing_key().unwrap();
    dev.credential = Some(
        protocol_spec::credential::mint(
            &forger,
            "acct",
            &dev.static_public,
            Duration::from_secs(600),
        )
        .unwrap(),
    );
    expect_refused(&stack, &dev, "forged").await;

    // Garbage.
    dev.credential = Some("v4.public.not-a-token".into());
    expect_refused(&stack, &dev, "garbage").await;

    // The gateway still serves good devices.
    let good = stack.enroll_device("acct").unwrap();
    let conn = GatewayConnection::connect(&stack.profile, &good)
        .await
        .unwrap();
    assert_eq!(conn.account_id(), "acct");
    conn.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn a_device_of_another_account_cannot_touch_the_deposit() {
    let stack = stack().await;
    let dev_a = stack.enroll_device("account-a").unwrap();
    let dev_b = stack.enroll_device("account-b").unwrap();
    let conn_a = GatewayConnection::connect(&stack.profile, &dev_a)
        .await
        .unwrap();
    let conn_b = GatewayConnection::connect(&stack.profile, &dev_b)
        .await
        .unwrap();
    let vault_a = VaultClient::new(&conn_a, &stack.profile).unwrap();
    let vault_b = VaultClient::new(&conn_b, &stack.profile).unwrap();
    let key = BackupKey::generate();
    vault_a.register(b"pw-a", &key, false).await.unwrap();

    assert_eq!(vault_b.status().await.unwrap(), Status::NotRegistered);
    assert!(matches!(
        vault_b.recover(b"pw-a").await,
        Err(ClientError::NotRegistered)
    ));

    // B tries to finish A's login session.
    let start = ClientLogin::<Suite>::start(&mut OsRng, b"pw-a").unwrap();
    let r = conn_a
        .request(&msg::Request {
            kind: Some(Req::LoginStart(msg::LoginStartRequest {
                credential_request: start.message.serialize().to_vec(),
                purpose: LoginPurpose::Disable as i32,
            })),
        })
        .await
        .unwrap();
    let Some(Resp::LoginStart(ls)) = r.kind else {
        panic!("{r:?}")
    };
    let stolen = conn_b
        .request(&msg::Request {
            kind: Some(Req::LoginFinish(msg::LoginFinishRequest {
                login_session: ls.login_session.clone(),
                credential_finalization: vec![1; 64],
            })),
        })
        .await
        .unwrap();
    match stolen.kind {
        Some(Resp::Error(e)) => assert_eq!(e.code(), ErrorCode::SessionExpired),
        other => panic!("{other:?}"),
    }
    // A's deposit is intact and still opens.
    assert_eq!(vault_a.recover(b"pw-a").await.unwrap(), key);
    conn_a.close().await;
    conn_b.close().await;
    stack.shutdown().await;
}

async fn send_raw_after_auth(
    stack: &LocalStack,
    bytes: &[u8],
) -> (Option<msg::Response>, Option<u64>) {
    let dev = stack.enroll_device("mallory").unwrap();
    let conn = GatewayConnection::connect(&stack.profile, &dev)
        .await
        .unwrap();
    let q = conn.quic().clone();
    let (mut send, mut recv) = q.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let resp = read_message::<msg::Response, _>(&mut recv).await.ok();
    (resp, close_code(&q).await)
}

#[tokio::test]
async fn malformed_truncated_and_oversized_frames_get_a_protocol_error_and_a_clean_close() {
    let stack = stack().await;
    // Malformed body.
    let mut garbage = vec![0, 0, 0, 5];
    garbage.extend_from_slice(&[0xff; 5]);
    // Valid protobuf, wrong-sized OPAQUE field.
    let bad_size = protocol_spec::framing::encode(&msg::Request {
        kind: Some(Req::LoginStart(msg::LoginStartRequest {
            credential_request: vec![1; 10],
            purpose: LoginPurpose::Recover as i32,
        })),
    })
    .unwrap();
    // Truncated: announces 100 bytes, sends 10.
    let mut truncated = vec![0, 0, 0, 100];
    truncated.extend_from_slice(&[0; 10]);
    // Oversized: announces 1 MiB.
    let oversized = (1u32 << 20).to_be_bytes().to_vec();

    for (name, bytes) in [
        ("garbage", garbage),
        ("bad size", bad_size),
        ("truncated", truncated),
        ("oversized", oversized),
    ] {
        let (resp, code) = send_raw_after_auth(&stack, &bytes).await;
        let resp = resp.unwrap_or_else(|| panic!("{name}: expected an error response"));
        match resp.kind {
            Some(Resp::Error(e)) => assert_eq!(e.code(), ErrorCode::ProtocolError, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(code, Some(CloseCode::ProtocolError as u64), "{name}");
    }

    // Others are still served.
    let dev = stack.enroll_device("innocent").unwrap();
    let conn = GatewayConnection::connect(&stack.profile, &dev)
        .await
        .unwrap();
    let vault = VaultClient::new(&conn, &stack.profile).unwrap();
    assert_eq!(vault.status().await.unwrap(), Status::NotRegistered);
    conn.close().await;
    stack.shutdown().await;
}

#[tokio::test]
async fn the_vault_refuses_peers_without_a_gateway_certificate() {
    let stack = stack().await;
    let vault_addr = stack.replica_addr(0, 0);
    let ca_pem = stack.vault_ca_pem().unwrap();

    // Trusts the vault, presents no client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in service_kit::pki::certs(&ca_pem).unwrap() {
        roots.add(c).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(service_kit::pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![protocol_spec::noise::VAULT_ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    let attempt = async {
        let conn = ep
            .connect(vault_addr, service_kit::pki::REPLICA_ROLE_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let req = protocol_spec::internal::VaultRequest {
            account_id: "victim".into(),
            request: Some(msg::Request {
                kind: Some(Req::Status(msg::StatusRequest {})),
            }),
            members: None,
            device_key: Vec::new(),
        };
        protocol_spec::stream_io::write_message(&mut send, &req)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        read_message::<msg::Response, _>(&mut recv)
            .await
            .map_err(|e| e.to_string())
    };
    let out = tokio::time::timeout(Duration::from_secs(15), attempt)
        .await
        .expect("bounded");
    assert!(
        out.is_err(),
        "a peer without a gateway certificate must get nothing: {out:?}"
    );

    // A certificate from another CA is refused too.
    let rogue_ca = service_kit::pki::new_ca("rogue").unwrap();
    let rogue = service_kit::pki::issue(
        &rogue_ca,
        "rogue gateway",
        &["gw"],
        service_kit::pki::Usage::Client,
    )
    .unwrap();
    let link = gateway::vault_client::VaultClusters::new(
        &[gateway::vault_client::ClusterConfig {
            name: "c".into(),
            replicas: vec![vault_addr],
            server_name: service_kit::pki::REPLICA_ROLE_NAME.into(),
        }],
        &rogue,
        &ca_pem,
        gateway::relay::RelayConfig::default(),
    )
    .unwrap();
    let resp = link
        .call(
            "victim",
            &[],
            msg::Request {
                kind: Some(Req::Status(msg::StatusRequest {})),
            },
        )
        .await;
    match resp.kind {
        Some(Resp::Error(e)) => assert_eq!(e.code(), ErrorCode::Unavailable),
        other => panic!("rogue gateway got {other:?}"),
    }
    stack.shutdown().await;
}

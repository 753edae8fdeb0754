#![allow(clippy::unwrap_used)]
//! Test vectors published in SPEC.md, and sans-IO checks of the handshake and
//! OPAQUE message sizes. If one of these fails, SPEC.md and the code disagree.

use std::time::Duration;

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, ServerLogin, ServerLoginParameters, ServerRegistration,
    ServerSetup,
};
use protocol_spec::credential::{self, CredentialError, CredentialVerifier};
use protocol_spec::handshake::{Initiator, InitiatorStep, Responder, ResponderStep};
use protocol_spec::msg::{self, NoisePattern};
use protocol_spec::opaque_profile::{self as op, Suite};
use protocol_spec::{framing, noise};
use rand::rngs::OsRng;

fn vector(name: &str) -> String {
    // Vectors live in SPEC.md between "<!-- vector:NAME -->" and the end of the code block.
    let spec = include_str!("../SPEC.md");
    let start = spec
        .find(&format!("<!-- vector:{name} -->"))
        .unwrap_or_else(|| panic!("vector {name} missing"));
    let block = &spec[start..];
    let open = block.find("```").unwrap() + 3;
    let body = &block[open..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let close = body.find("```").unwrap();
    body[..close].split_whitespace().collect()
}

#[test]
fn framed_status_request_vector() {
    let req = msg::Request {
        kind: Some(msg::request::Kind::Status(msg::StatusRequest {})),
    };
    assert_eq!(
        hex::encode(framing::encode(&req).unwrap()),
        vector("frame-status")
    );
}

#[test]
fn framed_wrong_password_response_vector() {
    let mut e = msg::Error::new(msg::ErrorCode::WrongPassword, "wrong password");
    e.attempts_left = 3;
    let resp = msg::Response {
        kind: Some(msg::response::Kind::Error(e)),
    };
    let bytes = framing::encode(&resp).unwrap();
    assert_eq!(hex::encode(&bytes), vector("frame-wrong-password"));
    let mut d = framing::FrameDecoder::new();
    d.push(&bytes).unwrap();
    let body = d.next_frame().unwrap().unwrap();
    assert_eq!(framing::decode::<msg::Response>(&body).unwrap(), resp);
}

#[test]
fn prologue_vector() {
    let exporter: [u8; 32] = core::array::from_fn(|i| i as u8);
    assert_eq!(
        hex::encode(noise::prologue(NoisePattern::Ik, &exporter)),
        vector("prologue-ik")
    );
}

#[test]
fn key_wrap_vector() {
    let export_key = [0x11u8; 64];
    let backup_key = [0x22u8; 32];
    let wrapped = op::wrap_backup_key_with_nonce(
        &export_key,
        "alice",
        "bkv-fleet-1",
        &backup_key,
        [0x33; 12],
    )
    .unwrap();
    assert_eq!(hex::encode(&wrapped), vector("key-wrap"));
    assert_eq!(
        *op::unwrap_backup_key(&export_key, "alice", "bkv-fleet-1", &wrapped).unwrap(),
        backup_key
    );
    assert!(op::unwrap_backup_key(&export_key, "mallory", "bkv-fleet-1", &wrapped).is_err());
}

#[test]
fn opaque_message_sizes_match_the_spec() {
    let setup = ServerSetup::<Suite>::new(&mut OsRng);
    let ids = op::identifiers("alice", "fleet");
    let ksf = op::cheap_ksf_for_load_tests();
    let cred_id = op::credential_identifier("fleet", "alice", &[9; 16]);
    let rs = ClientRegistration::<Suite>::start(&mut OsRng, b"pw").unwrap();
    assert_eq!(rs.message.serialize().len(), op::REGISTRATION_REQUEST_LEN);
    let sr = ServerRegistration::<Suite>::start(&setup, rs.message, &cred_id).unwrap();
    assert_eq!(sr.message.serialize().len(), op::REGISTRATION_RESPONSE_LEN);
    let rf = rs
        .state
        .finish(
            &mut OsRng,
            b"pw",
            sr.message,
            ClientRegistrationFinishParameters::new(ids, Some(&ksf)),
        )
        .unwrap();
    assert_eq!(rf.message.serialize().len(), op::REGISTRATION_UPLOAD_LEN);
    assert_eq!(
        rf.server_s_pk.serialize().to_vec(),
        setup.keypair().public().serialize().to_vec()
    );
    let file = ServerRegistration::finish(rf.message);
    let ls = ClientLogin::<Suite>::start(&mut OsRng, b"pw").unwrap();
    assert_eq!(ls.message.serialize().len(), op::CREDENTIAL_REQUEST_LEN);
    let params = ServerLoginParameters {
        context: None,
        identifiers: ids,
    };
    let sl = ServerLogin::start(
        &mut OsRng,
        &setup,
        Some(file),
        ls.message,
        &cred_id,
        params.clone(),
    )
    .unwrap();
    assert_eq!(sl.message.serialize().len(), op::CREDENTIAL_RESPONSE_LEN);
    let lf = ls
        .state
        .finish(
            &mut OsRng,
            b"pw",
            sl.message,
            ClientLoginFinishParameters::new(None, ids, Some(&ksf)),
        )
        .unwrap();
    assert_eq!(
        lf.message.serialize().len(),
        op::CREDENTIAL_FINALIZATION_LEN
    );
    let sf = sl.state.finish(lf.message, params).unwrap();
    assert_eq!(sf.session_key, lf.session_key);
    let wrapped = op::wrap_backup_key(&rf.export_key, "alice", "fleet", &[5; 32]).unwrap();
    assert_eq!(wrapped.len(), op::WRAPPED_KEY_LEN);
    let sealed = op::seal_release(&sf.session_key, &[1; 16], &wrapped).unwrap();
    assert_eq!(sealed.len(), op::SEALED_KEY_LEN);
    assert_eq!(
        op::open_release(&lf.session_key, &[1; 16], &sealed).unwrap(),
        wrapped
    );
    assert_eq!(
        *op::unwrap_backup_key(&lf.export_key, "alice", "fleet", &wrapped).unwrap(),
        [5; 32]
    );
}

struct Run {
    client: Result<String, String>,
    server: Option<Result<String, CredentialError>>,
}

fn run_handshake(force_xx: bool, client_exporter: [u8; 32], token_for: Option<[u8; 32]>) -> Run {
    let (gw_priv, gw_pub) = noise::generate_static_keypair().unwrap();
    let (dev_priv, dev_pub) = noise::generate_static_keypair().unwrap();
    let (sk, pk) = credential::generate_signing_key().unwrap();
    let token = credential::mint(
        &sk,
        "alice",
        &token_for.unwrap_or(dev_pub),
        Duration::from_secs(60),
    )
    .unwrap();
    let verifier = CredentialVerifier::new(&pk).unwrap();
    let mut i = Initiator::new(
        dev_priv,
        Some(gw_pub),
        force_xx,
        client_exporter,
        &token,
        "test",
    );
    let mut r = Responder::new(gw_priv, [7; 32], &verifier);
    let mut to_server = vec![i.start().unwrap()];
    let mut server_outcome = None;
    for _ in 0..4 {
        let mut to_client = Vec::new();
        for f in to_server.drain(..) {
            match r.on_frame(&f[4..]) {
                Ok(ResponderStep::Send(x)) => to_client.push(x),
                Ok(ResponderStep::Finished(xs, out)) => {
                    to_client.extend(xs);
                    server_outcome = Some(out.map(|d| d.account_id));
                }
                Err(e) => {
                    return Run {
                        client: Err(e.to_string()),
                        server: server_outcome,
                    }
                }
            }
        }
        for f in to_client {
            match i.on_frame(&f[4..]) {
                Ok(InitiatorStep::Send(x)) => to_server.push(x),
                Ok(InitiatorStep::Wait) => {}
                Ok(InitiatorStep::Done { account_id, .. }) => {
                    return Run {
                        client: Ok(account_id),
                        server: server_outcome,
                    }
                }
                Err(e) => {
                    return Run {
                        client: Err(e.to_string()),
                        server: server_outcome,
                    }
                }
            }
        }
    }
    Run {
        client: Err("did not finish".into()),
        server: server_outcome,
    }
}

#[test]
fn ik_and_xx_handshakes_authenticate_the_device() {
    for xx in [false, true] {
        let run = run_handshake(xx, [7; 32], None);
        assert_eq!(run.client.unwrap(), "alice");
        assert_eq!(run.server.unwrap().unwrap(), "alice");
    }
}

#[test]
fn a_handshake_from_another_connection_fails() {
    for xx in [false, true] {
        let run = run_handshake(xx, [8; 32], None);
        assert!(run.client.is_err());
        assert!(
            !matches!(run.server, Some(Ok(_))),
            "server must not authenticate"
        );
    }
}

#[test]
fn a_credential_for_another_device_is_refused_in_both_patterns() {
    for xx in [false, true] {
        let run = run_handshake(xx, [7; 32], Some([3; 32]));
        assert!(run.client.unwrap_err().contains("refused"));
        assert_eq!(
            run.server.unwrap().unwrap_err(),
            CredentialError::WrongDevice
        );
    }
}

/// HKDF-Expand-Label of RFC 8446 §7.1, SHA-256, as SPEC §4.3 writes it.
fn expand_label(secret: &[u8], label: &[u8], context: &[u8], out: &mut [u8]) {
    let full = [b"tls13 ".as_slice(), label].concat();
    let mut info = (out.len() as u16).to_be_bytes().to_vec();
    info.push(full.len() as u8);
    info.extend_from_slice(&full);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    hkdf::Hkdf::<sha2::Sha256>::from_prk(secret)
        .unwrap()
        .expand(&info, out)
        .unwrap();
}

/// The channel binding from an exporter master secret, by SPEC §4.3's
/// formula (for stacks without an exporter API).
fn exporter_by_formula(exporter_master_secret: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let empty = sha2::Sha256::digest(b"");
    let mut secret = [0u8; 32];
    expand_label(
        exporter_master_secret,
        noise::EXPORTER_LABEL,
        &empty,
        &mut secret,
    );
    let mut out = [0u8; 32];
    expand_label(
        &secret,
        b"exporter",
        &sha2::Sha256::digest(noise::EXPORTER_CONTEXT),
        &mut out,
    );
    out
}

#[test]
fn tls_exporter_formula_vector() {
    let ems: Vec<u8> = (0u8..32).collect();
    assert_eq!(
        hex::encode(exporter_by_formula(&ems)),
        vector("tls-exporter")
    );
}

/// The formula agrees with rustls' own exporter on a real TLS 1.3
/// handshake, whose exporter master secret comes from its key log.
#[test]
fn tls_exporter_formula_matches_rustls() {
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Default)]
    struct Log(Mutex<Option<Vec<u8>>>);
    impl rustls::KeyLog for Log {
        fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
            if label == "EXPORTER_SECRET" {
                *self.0.lock().unwrap() = Some(secret.to_vec());
            }
        }
    }

    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let log = Arc::new(Log::default());
    let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.key_log = log.clone();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let mut c =
        rustls::ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::ServerConnection::new(Arc::new(server)).unwrap();
    let mut buf = Vec::new();
    for _ in 0..10 {
        buf.clear();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().unwrap();
        buf.clear();
        s.write_tls(&mut buf).unwrap();
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    let ems = log
        .0
        .lock()
        .unwrap()
        .clone()
        .expect("the key log saw the exporter secret");
    let mut by_rustls = [0u8; 32];
    c.export_keying_material(
        &mut by_rustls,
        noise::EXPORTER_LABEL,
        Some(noise::EXPORTER_CONTEXT),
    )
    .unwrap();
    assert_eq!(exporter_by_formula(&ems), by_rustls);
}

#![allow(clippy::unwrap_used)]
//! OPAQUE vectors in the manner of RFC 9807 Appendix C, for this
//! protocol's profile (SPEC.md §5.1: ristretto255-SHA512, Argon2id, the
//! account id and fleet id as identities, no context), with every input
//! fixed and every value a client or vault exchanges or derives.
//!
//! The randomness opaque-ke draws is fed from named values in the order
//! the RFC's procedures draw them (a scalar is drawn as 64 bytes and
//! reduced, so a 32-byte canonical scalar is given with 32 zero bytes
//! after it). That mapping is first checked against RFC 9807's own "Real
//! Test Vector 2" (which has identities): if that passes, the profile's
//! vectors below mean exactly what the RFC's fields mean, and an
//! implementation written from RFC 9807 can check itself against them.

use std::collections::BTreeMap;

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialFinalization, CredentialRequest,
    CredentialResponse, Identifiers, RegistrationRequest, RegistrationResponse, RegistrationUpload,
    Ristretto255, ServerLogin, ServerLoginParameters, ServerRegistration, ServerSetup, TripleDh,
};
use protocol_spec::opaque_profile::{self as op, Suite};
use rand::{CryptoRng, RngCore};
use sha2::Sha512;

/// RFC 9807's test configuration: the same groups and hash, KSF Identity.
struct RfcSuite;
impl opaque_ke::CipherSuite for RfcSuite {
    type OprfCs = Ristretto255;
    type KeyExchange = TripleDh<Ristretto255, Sha512>;
    type Ksf = opaque_ke::ksf::Identity;
}

/// An RNG that answers each draw with the next named value (zero-padded
/// to the length asked for), and records what was drawn.
struct Draws {
    queue: Vec<(&'static str, Vec<u8>)>,
    drawn: Vec<(&'static str, usize)>,
}

impl Draws {
    fn new(values: &[(&'static str, &[u8])]) -> Self {
        Self {
            queue: values.iter().rev().map(|(n, v)| (*n, v.to_vec())).collect(),
            drawn: Vec::new(),
        }
    }

    fn done(&self) {
        assert!(self.queue.is_empty(), "not drawn: {:?}", self.queue);
    }
}

impl RngCore for Draws {
    fn next_u32(&mut self) -> u32 {
        panic!("an unexpected draw (u32)")
    }
    fn next_u64(&mut self) -> u64 {
        panic!("an unexpected draw (u64)")
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let (name, v) = self.queue.pop().unwrap_or_else(|| {
            panic!(
                "an unexpected draw of {} bytes after {:?}",
                dest.len(),
                self.drawn
            )
        });
        assert!(
            v.len() <= dest.len(),
            "{name}: {} bytes given, {} drawn",
            v.len(),
            dest.len()
        );
        dest.fill(0);
        dest[..v.len()].copy_from_slice(&v);
        self.drawn.push((name, dest.len()));
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}
impl CryptoRng for Draws {}

/// Every value of one run, by its RFC 9807 name.
type Values = BTreeMap<&'static str, Vec<u8>>;

/// Inputs of a run.
struct Inputs<'a> {
    context: Option<&'a [u8]>,
    client_identity: &'a [u8],
    server_identity: &'a [u8],
    oprf_seed: Vec<u8>,
    credential_identifier: Vec<u8>,
    password: Vec<u8>,
    envelope_nonce: Vec<u8>,
    masking_nonce: Vec<u8>,
    server_private_key: Vec<u8>,
    server_nonce: Vec<u8>,
    client_nonce: Vec<u8>,
    client_keyshare_seed: Vec<u8>,
    server_keyshare_seed: Vec<u8>,
    blind_registration: Vec<u8>,
    blind_login: Vec<u8>,
}

/// Registration then login, as RFC 9807 Appendix C runs them.
fn run<CS>(i: &Inputs<'_>, ksf: Option<&CS::Ksf>) -> Values
where
    CS: opaque_ke::CipherSuite<OprfCs = Ristretto255, KeyExchange = TripleDh<Ristretto255, Sha512>>,
{
    let ids = Identifiers {
        client: Some(i.client_identity),
        server: Some(i.server_identity),
    };
    let mut out = Values::new();
    // The server's setup: OPRF seed, key pair; the last 32 bytes are the
    // public key used for unknown accounts (not part of a real run).
    // (ristretto255's generator stands in for it).
    let generator =
        hex::decode("e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76").unwrap();
    let setup = ServerSetup::<CS>::deserialize(
        &[i.oprf_seed.as_slice(), &i.server_private_key, &generator].concat(),
    )
    .unwrap();
    out.insert(
        "server_public_key",
        setup.keypair().public().serialize().to_vec(),
    );

    let mut rng = Draws::new(&[("blind_registration", &i.blind_registration)]);
    let c1 = ClientRegistration::<CS>::start(&mut rng, &i.password).unwrap();
    rng.done();
    let request = c1.message.serialize().to_vec();
    let s1 = ServerRegistration::<CS>::start(
        &setup,
        RegistrationRequest::deserialize(&request).unwrap(),
        &i.credential_identifier,
    )
    .unwrap();
    let response = s1.message.serialize().to_vec();
    let mut rng = Draws::new(&[("envelope_nonce", &i.envelope_nonce)]);
    let c2 = c1
        .state
        .finish(
            &mut rng,
            &i.password,
            RegistrationResponse::deserialize(&response).unwrap(),
            ClientRegistrationFinishParameters::new(ids, ksf),
        )
        .unwrap();
    rng.done();
    let upload = c2.message.serialize().to_vec();
    let record =
        ServerRegistration::<CS>::finish(RegistrationUpload::deserialize(&upload).unwrap());
    out.insert("registration_request", request);
    out.insert("registration_response", response);
    out.insert("registration_upload", upload);
    out.insert("export_key", c2.export_key.to_vec());

    let mut rng = Draws::new(&[
        ("blind_login", &i.blind_login),
        ("client_keyshare_seed", &i.client_keyshare_seed),
        ("client_nonce", &i.client_nonce),
    ]);
    let l1 = ClientLogin::<CS>::start(&mut rng, &i.password).unwrap();
    rng.done();
    let ke1 = l1.message.serialize().to_vec();
    let params = || ServerLoginParameters {
        context: i.context,
        identifiers: ids,
    };
    let mut rng = Draws::new(&[
        ("dummy_masking_key (unused for a real record)", &[0u8; 64]),
        ("masking_nonce", &i.masking_nonce),
        ("server_keyshare_seed", &i.server_keyshare_seed),
        ("server_nonce", &i.server_nonce),
    ]);
    let s2 = ServerLogin::<CS>::start(
        &mut rng,
        &setup,
        Some(record),
        CredentialRequest::deserialize(&ke1).unwrap(),
        &i.credential_identifier,
        params(),
    )
    .unwrap();
    rng.done();
    let ke2 = s2.message.serialize().to_vec();
    let mut rng = Draws::new(&[]);
    let l2 = l1
        .state
        .finish(
            &mut rng,
            &i.password,
            CredentialResponse::deserialize(&ke2).unwrap(),
            ClientLoginFinishParameters::new(i.context, ids, ksf),
        )
        .unwrap();
    rng.done();
    let ke3 = l2.message.serialize().to_vec();
    let s3 = s2
        .state
        .finish(CredentialFinalization::deserialize(&ke3).unwrap(), params())
        .unwrap();
    assert_eq!(s3.session_key, l2.session_key, "both ends agree");
    assert_eq!(l2.export_key, c2.export_key);
    assert_eq!(
        l2.server_s_pk.serialize().to_vec(),
        out["server_public_key"]
    );
    out.insert("KE1", ke1);
    out.insert("KE2", ke2);
    out.insert("KE3", ke3);
    out.insert("session_key", l2.session_key.to_vec());
    out
}

fn rfc_file() -> BTreeMap<String, Vec<u8>> {
    include_str!("rfc9807-c1-2.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .map(|l| {
            let (k, v) = l.split_once(" = ").unwrap();
            (k.to_owned(), hex::decode(v).unwrap())
        })
        .collect()
}

#[test]
fn the_draw_mapping_reproduces_rfc_9807_real_test_vector_2() {
    let f = rfc_file();
    let g = |k: &str| f[k].clone();
    let i = Inputs {
        context: Some(&f["context"]),
        client_identity: &f["client_identity"],
        server_identity: &f["server_identity"],
        oprf_seed: g("oprf_seed"),
        credential_identifier: g("credential_identifier"),
        password: g("password"),
        envelope_nonce: g("envelope_nonce"),
        masking_nonce: g("masking_nonce"),
        server_private_key: g("server_private_key"),
        server_nonce: g("server_nonce"),
        client_nonce: g("client_nonce"),
        client_keyshare_seed: g("client_keyshare_seed"),
        server_keyshare_seed: g("server_keyshare_seed"),
        blind_registration: g("blind_registration"),
        blind_login: g("blind_login"),
    };
    let out = run::<RfcSuite>(&i, None);
    for (k, v) in &out {
        assert_eq!(hex::encode(v), hex::encode(&f[*k]), "{k}");
    }
}

/// This profile's inputs (SPEC.md §5.1.1).
fn profile_inputs() -> (Vec<u8>, Inputs<'static>) {
    let cred_id = op::credential_identifier("bkv-fleet-1", "alice", &[0x44; 16]);
    let i = Inputs {
        context: None,
        client_identity: b"alice",
        server_identity: b"bkv-fleet-1",
        oprf_seed: vec![0x01; 64],
        credential_identifier: cred_id.clone(),
        password: b"correct horse battery staple".to_vec(),
        envelope_nonce: vec![0x02; 32],
        masking_nonce: vec![0x03; 32],
        server_private_key: [[0x04; 31].as_slice(), &[0x00]].concat(),
        server_nonce: vec![0x05; 32],
        client_nonce: vec![0x06; 32],
        client_keyshare_seed: vec![0x07; 32],
        server_keyshare_seed: vec![0x08; 32],
        blind_registration: [[0x09; 31].as_slice(), &[0x00]].concat(),
        blind_login: [[0x0a; 31].as_slice(), &[0x00]].concat(),
    };
    (cred_id, i)
}

fn spec_values(name: &str) -> BTreeMap<String, String> {
    let spec = include_str!("../SPEC.md");
    let start = spec
        .find(&format!("<!-- vector:{name} -->"))
        .unwrap_or_else(|| panic!("vector {name} missing"));
    let block = &spec[start..];
    let body = &block[block.find("```").unwrap() + 3..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let body = &body[..body.find("```").unwrap()];
    let mut out = BTreeMap::new();
    let mut key = String::new();
    for line in body.lines() {
        match line.split_once(':') {
            Some((k, v)) => {
                key = k.trim().to_owned();
                out.insert(key.clone(), v.trim().to_owned());
            }
            None => {
                if let Some(v) = out.get_mut(&key) {
                    v.push_str(line.trim());
                }
            }
        }
    }
    out
}

#[test]
fn the_profiles_vectors_in_the_spec() {
    let (cred_id, i) = profile_inputs();
    let out = run::<Suite>(&i, Some(&op::client_ksf()));
    let mut computed: BTreeMap<String, String> = out
        .iter()
        .map(|(k, v)| ((*k).to_owned(), hex::encode(v)))
        .collect();
    computed.insert("credential_identifier".into(), hex::encode(&cred_id));
    // The key wrap of §5.2 under this export key, and its release under
    // this session key (login session id 16 x 0x0b).
    let wrapped = op::wrap_backup_key_with_nonce(
        &out["export_key"],
        "alice",
        "bkv-fleet-1",
        &[0x22; 32],
        [0x33; 12],
    )
    .unwrap();
    computed.insert("wrapped_key".into(), hex::encode(&wrapped));
    let sealed = op::seal_release(&out["session_key"], &[0x0b; 16], &wrapped).unwrap();
    computed.insert("sealed_key".into(), hex::encode(&sealed));
    let spec = spec_values("opaque-profile");
    let mut missing = Vec::new();
    for (k, v) in &computed {
        match spec.get(k) {
            Some(s) => assert_eq!(s, v, "{k}"),
            None => missing.push(format!("{k}: {v}")),
        }
    }
    assert!(
        missing.is_empty(),
        "not in SPEC.md:\n{}",
        missing.join("\n")
    );
}

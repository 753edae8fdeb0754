#![allow(clippy::unwrap_used)]
//! Gateway key rotation in the sans-IO handshake (SPEC §4.6): a phone
//! pinned to the previous key gets in during the overlap and is told the
//! new key; once the previous key is gone its IK is unreadable (the gateway
//! closes with 7), and its XX fallback accepts only the pin or the profile's
//! next key, aborting before its credential goes out otherwise.

use std::time::Duration;

use protocol_spec::credential::{self, CredentialVerifier};
use protocol_spec::handshake::{
    HandshakeError, Initiator, InitiatorStep, Responder, ResponderStep,
};
use protocol_spec::noise;

struct Keys {
    device: [u8; 32],
    token: String,
    verifier: CredentialVerifier,
}

fn keys() -> Keys {
    let (device, device_pub) = noise::generate_static_keypair().unwrap();
    let (sk, pk) = credential::generate_signing_key().unwrap();
    let token = credential::mint(&sk, "alice", &device_pub, Duration::from_secs(60)).unwrap();
    Keys {
        device,
        token,
        verifier: CredentialVerifier::new(&pk).unwrap(),
    }
}

/// What the client ended with, and how many frames it sent (an aborted
/// XX sends only its first).
struct Outcome {
    client: Result<Option<[u8; 32]>, HandshakeError>,
    client_frames: usize,
}

fn run(mut i: Initiator, mut r: Responder<'_>) -> Outcome {
    let body = |f: Vec<u8>| f[protocol_spec::framing::HEADER_LEN..].to_vec();
    let mut to_server = vec![body(i.start().unwrap())];
    let mut client_frames = 1;
    loop {
        let mut to_client = Vec::new();
        for f in to_server.drain(..) {
            match r.on_frame(&f) {
                Ok(ResponderStep::Send(x)) => to_client.push(body(x)),
                Ok(ResponderStep::Finished(xs, _)) => to_client.extend(xs.into_iter().map(body)),
                Err(e) => {
                    return Outcome {
                        client: Err(e),
                        client_frames,
                    }
                }
            }
        }
        for f in to_client {
            match i.on_frame(&f) {
                Ok(InitiatorStep::Send(x)) => {
                    client_frames += 1;
                    to_server.push(body(x));
                }
                Ok(InitiatorStep::Wait) => {}
                Ok(InitiatorStep::Done { gateway_key, .. }) => {
                    return Outcome {
                        client: Ok(gateway_key),
                        client_frames,
                    }
                }
                Err(e) => {
                    return Outcome {
                        client: Err(e),
                        client_frames,
                    }
                }
            }
        }
    }
}

#[test]
fn a_phone_pinned_to_the_previous_key_gets_in_during_the_overlap_and_learns_the_new_one() {
    let k = keys();
    let (old, old_pub) = noise::generate_static_keypair().unwrap();
    let (new, new_pub) = noise::generate_static_keypair().unwrap();
    let i = Initiator::new(k.device, Some(old_pub), false, [7; 32], &k.token, "t");
    let r = Responder::new(new, [7; 32], &k.verifier).with_previous_key(old, new_pub);
    assert_eq!(run(i, r).client.unwrap(), Some(new_pub));

    // A phone already on the new key is told nothing.
    let i = Initiator::new(k.device, Some(new_pub), false, [7; 32], &k.token, "t");
    let r = Responder::new(new, [7; 32], &k.verifier).with_previous_key(old, new_pub);
    assert_eq!(run(i, r).client.unwrap(), None);
}

#[test]
fn after_the_overlap_the_old_pin_is_unreadable_and_xx_refuses_the_unknown_key() {
    let k = keys();
    let (_, old_pub) = noise::generate_static_keypair().unwrap();
    let (new, _) = noise::generate_static_keypair().unwrap();
    // IK to the retired key: the gateway cannot read it (close code 7).
    let i = Initiator::new(k.device, Some(old_pub), false, [7; 32], &k.token, "t");
    let r = Responder::new(new, [7; 32], &k.verifier);
    let err = run(i, r).client.unwrap_err();
    assert!(err.is_unreadable(), "{err}");
    // The fallback XX sees a key that is neither pinned nor next: it stops
    // before message 3, so the credential never reaches that gateway.
    let i = Initiator::new(k.device, Some(old_pub), true, [7; 32], &k.token, "t");
    let r = Responder::new(new, [7; 32], &k.verifier);
    let out = run(i, r);
    assert!(
        matches!(out.client, Err(HandshakeError::GatewayKeyMismatch { .. })),
        "{:?}",
        out.client.err()
    );
    assert_eq!(out.client_frames, 1, "no credential sent");
}

#[test]
fn the_profiles_next_key_is_accepted_by_xx_and_pinned() {
    let k = keys();
    let (_, old_pub) = noise::generate_static_keypair().unwrap();
    let (new, new_pub) = noise::generate_static_keypair().unwrap();
    let i = Initiator::new(k.device, Some(old_pub), true, [7; 32], &k.token, "t")
        .with_next_key(Some(new_pub));
    let r = Responder::new(new, [7; 32], &k.verifier);
    assert_eq!(run(i, r).client.unwrap(), Some(new_pub));
}

#[test]
fn a_wrong_channel_binding_is_unreadable_with_either_key() {
    let k = keys();
    let (old, old_pub) = noise::generate_static_keypair().unwrap();
    let (new, new_pub) = noise::generate_static_keypair().unwrap();
    for pin in [old_pub, new_pub] {
        let i = Initiator::new(k.device, Some(pin), false, [8; 32], &k.token, "t");
        let r = Responder::new(new, [7; 32], &k.verifier).with_previous_key(old, new_pub);
        let err = run(i, r).client.unwrap_err();
        assert!(err.is_unreadable(), "{err}");
    }
}

#[test]
fn credentials_of_a_retiring_account_service_key_are_accepted_beside_the_new_one() {
    let (_, device_pub) = noise::generate_static_keypair().unwrap();
    let (old_sk, old_pk) = credential::generate_signing_key().unwrap();
    let (new_sk, new_pk) = credential::generate_signing_key().unwrap();
    let (other_sk, _) = credential::generate_signing_key().unwrap();
    let both = CredentialVerifier::with_keys(&[&new_pk, &old_pk]).unwrap();
    let only_new = CredentialVerifier::new(&new_pk).unwrap();
    let mint =
        |sk: &[u8]| credential::mint(sk, "alice", &device_pub, Duration::from_secs(60)).unwrap();
    assert!(both.verify(&mint(&old_sk), &device_pub).is_ok());
    assert!(both.verify(&mint(&new_sk), &device_pub).is_ok());
    assert!(both.verify(&mint(&other_sk), &device_pub).is_err());
    assert!(only_new.verify(&mint(&old_sk), &device_pub).is_err());
    assert!(CredentialVerifier::with_keys(&[]).is_err());
    let five: Vec<&[u8]> = vec![&new_pk; 5].into_iter().map(|k| k.as_slice()).collect();
    assert!(CredentialVerifier::with_keys(&five).is_err());
}

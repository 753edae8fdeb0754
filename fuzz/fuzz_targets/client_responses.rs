//! The phone's side of the vault protocol against a hostile gateway: a
//! real `VaultClient` runs a status, a recover (right or wrong password),
//! a registration or a change of password through the gateway under test
//! (`bkv_fuzz::Relay`), which passes each request to a real vault request
//! handler and then, as the fuzzer's script says, relays the answer, flips
//! bytes in it, replaces it with the fuzzer's bytes, or drops the
//! connection. That reaches the client's response decoding, its OPAQUE
//! finish, the fleet-key pin and the opening of the released key.
//!
//! Checked beyond "no panic": a recover yields the deposited key or an
//! error, never another key, and never succeeds with the wrong password;
//! no registration upload leaves the phone after an answer whose server
//! key is not the pinned fleet key.
#![no_main]
use bkv_fuzz::{deposit, phone, recorded_answers, runtime, vault, Relay, Tamper, PASSWORD};
use client::BackupKey;
use libfuzzer_sys::fuzz_target;
use opaque_ke::RegistrationResponse;
use protocol_spec::msg::{self, request::Kind as Req, response::Kind as Resp};
use protocol_spec::opaque_profile::Suite;

/// Reads the script: per request a control byte, then its operands.
fn script(mut data: &[u8]) -> Vec<Tamper> {
    let mut out = Vec::new();
    while let Some((&c, rest)) = data.split_first() {
        data = rest;
        out.push(match c % 4 {
            0 => Tamper::Honest,
            1 => {
                let n = data.first().map_or(0, |&n| usize::from(n) * 2);
                let body = data.get(1..(1 + n).min(data.len())).unwrap_or(&[]).to_vec();
                data = &data[(1 + n).min(data.len())..];
                Tamper::Replace(body)
            }
            2 => {
                let n = usize::from(c >> 2) % 8 + 1;
                let mut flips = Vec::new();
                for pair in data.chunks(2).take(n) {
                    if let [at, x] = pair {
                        flips.push((usize::from(*at), *x | 1));
                    }
                }
                data = &data[(2 * n).min(data.len())..];
                Tamper::Flip(flips)
            }
            _ => Tamper::Lose,
        });
    }
    out
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for op in 0u8..5 {
        out.push(vec![op]);
        out.push(vec![op, 2, 3, 0x80]);
        out.push(vec![op, 0, 3]);
    }
    // The honest answers, each as a replacement (`1, n/2, body`).
    for a in recorded_answers() {
        if a.len() <= 510 {
            let mut s = vec![1u8, 1, (a.len() / 2) as u8];
            s.extend_from_slice(&a[..a.len() / 2 * 2]);
            out.push(s);
        }
    }
    out
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("client_responses", seeds);
        let _ = deposit();
    },
    |data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    let d = deposit();
    let v = vault(d);
    let relay = Relay::scripted(&v, script(rest));
    let recovered = runtime().block_on(async {
        let c = phone(&relay, &d.profile);
        match op % 5 {
            0 => {
                let _ = c.status().await;
                None
            }
            1 => Some((true, c.recover(PASSWORD).await)),
            2 => Some((false, c.recover(b"not the password").await)),
            3 => {
                let _ = c.register(b"pw", &BackupKey::from_bytes([3; 32]), true).await;
                None
            }
            _ => {
                let _ = c.change_password(PASSWORD, b"new").await;
                None
            }
        }
    });
    if let Some((right, Ok(key))) = recovered {
        assert!(right, "a wrong password recovered a key");
        assert!(key.as_bytes() == &d.key, "the phone accepted a key that is not the deposit");
    }
    // The pin: every upload follows a registration answer from the fleet.
    let log = relay.log.lock().map(|l| l.clone()).unwrap_or_default();
    let pinned = d.secrets.public_key();
    let mut last_answer: Option<Vec<u8>> = None;
    for (req, answer) in log {
        match req.kind {
            Some(Req::RegisterStart(_)) => last_answer = answer,
            Some(Req::RegisterFinish(_)) => {
                let body = last_answer.take().expect("an upload after a registration answer");
                let resp: msg::Response = protocol_spec::framing::decode(&body).expect("it decoded");
                let Some(Resp::RegisterStart(rs)) = resp.kind else {
                    panic!("an upload after an answer that was no registration response");
                };
                // The client parsed it, or it would not have uploaded; the
                // suite's response is the evaluated element, then the
                // server's public key.
                assert!(RegistrationResponse::<Suite>::deserialize(&rs.registration_response).is_ok());
                let server_key = &rs.registration_response[rs.registration_response.len() - 32..];
                assert!(server_key == pinned.as_slice(), "an upload after an answer with another server key");
            }
            _ => {}
        }
    }
});

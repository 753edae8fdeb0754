//! The vault's request handler end to end, as a replica runs it on what a
//! gateway (perhaps a compromised one) sends: the fuzzer's bytes are a
//! stream of frames with the wire's own length prefixes, each body a
//! `VaultRequest`, answered by `server::answer_request` (the boundary
//! check, OPAQUE deserialization, the account rules, the pending logins)
//! over the in-memory ledger, starting from one deposit registered with
//! real OPAQUE.
//!
//! Checked beyond "no panic": a request refused as malformed changes no
//! row; no deposit hands out more OPRF evaluations than the guess limit
//! (nobody here knows its password, so nothing may forgive a guess); no
//! login finish or registration upload succeeds (neither can be forged
//! without the password or a ticket the fuzzer never sees).
#![no_main]
use std::collections::BTreeMap;

use bkv_fuzz::{answer_frame, deposit, frames, recorded_requests, runtime, vault, vault_request};
use libfuzzer_sys::fuzz_target;
use protocol_spec::framing::FrameDecoder;
use protocol_spec::internal::{vault_response, VaultRequest};
use protocol_spec::msg::{self, response::Kind as Resp, ErrorCode};

fn seeds() -> Vec<Vec<u8>> {
    let reqs: Vec<VaultRequest> = recorded_requests()
        .into_iter()
        .map(|r| VaultRequest {
            request: Some(r),
            ..vault_request(msg::request::Kind::Status(msg::StatusRequest {}))
        })
        .collect();
    let mut out: Vec<Vec<u8>> = reqs
        .iter()
        .map(|r| frames(std::slice::from_ref(r)))
        .collect();
    out.push(frames(&reqs));
    // Guesses past the limit: every login start of the recorded sessions, twice.
    let starts: Vec<VaultRequest> = reqs
        .iter()
        .filter(|r| r.request.as_ref().map(|q| q.kind_label()) == Some("login_start"))
        .cloned()
        .collect();
    out.push(frames(&[starts.clone(), starts].concat()));
    out
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("vault_handler", seeds);
        let _ = deposit();
    },
    |data: &[u8]| {
    let d = deposit();
    let v = vault(d);
    let mut frames = FrameDecoder::new();
    if frames.push(data).is_err() {
        return;
    }
    let mut evaluations: BTreeMap<String, u32> = BTreeMap::new();
    runtime().block_on(async {
        while let Ok(Some(body)) = frames.next_frame() {
            let before = v.ledger().snapshot();
            let account = protocol_spec::framing::decode::<VaultRequest>(&body)
                .map(|r| r.account_id)
                .unwrap_or_default();
            let Some(answer) = answer_frame(&v, &body).await else {
                continue;
            };
            let Some(vault_response::Kind::Response(r)) = answer.kind else {
                continue;
            };
            match r.kind {
                Some(Resp::Error(e)) if e.code() == ErrorCode::ProtocolError => {
                    assert!(v.ledger().snapshot() == before, "a refused request changed a row");
                }
                Some(Resp::LoginStart(_)) => {
                    let n = evaluations.entry(account).or_default();
                    *n += 1;
                    assert!(*n <= bkv_fuzz::LIMIT, "more OPRF evaluations than the limit");
                }
                Some(Resp::LoginFinish(_)) => panic!("a login finished without the password"),
                Some(Resp::RegisterFinish(_)) => panic!("a registration upload without a ticket"),
                _ => {}
            }
            // The resets and erasures spawned off the reply path.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
    });
});

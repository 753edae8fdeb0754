//! Arbitrary bytes through the frame decoder and request validation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::{framing, internal, msg};

/// SPEC.md's frame vectors, and the frames of a real phone's sessions.
fn seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = ["frame-status", "frame-wrong-password"]
        .iter()
        .filter_map(|v| bkv_fuzz::spec_vector(v))
        .collect();
    let reqs = bkv_fuzz::recorded_requests();
    out.extend(
        reqs.iter()
            .map(|r| bkv_fuzz::frames(std::slice::from_ref(r))),
    );
    out.extend(
        bkv_fuzz::recorded_answers()
            .iter()
            .filter_map(|a| framing::encode(&framing::decode::<msg::Response>(a).ok()?).ok()),
    );
    out
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("frame_decoder", seeds);
    },
    |data: &[u8]| {
    let mut d = framing::FrameDecoder::new();
    for chunk in data.chunks(7) {
        if d.push(chunk).is_err() {
            return;
        }
        while let Ok(Some(body)) = d.next_frame() {
            if let Ok(req) = framing::decode::<msg::Request>(&body) {
                let _ = framing::validate_request(&req);
            }
            let _ = framing::decode::<msg::HandshakeMessage>(&body);
            let _ = framing::decode::<msg::Response>(&body);
            let _ = framing::decode::<internal::VaultRequest>(&body);
            let _ = framing::decode::<internal::VaultResponse>(&body);
        }
    }
    let _ = d.finish();
});

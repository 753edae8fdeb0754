//! Arbitrary bytes through the frame decoder and request validation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol_spec::{framing, internal, msg};

fuzz_target!(|data: &[u8]| {
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

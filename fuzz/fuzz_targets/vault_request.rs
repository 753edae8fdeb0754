//! A gateway's request as a replica receives it: decode, then the boundary
//! check (`vault_backend::request::validate`). Must never panic or allocate
//! beyond the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The bodies of a real phone's requests as a gateway forwards them.
fn seeds() -> Vec<Vec<u8>> {
    use prost::Message;
    bkv_fuzz::recorded_requests()
        .into_iter()
        .map(|r| {
            protocol_spec::internal::VaultRequest {
                request: Some(r),
                ..bkv_fuzz::vault_request(protocol_spec::msg::request::Kind::Status(
                    protocol_spec::msg::StatusRequest {},
                ))
            }
            .encode_to_vec()
        })
        .collect()
}

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("vault_request", seeds);
    },
    |data: &[u8]| {
    let _ = vault_backend::request::fuzz_validate(data);
});

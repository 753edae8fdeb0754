//! A gateway's request as a replica receives it: decode, then the boundary
//! check (`vault_backend::request::validate`). Must never panic or allocate
//! beyond the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vault_backend::request::fuzz_validate(data);
});

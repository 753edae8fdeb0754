//! Arbitrary bytes through the replica-to-replica decoders (request and
//! reply bodies of the Raft peer protocol).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vault_backend::raft::network::fuzz_decode(data);
});

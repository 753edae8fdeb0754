//! Arbitrary bytes through the replica-to-replica decoders (request and
//! reply bodies of the Raft peer protocol), from well-formed requests.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        bkv_fuzz::write_seeds("raft_rpc", vault_backend::raft::network::fuzz_seeds);
    },
    |data: &[u8]| {
    let _ = vault_backend::raft::network::fuzz_decode(data);
});

#![allow(clippy::unwrap_used)]
//! The crypto floor measures every operation on both sides (values are not
//! checked against thresholds: timing belongs in BENCHMARKS.md, not tests).

#[test]
fn floor_measures_every_operation_on_both_sides() {
    let f = loadtest::floor::measure_floor().unwrap();
    for op in [
        "tls13_handshake",
        "tls13_handshake_x25519_only",
        "noise_ik",
        "noise_xx",
        "opaque_register",
        "opaque_login",
    ] {
        let c = &f.operations[op];
        assert!(c.server_us > 0.0 && c.client_us > 0.0, "{op}: {c:?}");
    }
    let sum = f.operations["tls13_handshake"].server_us
        + f.operations["noise_ik"].server_us
        + f.operations["opaque_login"].server_us;
    assert!((f.server_us_per_session - sum).abs() < 1e-6);
    let json = serde_json::to_value(&f).unwrap();
    assert!(json.get("server_us_per_session").is_some());
    assert!(json.get("client_us_per_session").is_some());
}

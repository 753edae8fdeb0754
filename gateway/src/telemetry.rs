//! The HELP text and unit of every metric the gateway emits, registered
//! once by the binary after it installs its exporter. Owns the
//! descriptions only. Labels stay low-cardinality (pattern, close reason,
//! give-up reason): never an account or device id.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Registers the descriptions with the installed recorder (a no-op without
/// one), and makes the unlabelled series exist at zero, so that dashboards
/// and alert rules see them before the first event (a rate over a series
/// that does not exist yet is no data, not zero).
pub fn describe() {
    metrics::gauge!("gateway_connections").set(0.0);
    for name in [
        "gateway_protocol_errors_total",
        "gateway_handshakes_retried_total",
        "gateway_handshakes_evicted_total",
        "gateway_vault_retries_total",
        "gateway_vault_leader_changes_total",
        "gateway_vault_membership_changes_total",
        "gateway_vault_redirects_ignored_total",
        "gateway_vault_probes_total",
        "gateway_connection_migrations_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    describe_gauge!("gateway_connections", "Phone connections open now.");
    describe_counter!(
        "gateway_authenticated_total",
        "Devices authenticated, by Noise pattern (ik: vault key pinned, xx: first contact)."
    );
    metrics::gauge!("gateway_reload_failed").set(0.0);
    describe_gauge!(
        "gateway_reload_failed",
        "1 while the last key reload (SIGHUP) failed and the gateway serves with the keys it had before; 0 otherwise."
    );
    describe_counter!(
        "gateway_reloads_total",
        "Key reloads on SIGHUP, by result (ok, failed: the previous keys stay in use)."
    );
    describe_counter!(
        "gateway_connection_migrations_total",
        "Authenticated connections whose phone moved to a new address (QUIC migration, e.g. Wi-Fi to cellular), counted at the first request from the new address."
    );
    describe_counter!(
        "gateway_connections_replaced_total",
        "Authenticated connections closed because a newer one of the same device or account went past its cap, by scope."
    );
    describe_counter!(
        "gateway_connections_closed_total",
        "Phone connections closed, by reason."
    );
    describe_counter!(
        "gateway_protocol_errors_total",
        "Phone messages refused as malformed or oversized."
    );
    describe_histogram!(
        "gateway_vault_request_seconds",
        Unit::Seconds,
        "Time of one relayed vault request, retries included."
    );
    describe_counter!(
        "gateway_handshakes_refused_total",
        "Connection attempts refused before any state was kept, by reason (handshakes_full, per_source)."
    );
    describe_counter!(
        "gateway_handshakes_evicted_total",
        "Handshakes closed because they had stalled while every place was taken, their place given to a new attempt."
    );
    describe_counter!(
        "gateway_handshakes_retried_total",
        "Connection attempts asked to validate their address first (QUIC Retry)."
    );
    describe_counter!(
        "gateway_requests_shed_total",
        "Requests answered BUSY because a device's or account's budget was used up, by request kind and scope."
    );
    describe_counter!(
        "gateway_requests_total",
        "Phone requests answered, by request kind and outcome (ok, the vault's error code, \
         or the gateway's own: over_budget, draining, protocol_error, shed, timed_out, \
         and the give-up reasons of gateway_vault_gave_up_total)."
    );
    describe_counter!(
        "gateway_vault_replicas_marked_down_total",
        "Vault replicas marked down (routed around until a probe finds them healthy), by reason \
         (stopped, no_leader, unreachable)."
    );
    describe_counter!(
        "gateway_vault_probes_total",
        "Probes of vault replicas marked down."
    );
    describe_counter!(
        "gateway_vault_retries_total",
        "Vault calls tried again on another replica or after a wait."
    );
    describe_counter!(
        "gateway_vault_gave_up_total",
        "Vault requests answered with an error after the retry budget, by reason."
    );
    describe_counter!(
        "gateway_vault_leader_changes_total",
        "Times the gateway learned a new vault leader."
    );
    describe_counter!(
        "gateway_vault_membership_changes_total",
        "Times the gateway learned a newer vault membership."
    );
    describe_counter!(
        "gateway_vault_redirects_ignored_total",
        "Not-leader redirects ignored (to an address outside the membership)."
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_series_has_help_and_the_unlabelled_ones_exist_at_zero() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, super::describe);
        let text = handle.render();
        for name in [
            "gateway_protocol_errors_total",
            "gateway_vault_retries_total",
        ] {
            assert!(
                text.contains(&format!("{name} 0")),
                "{name} missing:\n{text}"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        assert!(text.contains("gateway_connections 0"), "{text}");
    }
}

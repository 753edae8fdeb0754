//! The HELP text and unit of every metric the gateway emits, registered
//! once by the binary after it installs its exporter. Owns the
//! descriptions only. Labels stay low-cardinality (pattern, close reason,
//! give-up reason): never an account or device id.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Registers the descriptions with the installed recorder (a no-op without one).
pub fn describe() {
    describe_gauge!("gateway_connections", "Phone connections open now.");
    describe_counter!(
        "gateway_authenticated_total",
        "Devices authenticated, by Noise pattern (ik: vault key pinned, xx: first contact)."
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
        "gateway_handshakes_retried_total",
        "Connection attempts asked to validate their address first (QUIC Retry)."
    );
    describe_counter!(
        "gateway_requests_shed_total",
        "Requests answered BUSY because a device's or account's budget was used up, by request kind and scope."
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

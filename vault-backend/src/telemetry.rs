//! The HELP text and unit of every metric a replica emits, registered once
//! by the binary after it installs its recorder. Owns the descriptions
//! only; the emitting code names the metric where it counts. Labels stay
//! low-cardinality (request kind, outcome): never an account id.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Registers the descriptions with the installed recorder (a no-op without one).
pub fn describe() {
    describe_counter!(
        "vault_requests_total",
        "Vault requests answered, by request kind and outcome (ok or the error class)."
    );
    describe_counter!(
        "vault_request_timeouts_total",
        "Requests answered UNAVAILABLE because the per-request budget ran out."
    );
    describe_counter!(
        "vault_commit_timeouts_total",
        "Raft writes that did not commit within the commit timeout."
    );
    describe_counter!(
        "vault_rejected_connections_total",
        "Gateway connections refused (bad client certificate, over the connection limit)."
    );
    describe_counter!("vault_registrations_total", "Deposits created or replaced.");
    describe_counter!(
        "vault_oprf_evaluations_total",
        "OPRF evaluations done (registration starts and counted login starts)."
    );
    describe_counter!(
        "vault_guesses_counted_total",
        "Password guesses counted durably against a deposit's limit."
    );
    describe_counter!(
        "vault_guesses_paced_total",
        "Login starts refused by pacing (too soon after the previous guess); nothing counted."
    );
    describe_counter!(
        "vault_replacements_pending_total",
        "Replacements without proof that started a waiting period."
    );
    describe_counter!(
        "vault_login_sessions_evicted_total",
        "Open login sessions dropped because their account had its whole budget open."
    );
    describe_counter!(
        "vault_resets_lost_total",
        "Resets after a verified login that did not commit (the count stays one higher)."
    );
    describe_counter!(
        "vault_last_guess_erasures_total",
        "Guesses that used up a deposit's limit (the record is held until that login verifies or expires)."
    );
    describe_counter!(
        "vault_lockouts_total",
        "Deposits erased for good after the guess limit was reached."
    );
    describe_counter!(
        "vault_keys_released_total",
        "Backup keys released after a verified login."
    );
    describe_counter!("vault_disables_total", "Deposits deleted by their owner.");
    describe_counter!(
        "vault_erasure_scrubs_total",
        "Scrubs that compacted erased rows out of the database and log."
    );
    describe_counter!(
        "vault_erasure_scrubs_partial_total",
        "Scrub passes that stopped before every free page was overwritten (a reader pinned some, or the file was mostly such space): erased records may stay in those pages until a later pass."
    );
    describe_counter!(
        "vault_reads_coalesced_total",
        "Linearizable reads that shared another read's leadership check."
    );
    describe_counter!(
        "vault_read_retries_total",
        "Linearizable reads retried after a leadership check failed."
    );
    describe_counter!(
        "vault_raft_leader_changes_total",
        "Leader changes this replica observed."
    );
    describe_counter!(
        "vault_raft_rejected_peers_total",
        "Peer connections refused (certificate not of this cluster)."
    );
    describe_gauge!("vault_raft_term", "Current Raft term.");
    describe_gauge!(
        "vault_raft_is_leader",
        "1 while this replica leads its cluster, else 0."
    );
    describe_gauge!(
        "vault_raft_last_log_index",
        "Index of the last entry in this replica's log."
    );
    describe_gauge!(
        "vault_raft_applied_index",
        "Index of the last entry applied to the state machine."
    );
    describe_gauge!(
        "vault_raft_log_entries",
        "Entries kept in the log (between the last purge and the last entry)."
    );
    describe_gauge!("vault_records", "Deposits stored on this replica.");
    describe_counter!(
        "vault_raft_snapshots_total",
        "Snapshots of the whole state built (step=build) or received from the leader and installed (step=install)."
    );
    describe_gauge!(
        "vault_raft_snapshot_bytes",
        Unit::Bytes,
        "Size of the last snapshot this replica built or installed."
    );
    describe_histogram!(
        "vault_raft_snapshot_seconds",
        Unit::Seconds,
        "Time to build (step=build) or install (step=install) one snapshot."
    );
    describe_histogram!(
        "vault_commit_seconds",
        Unit::Seconds,
        "Time from proposing a Raft write to its commit."
    );
    describe_histogram!(
        "vault_read_seconds",
        Unit::Seconds,
        "Time of a linearizable read, leadership check included."
    );
    describe_histogram!(
        "vault_raft_log_fsync_seconds",
        Unit::Seconds,
        "Time of one durable log append (write and fsync of a batch)."
    );
    describe_histogram!(
        "vault_raft_log_fsync_batch_size",
        Unit::Count,
        "Entries made durable by one fsync."
    );
    describe_histogram!(
        "vault_raft_anchor_write_seconds",
        Unit::Seconds,
        "Time to raise the freshness anchor after a durable vote or append."
    );
    describe_histogram!(
        "vault_erasure_scrub_seconds",
        Unit::Seconds,
        "Time of one erasure scrub (snapshot and purge)."
    );
}

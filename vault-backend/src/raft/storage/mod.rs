//! The Raft log, vote and state machine of one replica, in one redb file:
//! `db` (tables, typed slots, transaction helpers), `log_store` (log and
//! vote), `state_machine` (rows, snapshots, the active command version);
//! what a committed command does to a row is [`crate::raft::apply`].
//!
//! Durability and group commit: while one append is being fsync'd, openraft
//! queues the client writes that arrive and hands them to the next `append`
//! as one batch, which is written in one transaction with one fsync — so
//! throughput is not bounded by one fsync per login (BENCHMARKS.md: ~360/s
//! with one write in flight, ~2,500/s with 64). An optional flusher thread
//! (`async_flush`) acknowledges appends from a separate fsync instead; it
//! measured slower here, and no faster for latency at half load, so it is
//! off by default. The vote is fsync'd before
//! `save_vote` returns. The state machine is applied in the same
//! database with the applied log id in the same transaction, so after a crash
//! it is consistent with some applied prefix and openraft re-applies the rest
//! from the durable log.
//!
//! Must never: report entries persisted before their fsync, or leave a hole
//! in the log.

// openraft's trait signatures fix the (large) error types.
#![allow(clippy::result_large_err)]

mod db;
mod gated;
mod log_store;
mod state_machine;
#[cfg(test)]
mod tests;

pub use db::{open_database, open_database_with_cache, DEFAULT_CACHE_BYTES};
pub use gated::{Db, Scrubbing, Write};
pub use log_store::LogStore;
pub use state_machine::{ActiveVersion, StateMachine};

//! The servers' allocator, counted: mimalloc (measured faster than glibc
//! malloc under load, BENCHMARKS.md "Allocator") inside `cap::Cap`, which
//! keeps a count of the bytes handed out and not yet returned. Exported as
//! `process_heap_allocated_bytes`, beside the RSS it tells an operator
//! (and the soak) memory the program holds from memory the allocator keeps:
//! a heap that climbs is a leak; RSS that climbs over a flat heap is the
//! allocator's retention, or memory outside Rust's allocator (aws-lc's
//! `malloc`, thread stacks).
//!
//! Must never: limit allocations (the limit is `usize::MAX`; a service that
//! runs out of memory is the operating system's to stop), or be used by a
//! library: only a binary's `#[global_allocator]` names it.
//!
//! Cost: one atomic add per allocation and one per free, next to
//! mimalloc's own work (BENCHMARKS.md, "Counted allocator").

/// The allocator a server binary installs:
/// `#[global_allocator] static ALLOCATOR: Allocator = service_kit::heap::allocator();`
pub type Allocator = cap::Cap<mimalloc::MiMalloc>;

/// mimalloc, counted, with no limit.
#[must_use]
pub const fn allocator() -> Allocator {
    cap::Cap::new(mimalloc::MiMalloc, usize::MAX)
}

/// Makes the process's RSS follow its heap: transparent huge pages off
/// ([`no_huge_pages`]) and freed pages given back to the operating system
/// when they are freed (`mimalloc_options::purge_at_once`). Without the
/// second, the soak's Raft leader held 56 MiB of freed snapshot buffers in
/// mimalloc's arena over a 16 MiB heap (RELIABILITY.md, run 13); with it,
/// at 0.97x recover sessions/s, within noise (BENCHMARKS.md), the leader
/// grew +9.7 MiB in 30 minutes instead of +13 (run 15), and with a replica's
/// blocking pool bounded too, +3.1 MiB (run 20). Call first thing in a
/// binary's `main`, after logging is set up.
pub fn follow_the_heap() {
    no_huge_pages();
    mimalloc_options::purge_at_once();
}

/// mimalloc's purge delay now, in milliseconds (0 after
/// [`follow_the_heap`]), for tests.
pub fn purge_delay_ms() -> i64 {
    mimalloc_options::purge_delay_ms()
}

/// Turns transparent huge pages off for this process (Linux; a no-op
/// elsewhere). mimalloc asked for them on its arenas (`MADV_HUGEPAGE`; it
/// no longer does, built with its `no_thp` feature, from its first
/// allocation on), and a 2 MiB page stays resident while any block in it
/// lives, so RSS grew in steps that never came back while the heap stayed
/// flat (the soak, RELIABILITY.md). This covers the rest: a system whose
/// huge pages are on for every mapping (`always`), and memory that is not
/// mimalloc's (thread stacks, aws-lc's `malloc`). A server's working set
/// is small; its memory should follow what it holds. A kernel that refuses
/// is logged as a warning, and the process goes on with huge pages.
pub fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::warn!(
            error = %e,
            "cannot turn transparent huge pages off: memory may grow in 2 MiB steps that stay"
        );
    }
}

/// Whether transparent huge pages are off for this process (`None` where
/// the question has no answer: not Linux).
pub fn huge_pages_off() -> Option<bool> {
    #[cfg(target_os = "linux")]
    return nix::sys::prctl::get_thp_disable().ok();
    #[cfg(not(target_os = "linux"))]
    None
}

/// The gauge's name.
pub const GAUGE: &str = "process_heap_allocated_bytes";

static EXPORTED: std::sync::OnceLock<&'static Allocator> = std::sync::OnceLock::new();

/// Exports `allocator`'s count as `process_heap_allocated_bytes`, set by
/// [`refresh`] each time `/metrics` is rendered (so a scrape reads the
/// count of that moment). Call once, after the metrics recorder is
/// installed.
pub fn export(allocator: &'static Allocator) {
    metrics::describe_gauge!(
        GAUGE,
        metrics::Unit::Bytes,
        "Bytes the process's allocator has handed out and not had back. RSS well above it is \
         memory the allocator keeps for reuse, or memory outside Rust's allocator."
    );
    let _ = EXPORTED.set(allocator);
    refresh();
}

/// Sets `process_heap_allocated_bytes` to the exported allocator's count
/// now (nothing if none was exported). The admin ports call it before
/// rendering `/metrics`.
pub fn refresh() {
    if let Some(a) = EXPORTED.get() {
        // As f64: exact below 2^53 bytes.
        metrics::gauge!(GAUGE).set(a.allocated() as f64);
    }
}

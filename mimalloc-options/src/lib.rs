//! Sets mimalloc's purge delay, the one allocator option the servers
//! change. The FFI call is `unsafe` by signature only: it stores an integer
//! in mimalloc's option table, takes no pointer, and mimalloc allows it at
//! any time from any thread.
//!
//! Why the servers set it (RELIABILITY.md, the soak's thirteenth and
//! fourteenth runs): mimalloc v3 keeps a freed page committed for the
//! purge delay (1 s by default, `src/options.c`) and gives it back only
//! when a later allocation or free runs its deferred work. A thread
//! that frees a large buffer and then goes idle (Tokio's blocking threads,
//! after a Raft snapshot is built or installed) never runs it, so the
//! leader's RSS climbed 72 -> 85 MiB over a flat 16 MiB heap in 30
//! minutes. With a delay of 0 a page is returned when it is freed: +9.7 MiB
//! in 30 minutes (run 15; +3.1 with a replica's blocking pool bounded too,
//! run 20), at 0.97x recover sessions/s (BENCHMARKS.md, within noise).
//!
//! Must never: set any other option, or be called by a library (the
//! allocator is the binary's choice).

/// mimalloc's `mi_option_purge_delay`: its position in `mi_option_t` of
/// the mimalloc the sys crate builds (v3, `include/mimalloc.h`: show_errors
/// is 0, purge_delay follows the deprecated eager_commit_delay at 14). The
/// sys crate names it `reset_delay`, after its v1 name; the test below
/// checks the number against what mimalloc reports back.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc return freed pages to the operating system at once
/// instead of after its purge delay.
pub fn purge_at_once() {
    set_purge_delay_ms(0);
}

/// mimalloc's purge delay now, in milliseconds (-1: never purges).
// `c_long` is i64 here and i32 on Windows.
#[allow(clippy::useless_conversion)]
pub fn purge_delay_ms() -> i64 {
    // SAFETY: reads an integer from mimalloc's option table; no pointers,
    // valid from any thread at any time (mimalloc's documentation).
    i64::from(unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) })
}

fn set_purge_delay_ms(ms: i32) {
    // SAFETY: as above, a write of an integer to the option table.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms.into()) }
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

    #[test]
    fn the_option_is_mimallocs_purge_delay() {
        // mimalloc v3's default purge delay, 1000 ms (`src/options.c`), a
        // value no option near position 15 has (the environment can change
        // it: MIMALLOC_PURGE_DELAY).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(super::purge_delay_ms(), 1000);
        }
        super::purge_at_once();
        assert_eq!(super::purge_delay_ms(), 0);
    }
}

#![allow(clippy::unwrap_used)]
//! With the servers' allocator settings (`service_kit::heap::follow_the_heap`)
//! memory a thread frees leaves the process's RSS when it is freed, with no
//! later allocation needed: the soak's leader freed snapshot buffers on
//! threads that then went idle, and their pages stayed (RELIABILITY.md).
//! Alone in its binary: another test allocating meanwhile would blur RSS.

#[global_allocator]
static ALLOCATOR: service_kit::heap::Allocator = service_kit::heap::allocator();

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[cfg(target_os = "linux")]
fn freed_memory_leaves_rss_when_freed() {
    service_kit::heap::follow_the_heap();
    assert_eq!(service_kit::heap::purge_delay_ms(), 0);
    // A snapshot-sized buffer's worth of blocks small enough to live in
    // mimalloc's arenas (a single huge block would be mapped and unmapped
    // by itself, with or without the setting), freed on a thread that then
    // ends: as a blocking-pool thread that built a snapshot goes idle.
    let base = rss_kib();
    let held = std::thread::spawn(|| {
        let blocks: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 64 * 1024]).collect();
        let held = rss_kib();
        drop(blocks);
        held
    })
    .join()
    .unwrap();
    let after = rss_kib();
    eprintln!("RSS: {base} KiB, holding 64 MiB {held} KiB, after the free {after} KiB");
    assert!(held >= base + 60 * 1024, "{base} -> {held}");
    assert!(
        after < base + 16 * 1024,
        "freed pages stayed: {base} -> {held} -> {after} KiB"
    );
}

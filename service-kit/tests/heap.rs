#![allow(clippy::unwrap_used)]
//! The counted allocator, installed as this test binary's global allocator
//! as a server installs it: the count follows what is allocated and freed.

#[global_allocator]
static ALLOCATOR: service_kit::heap::Allocator = service_kit::heap::allocator();

#[test]
fn the_count_follows_what_is_allocated_and_freed() {
    const MIB: usize = 1 << 20;
    let before = ALLOCATOR.allocated();
    let big = vec![1u8; 8 * MIB];
    let held = ALLOCATOR.allocated();
    // Other threads of the harness may allocate meanwhile, a little.
    assert!(held >= before + 8 * MIB, "{before} -> {held}");
    assert!(held < before + 9 * MIB, "{before} -> {held}");
    drop(big);
    let after = ALLOCATOR.allocated();
    assert!(after < before + MIB, "{before} -> {after}");
    assert_eq!(ALLOCATOR.limit(), usize::MAX);
}

#[test]
fn huge_pages_can_be_turned_off() {
    service_kit::heap::no_huge_pages();
    if cfg!(target_os = "linux") {
        assert_eq!(service_kit::heap::huge_pages_off(), Some(true));
    }
}

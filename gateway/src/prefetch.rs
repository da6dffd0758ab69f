//! Asks the CPU to start loading memory that the next steps will read. The fan-out walk writes
//! to one socket per candidate, and the kernel's work for that write evicts the cache lines of
//! the next candidates' records: their first reads were most of the walk's cost (`perf
//! annotate`). A prefetch is only a hint: it reads nothing into the program and never faults,
//! whatever the address.

/// Starts loading the `len` bytes at `address`, which may be stale: nothing is read from it.
#[inline(always)]
pub fn address(address: usize, len: usize) {
    lines(std::ptr::without_provenance(address), len);
}

#[inline(always)]
fn lines(start: *const i8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len).step_by(64) {
        // SAFETY: `_mm_prefetch` needs SSE, which is in every x86_64 CPU's baseline, and it
        // neither reads nor faults: any address is sound.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.wrapping_add(offset));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

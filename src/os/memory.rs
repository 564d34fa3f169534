//! Returning freed heap memory to the operating system.
//!
//! glibc keeps freed memory in its arenas for reuse, so a long-lived worker's
//! RSS ratchets up after one large task. `malloc_trim(0)` hands the free pages
//! back. Other C libraries (musl) have no such call; there it does nothing.

/// Asks the allocator to release free memory; true if it released any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// glibc serves large blocks with a fresh `mmap` each time and raises its
/// threshold only to the size of the last block freed, so a worker that
/// receives and returns same-sized 1 MiB payloads page-faults every byte of
/// every copy, which costs more than the copying itself. Serving blocks up to
/// 32 MiB from the heap, and keeping up to 64 MiB of free heap before giving it
/// back, lets those buffers be reused. This is the state glibc's own dynamic
/// tuning reaches after one large free; `malloc_trim_rss_memory_threshold_bytes`
/// (and `max_worker_memory_bytes`) still bound what a worker keeps. Only ever
/// called in worker processes, never in the user's own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune_for_worker() {
    // SAFETY: mallopt only adjusts allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune_for_worker() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trim_releases_memory_freed_from_the_heap() {
        // Blocks below glibc's mmap threshold come from the heap, so freeing
        // them leaves free pages that only malloc_trim gives back.
        let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 32 * 1024]).collect();
        drop(blocks);
        assert!(trim());
    }
}

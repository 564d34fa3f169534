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

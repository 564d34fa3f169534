//! Recycled buffers for large frames.
//!
//! A fresh multi-MiB allocation is served by `mmap`, and writing it costs a
//! page fault per 4 KiB — far more than copying the bytes, and much more again
//! inside a virtual machine. Task payloads and result frames therefore go
//! through a small pool of buffers that keep their pages, so a steady stream
//! of large payloads touches warm memory. Small frames bypass the pool: the
//! allocator serves them from warm heap memory anyway.

use crate::os::sync::lock;
use std::sync::Mutex;

/// Below this, allocation is cheap and recycling is not worth a lock.
const MIN_POOLED: usize = 64 << 10;
/// Above this, keeping a spare buffer would hold too much idle memory.
const MAX_POOLED: usize = 64 << 20;
/// Spare buffers kept at most.
const KEEP: usize = 8;

#[derive(Default)]
pub struct BufferPool {
    spares: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A buffer holding a copy of `bytes`.
    pub fn copy_of(&self, bytes: &[u8]) -> Vec<u8> {
        let mut buffer = self.spare(bytes.len()).unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(bytes);
        buffer
    }

    /// A zero-filled buffer of `len` bytes, or `None` if memory is refused.
    pub fn zeroed(&self, len: usize) -> Option<Vec<u8>> {
        if let Some(mut buffer) = self.spare(len) {
            buffer.clear();
            buffer.resize(len, 0);
            return Some(buffer);
        }
        zeroed_buffer(len)
    }

    /// Takes back a buffer that is no longer needed.
    pub fn give(&self, buffer: Vec<u8>) {
        if !(MIN_POOLED..=MAX_POOLED).contains(&buffer.capacity()) {
            return;
        }
        let mut spares = lock(&self.spares);
        if spares.len() < KEEP {
            spares.push(buffer);
        }
    }

    /// The smallest spare that fits `len`, if `len` is worth pooling.
    fn spare(&self, len: usize) -> Option<Vec<u8>> {
        if !(MIN_POOLED..=MAX_POOLED).contains(&len) {
            return None;
        }
        let mut spares = lock(&self.spares);
        let best = spares
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        Some(spares.swap_remove(best))
    }
}

/// A zeroed buffer of `len` bytes, or `None` if the allocator refuses. Zeroed
/// allocation maps fresh pages lazily, so a 2 GiB body costs no memset, and a
/// refused allocation (a lying header) fails one frame instead of aborting the
/// whole process as `vec!` would.
pub fn zeroed_buffer(len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: `layout` has a non-zero size. The pointer, if not null, comes from
    // the global allocator with exactly the layout `Vec<u8>` uses for this
    // capacity, and all `len` bytes are initialised (zeroed).
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout);
        if ptr.is_null() {
            return None;
        }
        Some(Vec::from_raw_parts(ptr, len, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_reused_for_a_fitting_request() {
        let pool = BufferPool::new();
        let first = pool.copy_of(&vec![7u8; 1 << 20]);
        let address = first.as_ptr();
        pool.give(first);
        let second = pool.zeroed(1 << 19).expect("memory");
        assert_eq!(second.as_ptr(), address, "the spare was reused");
        assert_eq!(second.len(), 1 << 19);
        assert!(
            second.iter().all(|&b| b == 0),
            "reused memory is zeroed again"
        );
    }

    #[test]
    fn small_and_huge_buffers_are_not_kept() {
        let pool = BufferPool::new();
        pool.give(vec![0u8; 100]);
        assert!(pool.spare(100).is_none());
        assert!(lock(&pool.spares).is_empty());
    }

    #[test]
    fn copy_of_copies_exactly() {
        let pool = BufferPool::new();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(pool.copy_of(&data), data);
        pool.give(pool.copy_of(&data));
        assert_eq!(pool.copy_of(&data[..70_000]), &data[..70_000]);
    }

    #[test]
    fn never_keeps_more_than_a_few() {
        let pool = BufferPool::new();
        for _ in 0..20 {
            pool.give(Vec::with_capacity(MIN_POOLED));
        }
        assert_eq!(lock(&pool.spares).len(), KEEP);
    }
}

//! The pool's shared-memory segments: lent to one task at a time, taken back
//! and kept warm for the next, and capped.
//!
//! A segment carries a task's large argument buffers to its worker, and the
//! worker writes a large result back into the same segment, so one segment
//! serves a task both ways. Once the task is over (its worker has answered,
//! or has exited) the segment returns here and keeps its pages: writing
//! into pages a segment already has costs a quarter of what fresh ones
//! cost, because a fresh page is allocated, zeroed and mapped first.
//!
//! A free segment unused for [`KEEP_IDLE`] is freed: warm for the next
//! burst, but an idle pool holds no payload memory. Whoever returns a
//! segment wakes the supervisor, which frees the expired ones.
//!
//! The cap bounds the bytes of every segment lent out at once (arguments
//! waiting in the backlog, tasks running, results on their way to Python):
//! a payload that would pass it goes through the pipe instead. Segments a
//! worker made for a result are counted too, but never refused: the worker
//! checked that payload against the cap itself.

use crate::os::segment::Segment;
use crate::os::sync::lock;
use crate::parent::waker::Waker;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Free segments kept for reuse, at most: a pool with more free than this
/// holds idle memory nobody asked for.
const KEEP_FREE: usize = 16;
/// And at most this many bytes of them.
const KEEP_FREE_BYTES: u64 = 1 << 30;
/// How long a free segment is kept unused.
pub const KEEP_IDLE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Accounts {
    /// Each with the moment it came back.
    free: Vec<(Segment, Instant)>,
    free_bytes: u64,
    lent_bytes: u64,
    /// The pool has stopped: what comes back is freed, not kept.
    closed: bool,
}

pub struct SegmentPool {
    cap: u64,
    accounts: Mutex<Accounts>,
    /// Told when a segment comes back, so that it expires on time.
    supervisor: Option<Arc<Waker>>,
}

/// Why no segment was lent.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Lending it would pass the cap now; once others return it may not.
    Full,
    /// No segment could be made (out of memory or descriptors).
    Unavailable,
}

/// A segment on loan; it goes back to its pool when dropped.
pub struct Lease {
    segment: Option<Segment>,
    counted: u64,
    pool: Arc<SegmentPool>,
}

impl SegmentPool {
    pub fn new(cap: u64, supervisor: Option<Arc<Waker>>) -> Arc<SegmentPool> {
        Arc::new(SegmentPool {
            cap,
            accounts: Mutex::new(Accounts::default()),
            supervisor,
        })
    }

    /// Frees the segments unused since `now - KEEP_IDLE`; returns when the
    /// next one of those left expires.
    pub fn expire(&self, now: Instant) -> Option<Instant> {
        let expired: Vec<(Segment, Instant)> = {
            let mut accounts = lock(&self.accounts);
            // The supervisor asks on every turn: nothing due costs one lock.
            let next = accounts
                .free
                .iter()
                .map(|(_, back)| *back + KEEP_IDLE)
                .min();
            if next.is_none_or(|due| due > now) {
                return next;
            }
            let (keep, expired) = std::mem::take(&mut accounts.free)
                .into_iter()
                .partition(|(_, back)| now.saturating_duration_since(*back) < KEEP_IDLE);
            accounts.free = keep;
            accounts.free_bytes = accounts.free.iter().map(|(s, _)| s.len()).sum();
            expired
        };
        drop(expired);
        let accounts = lock(&self.accounts);
        accounts
            .free
            .iter()
            .map(|(_, back)| *back + KEEP_IDLE)
            .min()
    }

    /// A segment of at least `len` bytes: the smallest free one that fits,
    /// else a free one grown, else a new one.
    pub fn lend(self: &Arc<Self>, len: u64) -> Result<Lease, Refusal> {
        let reused = {
            let mut accounts = lock(&self.accounts);
            if accounts.lent_bytes.saturating_add(len) > self.cap {
                return Err(Refusal::Full);
            }
            accounts.lent_bytes += len;
            let segment = take_best_fit(&mut accounts.free, len);
            if let Some(segment) = &segment {
                accounts.free_bytes = accounts.free_bytes.saturating_sub(segment.len());
            }
            segment
        };
        match fitted(reused, len) {
            Ok(segment) => Ok(self.counted(segment, len)),
            Err(_) => {
                lock(&self.accounts).lent_bytes -= len;
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Takes charge of a segment a worker made for its result.
    pub fn adopt(self: &Arc<Self>, segment: Segment) -> Lease {
        let len = segment.len();
        lock(&self.accounts).lent_bytes += len;
        self.counted(segment, len)
    }

    /// Bytes lent out now.
    #[cfg(test)]
    pub fn lent_bytes(&self) -> u64 {
        lock(&self.accounts).lent_bytes
    }

    /// Frees every segment kept for reuse, and from now on every one that
    /// comes back (the pool has stopped).
    pub fn close(&self) {
        let free = {
            let mut accounts = lock(&self.accounts);
            accounts.closed = true;
            accounts.free_bytes = 0;
            std::mem::take(&mut accounts.free)
        };
        drop(free);
    }

    fn counted(self: &Arc<Self>, segment: Segment, len: u64) -> Lease {
        // What the accounts hold is what was asked for; a reused segment may
        // be larger, and that excess is memory kept warm, not lent.
        Lease {
            segment: Some(segment),
            counted: len,
            pool: Arc::clone(self),
        }
    }

    fn take_back(&self, mut segment: Segment, counted: u64) {
        // Its borrower may have grown it for a result.
        let known = segment.refresh_len().is_ok();
        let kept = {
            let mut accounts = lock(&self.accounts);
            accounts.lent_bytes = accounts.lent_bytes.saturating_sub(counted);
            let fits = !accounts.closed
                && accounts.free.len() < KEEP_FREE
                && accounts.free_bytes + segment.len() <= KEEP_FREE_BYTES;
            if known && fits {
                accounts.free_bytes += segment.len();
                accounts.free.push((segment, Instant::now()));
            }
            known && fits
        };
        if kept {
            if let Some(supervisor) = &self.supervisor {
                supervisor.wake();
            }
        }
    }
}

fn take_best_fit(free: &mut Vec<(Segment, Instant)>, len: u64) -> Option<Segment> {
    let best = free
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| s.len() >= len)
        .min_by_key(|(_, (s, _))| s.len())
        .or_else(|| free.iter().enumerate().max_by_key(|(_, (s, _))| s.len()))
        .map(|(i, _)| i)?;
    Some(free.swap_remove(best).0)
}

fn fitted(reused: Option<Segment>, len: u64) -> io::Result<Segment> {
    match reused {
        Some(mut segment) => {
            segment.grow_to(len)?;
            Ok(segment)
        }
        None => Segment::create(len),
    }
}

impl Lease {
    pub fn segment(&self) -> Option<&Segment> {
        self.segment.as_ref()
    }

    pub fn segment_mut(&mut self) -> Option<&mut Segment> {
        self.segment.as_mut()
    }
}

/// Outcomes compare in tests; two leases are equal only if they are one.
impl PartialEq for Lease {
    fn eq(&self, other: &Lease) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Lease {}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.segment.as_ref().map(Segment::len);
        f.debug_struct("Lease").field("len", &len).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(segment) = self.segment.take() {
            self.pool.take_back(segment, self.counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::segment::{read_exact_at, write_all_at};
    use std::os::fd::AsFd;

    #[test]
    fn a_returned_segment_is_lent_again_with_its_contents_overwritable() {
        let pool = SegmentPool::new(1 << 30, None);
        let lease = pool.lend(4096).expect("lend");
        let fd = lease
            .segment()
            .map(|s| s.fd().try_clone_to_owned().expect("dup"));
        drop(lease);
        let again = pool.lend(100).expect("lend again");
        let segment = again.segment().expect("a segment");
        write_all_at(segment.fd(), 0, b"again").expect("write");
        let mut back = [0u8; 5];
        read_exact_at(fd.as_ref().map(|f| f.as_fd()).expect("fd"), 0, &mut back).expect("read");
        assert_eq!(&back, b"again", "the same memory was reused");
    }

    #[test]
    fn the_cap_refuses_what_would_pass_it_until_segments_return() {
        let pool = SegmentPool::new(10_000, None);
        let first = pool.lend(6_000).expect("fits");
        assert_eq!(pool.lend(6_000).err(), Some(Refusal::Full));
        assert_eq!(pool.lent_bytes(), 6_000);
        drop(first);
        assert_eq!(pool.lent_bytes(), 0);
        assert!(pool.lend(6_000).is_ok());
    }

    #[test]
    fn a_free_segment_too_small_is_grown_rather_than_a_new_one_made() {
        let pool = SegmentPool::new(1 << 30, None);
        drop(pool.lend(1_000).expect("lend"));
        let lease = pool.lend(1 << 20).expect("lend bigger");
        assert_eq!(lease.segment().map(Segment::len), Some(1 << 20));
        assert!(lock(&pool.accounts).free.is_empty());
    }

    #[test]
    fn adopted_segments_are_counted_and_kept_after_use() {
        let pool = SegmentPool::new(10, None);
        let lease = pool.adopt(Segment::create(4096).expect("memfd"));
        assert_eq!(pool.lent_bytes(), 4096, "counted though past the cap");
        drop(lease);
        assert_eq!(lock(&pool.accounts).free.len(), 1);
        pool.close();
        assert!(lock(&pool.accounts).free.is_empty());
        drop(pool.lend(1).expect("lend after close"));
        assert!(lock(&pool.accounts).free.is_empty(), "not kept once closed");
    }

    #[test]
    fn free_segments_expire_once_unused_for_long_enough() {
        let pool = SegmentPool::new(1 << 30, None);
        drop(pool.lend(4096).expect("lend"));
        let now = Instant::now();
        let expiry = pool.expire(now).expect("one is kept, to expire");
        assert!(expiry > now && expiry <= now + KEEP_IDLE);
        assert_eq!(pool.expire(expiry), None);
        assert!(lock(&pool.accounts).free.is_empty());
        assert_eq!(lock(&pool.accounts).free_bytes, 0);
    }

    #[test]
    fn a_returned_segment_wakes_the_supervisor() {
        let waker = Arc::new(Waker::new().expect("eventfd"));
        let pool = SegmentPool::new(1 << 30, Some(Arc::clone(&waker)));
        drop(pool.lend(1).expect("lend"));
        // SAFETY: the waker owns the descriptor and outlives this borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(waker.raw_fd()) };
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        assert_eq!(nix::poll::poll(&mut fds, 0u16).expect("poll"), 1);
    }

    #[test]
    fn no_more_than_a_few_are_kept_free() {
        let pool = SegmentPool::new(1 << 40, None);
        let leases: Vec<_> = (0..20).map(|_| pool.lend(1).expect("lend")).collect();
        drop(leases);
        assert_eq!(lock(&pool.accounts).free.len(), KEEP_FREE);
    }
}

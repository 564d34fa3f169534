//! Wakes the supervisor out of `ppoll` when another thread has work for it.
//!
//! An eventfd write costs a syscall, so a flag coalesces wake-ups: only the
//! first caller after the supervisor last drained writes. The supervisor must
//! call [`Waker::drain`] before it looks at the backlog and the commands, so a
//! push that saw the flag set is always seen. Draining reads the eventfd only
//! when there can be something to read, saving a syscall per loop.

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

pub struct Waker {
    fd: EventFd,
    armed: AtomicBool,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(Waker {
            fd,
            armed: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            // A full counter (impossible in practice) still leaves it readable.
            let _ = self.fd.write(1);
        }
    }

    /// `readable`: `ppoll` reported the eventfd readable (a write can land
    /// with the flag already clear; it must be read or `ppoll` would return
    /// at once forever).
    ///
    /// Read first, clear the flag second. The other order loses wake-ups: a
    /// wake between the clear and the read sets the flag and has its write
    /// consumed by that read, so the next wake sees the flag set, writes
    /// nothing, and the supervisor sleeps through it. With this order every
    /// wake either precedes the clear (the swap makes its posted work visible
    /// to the look that follows) or follows it and writes.
    pub fn drain(&self, readable: bool) {
        if readable || self.armed.load(Ordering::Acquire) {
            let _ = self.fd.read();
        }
        self.armed.swap(false, Ordering::AcqRel);
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Duration;

    fn readable(fd: RawFd) -> bool {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pollfd, 1, 0) == 1 }
    }

    #[test]
    fn wake_makes_readable_and_drain_clears() {
        let waker = Waker::new().expect("eventfd");
        assert!(!readable(waker.raw_fd()));
        waker.wake();
        waker.wake();
        assert!(readable(waker.raw_fd()));
        waker.drain(true);
        assert!(!readable(waker.raw_fd()));
        waker.wake();
        assert!(readable(waker.raw_fd()), "re-armed after drain");
        waker.drain(false);
        assert!(
            !readable(waker.raw_fd()),
            "an armed waker is read even unprompted"
        );
    }

    fn wait_readable(fd: RawFd, timeout: Duration) -> bool {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as libc::c_int) == 1 }
    }

    /// A producer posts work (a counter bump, as a channel send would) and
    /// wakes, in quick pairs so that one wake can land while the consumer
    /// drains and the next while it is about to sleep. The consumer drains,
    /// looks at the work and sleeps, as the supervisor's loop does; sleeping
    /// out the poll's timeout with posted work unseen means a lost wake-up.
    #[test]
    fn no_wakeup_is_lost_between_drain_and_sleep() {
        const ROUNDS: u64 = 30_000;
        let waker = Arc::new(Waker::new().expect("eventfd"));
        let posted = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let producer = {
            let (waker, posted, seen) =
                (Arc::clone(&waker), Arc::clone(&posted), Arc::clone(&seen));
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    for _ in 0..2 {
                        posted.fetch_add(1, Ordering::AcqRel);
                        waker.wake();
                        for _ in 0..(round % 64) {
                            std::hint::spin_loop();
                        }
                    }
                    while seen.load(Ordering::Acquire) < posted.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut readable = false;
        while seen.load(Ordering::Acquire) < 2 * ROUNDS {
            waker.drain(std::mem::take(&mut readable));
            let now_seen = posted.load(Ordering::Acquire);
            seen.store(now_seen, Ordering::Release);
            if now_seen == 2 * ROUNDS {
                break;
            }
            readable = wait_readable(waker.raw_fd(), Duration::from_secs(10));
            let pending = posted.load(Ordering::Acquire) - seen.load(Ordering::Acquire);
            assert!(
                readable || pending == 0,
                "slept through {pending} posted wake-ups"
            );
        }
        producer.join().expect("producer");
    }
}

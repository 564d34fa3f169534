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

    /// `readable`: `ppoll` reported the eventfd readable. A wake whose write
    /// lands just after a drain leaves it readable with the flag clear; that
    /// case is read here too, or `ppoll` would return at once forever.
    pub fn drain(&self, readable: bool) {
        let was_armed = self.armed.swap(false, Ordering::AcqRel);
        if was_armed || readable {
            let _ = self.fd.read();
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

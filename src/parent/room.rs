//! Room signals: how a caller that must not block learns that the backlog has
//! room for one more task.
//!
//! A thread blocked in `submit` waits on the backlog's condvar. An asyncio
//! event loop cannot: every coroutine on it would stop. It can poll a file
//! descriptor, though, like any socket, so each loop that waits gets a
//! `RoomSignal`, an eventfd that the backlog makes readable once per arming
//! (`Backlog::notify_when_room`) when a task leaves it or it closes.

use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

pub struct RoomSignal {
    fd: EventFd,
}

impl RoomSignal {
    pub fn new() -> io::Result<RoomSignal> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(RoomSignal { fd })
    }

    /// Makes the descriptor readable (a full counter, impossible in practice,
    /// leaves it readable too).
    pub fn fire(&self) {
        let _ = self.fd.write(1);
    }

    /// Makes it unreadable again; harmless on a signal that has not fired.
    pub fn clear(&self) {
        let _ = self.fd.read();
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_fd().as_raw_fd()
    }

    /// Whether the descriptor is readable right now.
    #[cfg(test)]
    pub fn is_fired(&self) -> bool {
        let mut pollfd = libc::pollfd {
            fd: self.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        unsafe { libc::poll(&mut pollfd, 1, 0) == 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_makes_readable_and_clear_undoes_it() {
        let signal = RoomSignal::new().expect("eventfd");
        assert!(!signal.is_fired());
        signal.clear();
        assert!(!signal.is_fired(), "clearing an unfired signal is harmless");
        signal.fire();
        signal.fire();
        assert!(signal.is_fired());
        signal.clear();
        assert!(!signal.is_fired(), "one clear takes every firing");
    }
}

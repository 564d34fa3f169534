//! The supervisor's one wait: `ppoll` on the wake-up fd and every worker's
//! pipes, then the handling of whatever became ready.

use super::worker::Worker;
use super::Supervisor;
use crate::parent::deadline;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Result,
    Status,
    Task,
}

/// Results before statuses: a worker's last frame must be read before its
/// exit is handled.
const HANDLING_ORDER: [Role; 3] = [Role::Result, Role::Task, Role::Status];

/// The descriptors of one `ppoll`: the waker first, then one entry per
/// worker pipe, with who owns it.
struct PollSet {
    fds: Vec<libc::pollfd>,
    owners: Vec<(u64, Role)>,
}

impl PollSet {
    fn new(waker: RawFd) -> PollSet {
        let mut set = PollSet {
            fds: Vec::new(),
            owners: Vec::new(),
        };
        set.fds.push(pollfd(waker, libc::POLLIN));
        set
    }

    fn watch(&mut self, worker_id: u64, fd: RawFd, events: libc::c_short, role: Role) {
        self.fds.push(pollfd(fd, events));
        self.owners.push((worker_id, role));
    }

    fn watch_worker(&mut self, worker_id: u64, worker: &Worker) {
        let has_exited = worker.has_exited();
        let output_pending = !worker.unsent.is_empty();
        let pipes = &worker.pipes;
        if let Some(result_r) = &pipes.result_r {
            self.watch(worker_id, result_r.as_raw_fd(), libc::POLLIN, Role::Result);
        }
        if let Some(status_r) = pipes.status_r.as_ref().filter(|_| !has_exited) {
            self.watch(worker_id, status_r.as_raw_fd(), libc::POLLIN, Role::Status);
        }
        if output_pending {
            let task_w = pipes.task_w.as_raw_fd();
            self.watch(worker_id, task_w, libc::POLLOUT, Role::Task);
        }
    }

    fn waker_ready(&self) -> bool {
        self.fds[0].revents != 0
    }

    /// The ready worker pipes with the given role.
    fn ready(&self, role: Role) -> impl Iterator<Item = u64> + '_ {
        self.fds[1..]
            .iter()
            .zip(&self.owners)
            .filter(move |(fd, (_, owner_role))| fd.revents != 0 && *owner_role == role)
            .map(|(_, (worker_id, _))| *worker_id)
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

impl Supervisor {
    pub(super) fn wait_for_io(&mut self, timeout: Option<Duration>) {
        let mut set = PollSet::new(self.shared.waker.raw_fd());
        for (worker_id, worker) in &self.workers {
            set.watch_worker(*worker_id, worker);
        }
        if !ppoll(&mut set.fds, timeout) {
            return;
        }
        self.woken = set.waker_ready();
        for role in HANDLING_ORDER {
            let ready: Vec<u64> = set.ready(role).collect();
            for worker_id in ready {
                match role {
                    Role::Result => self.read_results(worker_id),
                    Role::Task => self.write_pending(worker_id),
                    Role::Status => self.read_status(worker_id),
                }
            }
        }
    }
}

/// `ppoll` with nanosecond resolution, so deadlines are kept to well under a
/// millisecond. Returns false when nothing is ready (timeout or signal).
fn ppoll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> bool {
    let timespec = timeout.map(deadline::to_timespec);
    let timespec_ptr = timespec
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the slice is valid for its length; a null timeout means "forever".
    let ready = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timespec_ptr,
            std::ptr::null(),
        )
    };
    ready > 0
}

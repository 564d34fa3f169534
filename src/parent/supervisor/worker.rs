//! One worker as the supervisor sees it: how it is connected, where it is in
//! its life, and what is still to be written to it.
//!
//! ```text
//!   Starting ──Ready──▶ Idle ◀──result── Busy
//!      │                 │  └──dispatch──▶ │
//!      │                 └──retire──▶ Retiring ──exit──▶ (gone)
//!      └─(any state) pipe closed ─▶ Lost ──exit──▶ (gone: its task fails)
//!        (any state) timeout, cancel, bad frame ─▶ Killed ──exit──▶ (gone)
//! ```
//! A worker leaves the supervisor's map only once the zygote has reported
//! its exit (or, with its zygote dead, once its pipes closed), so its task
//! fails with the real exit status and no process is forgotten.

use super::memory::MemoryWatch;
use super::policy::RETIRE_GRACE;
use super::Shared;
use crate::os::fd_passing;
use crate::os::segment::Segment;
use crate::parent::buffers::BufferPool;
use crate::parent::killer::Killer;
use crate::parent::segments::{Lease, SegmentPool};
use crate::parent::zygote_client::{WorkerChannels, Zygote};
use crate::wire::frame::{FrameReader, PendingWrite, ReadOutcome, Tag, MAX_BODY_LEN};
use crate::wire::status::StatusDecoder;
use nix::sys::signal::Signal;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

/// How much of a status pipe one read takes: records are 8 bytes, and a
/// worker has three.
const STATUS_READ: usize = 64;

pub enum State {
    /// Spawned; its settings are on the way and `Ready` has not arrived.
    /// `retire_when_ready`: `clear_workers()` or shutdown came meanwhile.
    Starting {
        retire_when_ready: bool,
    },
    Idle,
    Busy {
        task_id: u64,
        deadline: Option<Instant>,
        /// Set while a memory-limited task runs.
        memory: Option<Box<MemoryWatch>>,
    },
    /// Told to run its finalizer and exit.
    Retiring {
        deadline: Instant,
    },
    /// A pipe closed under it, or its settings could not be made, or its
    /// task ran out of time or memory; it was killed (to be sure, in the
    /// first cases). Its task, if any, fails once the exit status is in, so
    /// the error carries the real exit status and peak memory.
    Lost {
        task_id: Option<u64>,
        cause: Cause,
    },
    /// Killed by us (timeout, cancel, shutdown, a broken protocol); its task
    /// is already resolved.
    Killed,
}

/// Why a worker is `Lost`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It died, or its pipes closed, or it could not be set up.
    Died,
    /// Its task's deadline passed.
    Timeout,
    /// Its task's tree grew by `used` bytes, past `limit`.
    Memory { used: u64, limit: u64 },
}

/// Which zygote made the worker, and so who reports and reaps what.
pub enum Zygotes {
    /// The zygote shared by every pool of this process ("forkserver").
    Shared { pid: i32 },
    /// The zygote this pool forked from the user's process ("fork").
    Pool { pid: i32 },
    /// A zygote of its own ("spawn"), reaped after the worker.
    Own(Zygote),
}

/// The parent's ends of a worker's pipes. A read end becomes `None` once it
/// reached end of file.
pub struct Pipes {
    pub task_w: File,
    pub result_r: Option<File>,
    /// Closed without an exit record, this means the zygote died: the
    /// worker itself may live on, orphaned.
    pub status_r: Option<File>,
    /// Segments go to the worker and come back on this socket.
    pub segments: OwnedFd,
    pub zygote: Zygotes,
}

/// The worker's pid arrives with its zygote's first status record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Pid {
    Unknown { kill_on_arrival: bool },
    Known(i32),
}

/// How the worker ended, once it has.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Exit {
    /// The raw wait status, as its zygote reaped it.
    Reported(i32),
    /// Its zygote died, so nobody could report it.
    Unknown,
}

pub struct Worker {
    pub pipes: Pipes,
    pub state: State,
    pub pid: Pid,
    pub exit: Option<Exit>,
    /// Its peak resident memory in bytes, reported with its exit.
    pub max_rss: Option<u64>,
    /// `terminate_workers()` / `kill_workers()` signalled it: its death is
    /// the pool's doing, not a crash.
    pub signalled_by_pool: bool,
    pub tasks_done: u64,
    pub reader: FrameReader,
    pub status: StatusDecoder,
    /// Frames not yet (fully) written to the task pipe.
    pub unsent: VecDeque<PendingWrite>,
    /// The segment of the task it runs or ran last. It goes back to the pool
    /// only once the worker is done with it: when it has answered, or when it
    /// has exited (a killed worker may still be writing until it is reaped).
    pub lent: Option<Lease>,
    /// Where written task payloads go back for reuse.
    buffers: Arc<BufferPool>,
    segment_pool: Arc<SegmentPool>,
    killer: Arc<Killer>,
}

impl Worker {
    pub fn new(
        channels: WorkerChannels,
        zygote: Zygotes,
        shared: &Shared,
        killer: &Arc<Killer>,
    ) -> Worker {
        Worker {
            pipes: Pipes {
                task_w: channels.task_w,
                result_r: Some(channels.result_r),
                status_r: Some(channels.status_r),
                segments: channels.segments,
                zygote,
            },
            state: State::Starting {
                retire_when_ready: false,
            },
            pid: Pid::Unknown {
                kill_on_arrival: false,
            },
            exit: None,
            max_rss: None,
            signalled_by_pool: false,
            tasks_done: 0,
            reader: FrameReader::with_buffers(MAX_BODY_LEN, Arc::clone(&shared.buffers)),
            status: StatusDecoder::default(),
            unsent: VecDeque::new(),
            lent: None,
            buffers: Arc::clone(&shared.buffers),
            segment_pool: Arc::clone(&shared.segments),
            killer: Arc::clone(killer),
        }
    }

    /// The next result frame, or what stopped it; None once the result pipe
    /// is closed (or was never open).
    pub fn read_result(&mut self) -> Option<io::Result<ReadOutcome>> {
        let result_r = self.pipes.result_r.as_mut()?;
        Some(self.reader.read_from(result_r))
    }

    pub fn close_results(&mut self) {
        self.pipes.result_r = None;
    }

    pub fn results_closed(&self) -> bool {
        self.pipes.result_r.is_none()
    }

    /// Reads what the status pipe holds into the decoder, closing the pipe at
    /// its end; false if it was closed already (or never open).
    pub fn drain_status(&mut self) -> bool {
        let Some(status_r) = self.pipes.status_r.as_mut() else {
            return false;
        };
        if drain_into(status_r, &mut self.status) {
            self.pipes.status_r = None;
        }
        true
    }

    /// Its zygote closed the status pipe: gone, unless it reported the exit.
    pub fn zygote_gone(&self) -> bool {
        self.pipes.status_r.is_none()
    }

    pub fn pid_or_zero(&self) -> i32 {
        match self.pid {
            Pid::Known(pid) => pid,
            Pid::Unknown { .. } => 0,
        }
    }

    pub fn has_exited(&self) -> bool {
        self.exit.is_some()
    }

    /// Still serving tasks, or about to.
    pub fn is_serving(&self) -> bool {
        matches!(
            self.state,
            State::Starting { .. } | State::Idle | State::Busy { .. }
        )
    }

    /// Idle, or starting and not told to retire: a task can go here soon.
    pub fn is_available(&self) -> bool {
        matches!(
            self.state,
            State::Idle
                | State::Starting {
                    retire_when_ready: false
                }
        )
    }

    pub fn is_busy_with(&self, task: u64) -> bool {
        matches!(self.state, State::Busy { task_id, .. } if task_id == task)
    }

    pub fn running_task(&self) -> Option<u64> {
        match self.state {
            State::Busy { task_id, .. } => Some(task_id),
            _ => None,
        }
    }

    /// SIGKILLs the worker's tree now, or as soon as its pid is known.
    pub fn kill(&mut self) {
        match self.pid {
            Pid::Known(pid) => self.killer.kill_tree(pid),
            Pid::Unknown { .. } => {
                self.pid = Pid::Unknown {
                    kill_on_arrival: true,
                }
            }
        }
    }

    /// Sends `signal` to the worker's tree; one whose pid is not known yet
    /// is killed as soon as it is.
    pub fn signal(&mut self, signal: Signal) {
        match self.pid {
            Pid::Known(pid) => self.killer.signal_tree(pid, signal),
            Pid::Unknown { .. } => self.kill(),
        }
    }

    /// Kills the worker for its task's `cause`; the task fails once the
    /// exit is in. Returns the task, if one was running.
    pub fn kill_for(&mut self, cause: Cause) -> Option<u64> {
        let task = self.running_task();
        self.kill();
        self.state = State::Lost {
            task_id: task,
            cause,
        };
        task
    }

    /// Kills the worker and returns the task it was running, if any.
    pub fn kill_and_forget_task(&mut self) -> Option<u64> {
        let task = self.running_task();
        self.kill();
        self.state = State::Killed;
        task
    }

    /// The zygote told us the pid; a kill asked for before happens now.
    pub fn pid_arrived(&mut self, pid: i32) {
        let kill = self.pid
            == Pid::Unknown {
                kill_on_arrival: true,
            };
        self.pid = Pid::Known(pid);
        if kill && !self.has_exited() {
            self.killer.kill_tree(pid);
        }
    }

    /// Idle workers retire now; starting ones as soon as they are ready.
    pub fn retire_when_idle(&mut self) {
        match self.state {
            State::Idle => self.retire(),
            State::Starting { .. } => {
                self.state = State::Starting {
                    retire_when_ready: true,
                }
            }
            _ => {}
        }
    }

    /// Asks the worker to run its finalizer and exit, within a grace period.
    pub fn retire(&mut self) {
        self.send(PendingWrite::new(Tag::Retire, 0, Vec::new()));
        self.state = State::Retiring {
            deadline: Instant::now() + RETIRE_GRACE,
        };
    }

    /// The worker's settings go before anything else queued for it.
    pub fn send_config(&mut self, config: Vec<u8>) -> bool {
        self.unsent
            .push_front(PendingWrite::new(Tag::Config, 0, config));
        self.flush()
    }

    /// Sends a task, its segment (if any) first; false when the worker is gone.
    pub fn send_task(&mut self, id: u64, payload: Vec<u8>, segment: Option<Lease>) -> bool {
        let tag = match segment.as_ref().and_then(Lease::segment) {
            Some(shared) => {
                if fd_passing::send_fd(self.pipes.segments.as_fd(), id, shared.fd()).is_err() {
                    return false;
                }
                Tag::TaskShared
            }
            None => Tag::Task,
        };
        self.lent = segment;
        self.send(PendingWrite::new(tag, id, payload))
    }

    /// Where the large buffers of task `id`'s result are: its own segment
    /// (`OkShared`) or the one the worker sent with it (`OkSegment`).
    pub fn result_segment(&mut self, tag: Tag, id: u64) -> Result<Lease, String> {
        if tag == Tag::OkShared {
            return self
                .lent
                .take()
                .ok_or_else(|| "a shared result for a task without a segment".to_string());
        }
        match fd_passing::recv_fd(self.pipes.segments.as_fd(), false) {
            Ok(Some((sent_for, fd))) if sent_for == id => Segment::adopt(fd)
                .map(|segment| self.segment_pool.adopt(segment))
                .map_err(|e| format!("an unreadable result segment: {e}")),
            Ok(Some((sent_for, _))) => Err(format!("a segment for task {sent_for}")),
            Ok(None) => Err("a result segment that never came".to_string()),
            Err(e) => Err(format!("a broken segment socket: {e}")),
        }
    }

    pub fn send(&mut self, frame: PendingWrite) -> bool {
        self.unsent.push_back(frame);
        self.flush()
    }

    /// Writes what the task pipe takes now; false when the pipe is broken.
    pub fn flush(&mut self) -> bool {
        while let Some(pending) = self.unsent.front_mut() {
            match pending.write_to(&mut self.pipes.task_w) {
                Ok(true) => {
                    if let Some(done) = self.unsent.pop_front() {
                        self.buffers.give(done.into_body());
                    }
                }
                Ok(false) => return true,
                Err(_) => {
                    self.unsent.clear();
                    return false;
                }
            }
        }
        true
    }
}

/// Reads what the pipe holds into `decoder`; true once it reached end of file
/// (or failed, which ends it just the same).
fn drain_into(pipe: &mut impl Read, decoder: &mut StatusDecoder) -> bool {
    let mut buf = [0u8; STATUS_READ];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => decoder.feed(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

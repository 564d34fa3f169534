//! Messages between the Python-facing pool, the supervisor thread and the
//! completion thread. Everything here is plain data: no Python objects cross
//! into the supervisor.

use crate::parent::segments::Lease;
use crossbeam_channel::Sender;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;

/// Requests to the supervisor.
pub enum Command {
    /// Kill the worker running `task_id`; replies whether a running task was killed.
    Cancel { task_id: u64, reply: Sender<bool> },
    /// Stop taking work; with `kill_running`, SIGKILL the busy workers too
    /// (their tasks end cancelled); with `signal`, send it to every worker's
    /// tree (their tasks fail with the exit status it causes).
    Shutdown {
        kill_running: bool,
        signal: Option<nix::sys::signal::Signal>,
    },
    /// Retire every idle worker now; replacements use the settings of that moment.
    ClearWorkers,
    /// The pickled settings for a new worker, made on request (`Event::NeedConfig`).
    WorkerConfig {
        worker_id: u64,
        config: Result<Vec<u8>, String>,
    },
    /// A new zygote for this pool, forked on request (`Event::NeedFork`):
    /// its pid and the parent's end of its control socket.
    Forked {
        zygote: Result<(i32, OwnedFd), String>,
    },
}

/// Why a worker (and the task it ran) came to an end, as `ProcessError.reason`
/// says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Its task's deadline passed; we killed it.
    Timeout,
    /// Its task went past its memory limit; we killed it.
    Memory,
    /// A signal we did not send (the OOM killer, a crash, `kill -9`).
    Killed,
    /// It exited by itself.
    Exited,
    /// A signal the pool was asked to send (`terminate_workers()`).
    Cancelled,
    /// Its end is unknown (its zygote died), it broke the protocol, or none
    /// could be started.
    Lost,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Memory => "memory",
            Reason::Killed => "killed",
            Reason::Exited => "exited",
            Reason::Cancelled => "cancelled",
            Reason::Lost => "lost",
        }
    }
}

/// How a worker ended, for the exception its task gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death {
    pub message: String,
    pub reason: Reason,
    /// 0 when it never became known.
    pub pid: i32,
    /// As `multiprocessing` has it: the exit code, or minus the signal.
    pub exitcode: Option<i32>,
    /// Peak resident memory of the worker process, in bytes (from `wait4`).
    pub max_rss: Option<u64>,
    /// Reason `Memory`: what the task's tree had grown by, and its limit.
    pub memory: Option<(u64, u64)>,
}

impl Death {
    /// A task lost with no worker's exit to report.
    pub fn lost(message: String) -> Death {
        Death {
            message,
            reason: Reason::Lost,
            pid: 0,
            exitcode: None,
            max_rss: None,
            memory: None,
        }
    }
}

/// How a task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pickled return value.
    Returned(Vec<u8>),
    /// The same, its large buffers in a segment (the body says where).
    ReturnedShared(Vec<u8>, Lease),
    /// The pickled `(exception or None, repr, traceback text)`.
    Raised(Vec<u8>),
    /// A memory-limited task raised `MemoryError` (pickled as `Raised`);
    /// the limit in bytes. Its worker is replaced.
    OverMemory(Vec<u8>, u64),
    /// The deadline passed and the worker's tree was killed.
    TimedOut(Death),
    /// Killed on request (cancel, or shutdown without waiting).
    Cancelled,
    /// The worker died, broke protocol, or was killed for its memory.
    Lost(Death),
}

impl Outcome {
    /// Counted in `tasks_failed` (the original's meaning).
    pub fn failed(&self) -> bool {
        matches!(
            self,
            Outcome::Raised(_) | Outcome::OverMemory(..) | Outcome::TimedOut(_) | Outcome::Lost(_)
        )
    }

    pub fn over_memory(&self) -> bool {
        match self {
            Outcome::OverMemory(..) => true,
            Outcome::Lost(death) => death.reason == Reason::Memory,
            _ => false,
        }
    }
}

/// Notices for the completion thread, which runs them against Python.
pub enum Event {
    Started {
        task_id: u64,
        pid: i32,
    },
    Finished {
        task_id: u64,
        outcome: Outcome,
    },
    /// Make a new worker's settings now (they snapshot `propagate_environ`).
    NeedConfig {
        worker_id: u64,
    },
    /// Fork a new zygote for this pool from the parent ("fork" start method:
    /// the one forked when the pool was made is gone).
    NeedFork,
    /// A message for the `deadpool` logger.
    Log {
        level: log::Level,
        message: String,
    },
}

/// What the shim's dispatcher is told about a task.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    Started {
        task_id: u64,
        pid: i32,
    },
    Finished {
        task_id: u64,
        /// The worker's pid when the task's start was folded into this
        /// outcome, because both arrived in one batch.
        started_on: Option<i32>,
        outcome: Outcome,
    },
}

/// A task both started and finished within `events` has its start folded
/// into its outcome: one Python call instead of two, and no RUNNING state
/// that nobody could have seen. Events other than starts and outcomes are
/// not for the dispatcher and are dropped.
pub fn fold_starts(events: Vec<Event>) -> Vec<Notice> {
    let finished: HashSet<u64> = events
        .iter()
        .filter_map(|event| match event {
            Event::Finished { task_id, .. } => Some(*task_id),
            _ => None,
        })
        .collect();
    let mut folded: HashMap<u64, i32> = HashMap::new();
    let mut notices = Vec::with_capacity(events.len());
    for event in events {
        match event {
            Event::Started { task_id, pid } if finished.contains(&task_id) => {
                folded.insert(task_id, pid);
            }
            Event::Started { task_id, pid } => notices.push(Notice::Started { task_id, pid }),
            Event::Finished { task_id, outcome } => notices.push(Notice::Finished {
                task_id,
                started_on: folded.remove(&task_id),
                outcome,
            }),
            _ => {}
        }
    }
    notices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_failures_count_as_failed_and_over_memory() {
        let killed = Death {
            reason: Reason::Memory,
            ..Death::lost("over".into())
        };
        assert!(Outcome::Lost(killed).over_memory());
        assert!(Outcome::OverMemory(Vec::new(), 1).failed());
        assert!(!Outcome::Lost(Death::lost("gone".into())).over_memory());
        assert!(!Outcome::Cancelled.failed());
        assert_eq!(Reason::Cancelled.name(), "cancelled");
    }

    #[test]
    fn only_starts_whose_outcome_is_in_the_same_batch_are_folded() {
        let batch = vec![
            Event::Started {
                task_id: 1,
                pid: 10,
            },
            Event::Started {
                task_id: 2,
                pid: 11,
            },
            Event::Finished {
                task_id: 1,
                outcome: Outcome::Cancelled,
            },
            Event::Finished {
                task_id: 3,
                outcome: Outcome::Cancelled,
            },
        ];
        assert_eq!(
            fold_starts(batch),
            vec![
                Notice::Started {
                    task_id: 2,
                    pid: 11
                },
                Notice::Finished {
                    task_id: 1,
                    started_on: Some(10),
                    outcome: Outcome::Cancelled
                },
                Notice::Finished {
                    task_id: 3,
                    started_on: None,
                    outcome: Outcome::Cancelled
                },
            ]
        );
    }
}

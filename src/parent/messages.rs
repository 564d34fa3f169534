//! Messages between the Python-facing pool, the supervisor thread and the
//! completion thread. Everything here is plain data: no Python objects cross
//! into the supervisor.

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

/// How a task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The pickled return value.
    Returned(Vec<u8>),
    /// The pickled `(exception or None, repr, traceback text)`.
    Raised(Vec<u8>),
    /// The deadline passed and the worker's tree was killed.
    TimedOut,
    /// Killed on request (cancel, or shutdown without waiting).
    Cancelled,
    /// The worker died or broke protocol; the message names pid and exit status.
    Lost(String),
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
                outcome: Outcome::TimedOut,
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
                    outcome: Outcome::TimedOut
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

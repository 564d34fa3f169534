//! Messages between the Python-facing pool, the supervisor thread and the
//! completion thread. Everything here is plain data: no Python objects cross
//! into the supervisor.

use crossbeam_channel::Sender;
use std::os::fd::OwnedFd;

/// Requests to the supervisor.
pub enum Command {
    /// Kill the worker running `task_id`; replies whether a running task was killed.
    Cancel { task_id: u64, reply: Sender<bool> },
    /// Stop taking work; with `kill_running`, SIGKILL the busy workers too.
    Shutdown { kill_running: bool },
    /// Retire every idle worker now; replacements use the settings of that moment.
    ClearWorkers,
    /// The pickled settings for a new worker, made on request (`Event::NeedConfig`).
    WorkerConfig {
        worker_id: u64,
        config: Result<Vec<u8>, String>,
    },
    /// The per-worker zygote forked on request (`Event::NeedFork`).
    Forked {
        worker_id: u64,
        pid: Result<i32, String>,
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
    /// Fork a per-worker zygote from the parent ("fork" start method).
    NeedFork {
        worker_id: u64,
        child_end: OwnedFd,
    },
    /// A message for the `deadpool` logger.
    Log {
        level: log::Level,
        message: String,
    },
}

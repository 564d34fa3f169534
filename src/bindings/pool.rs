//! `Pool`: what `deadpool.Deadpool` drives from the caller's threads.
//!
//! The shim validates the user's arguments; this side only checks what it
//! converts (a start method's name, a timeout's range) and moves bytes and
//! task ids. Blocking calls release the GIL and wake every 50 ms to let
//! Python deliver signals (Ctrl-C must interrupt a blocked `submit` or
//! `shutdown`). Outcomes reach Python on the completion thread
//! (completion.rs).

use super::completion::{self, Callbacks};
use super::room_signal::RoomSignal;
use super::segment::Segment;
use crate::os::sync::lock;
use crate::os::thread;
use crate::parent::backlog::{PushError, Task};
use crate::parent::killer::Killer;
use crate::parent::messages::{Command, Event};
use crate::parent::stats::Stats;
use crate::parent::supervisor::{Settings, Shared, StartMethod, Supervisor};
use crate::parent::zygote_client::{Zygote, ZygoteLaunch};
use crate::wire::dispatch::{CancelReply, SubmitReply};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::Signal;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// How often a blocked call comes back to Python to check for signals.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Set by the completion thread when it has delivered its last event.
#[derive(Default)]
pub struct Finished {
    done: Mutex<bool>,
    signal: Condvar,
}

impl Finished {
    pub fn set(&self) {
        *lock(&self.done) = true;
        self.signal.notify_all();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let done = lock(&self.done);
        let (done, _) = self
            .signal
            .wait_timeout_while(done, timeout, |done| !*done)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *done
    }
}

#[pyclass(frozen, weakref, module = "deadpool._core")]
pub struct Pool {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    finished: Arc<Finished>,
    completion_thread: Arc<OnceLock<ThreadId>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn parse_start_method(name: &str) -> PyResult<StartMethod> {
    match name {
        "forkserver" => Ok(StartMethod::Forkserver),
        "spawn" => Ok(StartMethod::Spawn),
        "fork" => Ok(StartMethod::Fork),
        other => Err(PyValueError::new_err(format!(
            "unknown start method {other:?}"
        ))),
    }
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (
        *, max_workers, min_workers, max_backlog, max_tasks_per_child, max_worker_memory_bytes,
        start_method, argv, preparation, static_config, dispatch, make_config, fork_zygote,
        forked_zygote=None, max_shared_memory_bytes=0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_workers: usize,
        min_workers: usize,
        max_backlog: usize,
        max_tasks_per_child: Option<u64>,
        max_worker_memory_bytes: Option<u64>,
        start_method: &str,
        argv: Vec<String>,
        preparation: Vec<u8>,
        static_config: Option<Vec<u8>>,
        dispatch: Py<PyAny>,
        make_config: Option<Py<PyAny>>,
        fork_zygote: Option<Py<PyAny>>,
        forked_zygote: Option<(i32, RawFd)>,
        max_shared_memory_bytes: u64,
    ) -> PyResult<Self> {
        let settings = Settings {
            max_workers,
            min_workers,
            max_tasks_per_child,
            max_worker_memory_bytes,
            start_method: parse_start_method(start_method)?,
            launch: ZygoteLaunch { argv, preparation },
            static_config,
            pool_zygote: forked_zygote.map(adopt_zygote).transpose()?,
        };
        let shared = Arc::new(Shared::new(max_backlog, max_shared_memory_bytes)?);
        let (command_tx, command_rx) = crossbeam_channel::unbounded();
        let (event_tx, event_rx) = crossbeam_channel::unbounded();
        let finished = Arc::new(Finished::default());
        let completion_thread = Arc::new(OnceLock::new());
        let callbacks = Callbacks {
            dispatch,
            make_config,
            fork_zygote,
        };
        let panic_report = event_tx.clone();
        let supervisor = Supervisor::new(
            Arc::clone(&shared),
            settings,
            command_rx,
            event_tx,
            Killer::start()?,
        );
        let supervisor_thread = start_supervisor(supervisor, Arc::clone(&shared), panic_report)?;
        let completion = completion::start(
            event_rx,
            command_tx.clone(),
            Arc::clone(&shared),
            callbacks,
            Arc::clone(&finished),
            Arc::clone(&completion_thread),
        )?;
        Ok(Pool {
            shared,
            commands: command_tx,
            finished,
            completion_thread,
            threads: Mutex::new(vec![supervisor_thread, completion]),
        })
    }

    /// Queues a pickled task under an id the caller chose (and registered
    /// first, so no event can outrun it). Blocks, GIL released, while the
    /// backlog is full and `respect_bound` is set. Returns False once the
    /// pool is closed. `memory_limit`: bytes the task's process tree may add.
    /// `segment`: where the task's large buffers are (`lend_segment`); the
    /// task takes it over.
    #[pyo3(signature = (
        task_id, payload, priority, timeout, respect_bound, memory_limit=None, segment=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        task_id: u64,
        payload: &[u8],
        priority: u64,
        timeout: Option<f64>,
        respect_bound: bool,
        memory_limit: Option<u64>,
        segment: Option<&Bound<'_, Segment>>,
    ) -> PyResult<bool> {
        let mut task = self.task(task_id, payload, priority, timeout, memory_limit)?;
        task.segment = segment.and_then(|s| s.get().take());
        loop {
            match self.shared.backlog.push(task, respect_bound) {
                Ok(()) => {
                    self.accepted();
                    return Ok(true);
                }
                Err(PushError::Closed) => return Ok(false),
                Err(PushError::Full(returned)) => {
                    task = returned;
                    let backlog = &self.shared.backlog;
                    py.detach(|| backlog.wait_for_space(SIGNAL_CHECK_INTERVAL));
                    py.check_signals()?;
                }
            }
        }
    }

    /// `submit` for a caller that must never block (an asyncio event loop):
    /// a `SubmitReply` (exported as `SUBMIT_*`). A full backlog queues
    /// nothing: arm a `RoomSignal` with `notify_when_room`, then try again.
    /// A `segment` stays with the caller unless the task is accepted.
    #[pyo3(signature = (task_id, payload, priority, timeout, memory_limit=None, segment=None))]
    #[allow(clippy::too_many_arguments)]
    fn try_submit(
        &self,
        task_id: u64,
        payload: &[u8],
        priority: u64,
        timeout: Option<f64>,
        memory_limit: Option<u64>,
        segment: Option<&Bound<'_, Segment>>,
    ) -> PyResult<u8> {
        let mut task = self.task(task_id, payload, priority, timeout, memory_limit)?;
        task.segment = segment.and_then(|s| s.get().take());
        let reply = match self.shared.backlog.push(task, true) {
            Ok(()) => {
                self.accepted();
                SubmitReply::Accepted
            }
            Err(PushError::Full(task)) => {
                self.shared.buffers.give(task.payload);
                if let (Some(lease), Some(segment)) = (task.segment, segment) {
                    segment.get().put_back(lease);
                }
                SubmitReply::Full
            }
            Err(PushError::Closed) => SubmitReply::Closed,
        };
        Ok(reply as u8)
    }

    /// Makes `signal` readable once the backlog has room for a `try_submit`
    /// or the pool has closed: at once if so now, else when a task leaves
    /// the backlog. Once per call.
    fn notify_when_room(&self, signal: &Bound<'_, RoomSignal>) {
        self.shared.backlog.notify_when_room(signal.get().signal());
    }

    /// Cancels a task: a `CancelReply` (exported as `CANCEL_*`).
    fn cancel(&self, py: Python<'_>, task_id: u64) -> PyResult<u8> {
        if self.shared.backlog.remove(task_id).is_some() {
            return Ok(CancelReply::RemovedPending as u8);
        }
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        let asked = self.commands.send(Command::Cancel {
            task_id,
            reply: reply_tx,
        });
        if asked.is_err() {
            return Ok(CancelReply::NotFound as u8);
        }
        self.shared.waker.wake();
        let reply = match wait_reply(py, &reply_rx)? {
            Some(true) => CancelReply::KilledRunning,
            _ => CancelReply::NotFound,
        };
        Ok(reply as u8)
    }

    /// Closes the backlog and tells the supervisor to wind down: with
    /// `kill_running`, busy workers are killed and their tasks cancelled; with
    /// `signal`, every worker's tree gets that signal. Returns the ids of the
    /// pending tasks it removed (when `cancel_pending`).
    #[pyo3(signature = (cancel_pending, kill_running, signal=None))]
    fn shutdown(
        &self,
        cancel_pending: bool,
        kill_running: bool,
        signal: Option<i32>,
    ) -> PyResult<Vec<u64>> {
        let signal = signal
            .map(Signal::try_from)
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("signal: {e}")))?;
        let removed = self.shared.backlog.close(cancel_pending);
        let _ = self.commands.send(Command::Shutdown {
            kill_running,
            signal,
        });
        self.shared.waker.wake();
        Ok(removed)
    }

    /// Waits until every task has been resolved and every worker has exited.
    /// Returns False on timeout. From the completion thread itself (a done
    /// callback calling shutdown) it cannot wait for itself and returns False.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        if self.completion_thread.get() == Some(&std::thread::current().id()) {
            return Ok(false);
        }
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = match deadline {
                Some(deadline) => deadline
                    .saturating_duration_since(Instant::now())
                    .min(SIGNAL_CHECK_INTERVAL),
                None => SIGNAL_CHECK_INTERVAL,
            };
            let finished = &self.finished;
            if py.detach(|| finished.wait(slice)) {
                self.join_threads(py);
                return Ok(true);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
        }
    }

    /// A segment of at least `nbytes` for a task's large buffers, or None:
    /// the pool's cap on shared memory would be passed now, or no segment
    /// could be made. Either way the buffers go through the pipe instead.
    fn lend_segment(&self, nbytes: u64) -> Option<Segment> {
        self.shared.segments.lend(nbytes).ok().map(Segment::new)
    }

    /// Bytes of buffers that went through shared memory (either way).
    fn note_shared_bytes(&self, nbytes: u64) {
        self.shared
            .stats
            .bytes_through_shared_memory
            .fetch_add(nbytes, std::sync::atomic::Ordering::Relaxed);
    }

    fn clear_workers(&self) {
        let _ = self.commands.send(Command::ClearWorkers);
        self.shared.waker.wake();
    }

    /// A failure only the shim sees (a result that cannot be unpickled).
    fn note_failed(&self) {
        Stats::add(&self.shared.stats.tasks_failed);
    }

    /// A task refused before it reached the backlog (its arguments would not
    /// pickle): it was received and it failed.
    fn note_rejected(&self) {
        Stats::add(&self.shared.stats.tasks_received);
        Stats::add(&self.shared.stats.tasks_failed);
    }

    fn statistics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (key, value) in self.shared.stats.snapshot() {
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }
}

impl Pool {
    fn task(
        &self,
        task_id: u64,
        payload: &[u8],
        priority: u64,
        timeout: Option<f64>,
        memory_limit: Option<u64>,
    ) -> PyResult<Task> {
        let timeout = timeout
            .map(Duration::try_from_secs_f64)
            .transpose()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Task {
            id: task_id,
            priority,
            payload: self.shared.buffers.copy_of(payload),
            timeout,
            memory_limit,
            segment: None,
        })
    }

    /// A task is in the backlog: count it and tell the supervisor.
    fn accepted(&self) {
        Stats::add(&self.shared.stats.tasks_received);
        self.shared.waker.wake();
    }

    fn join_threads(&self, py: Python<'_>) {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        py.detach(|| {
            for handle in handles {
                let _ = handle.join();
            }
        });
    }
}

/// "fork": the zygote the shim forked, `(pid, control fd)`, now ours.
fn adopt_zygote((pid, fd): (i32, RawFd)) -> PyResult<Zygote> {
    let control = completion::adopt_fd(fd).map_err(PyValueError::new_err)?;
    Ok(Zygote::adopt(pid, control))
}

/// Runs the supervisor on its own thread. A bug that panics there must not
/// leave futures hanging: the backlog closes (later submits get PoolClosed)
/// and the completion thread, once the last event sender is gone, fails
/// whatever is unresolved. The panic is reported as an event, since this
/// thread never calls into Python, not even to log.
fn start_supervisor(
    supervisor: Supervisor,
    shared: Arc<Shared>,
    panic_report: Sender<Vec<Event>>,
) -> std::io::Result<JoinHandle<()>> {
    thread::spawn("deadpool-supervisor", move || {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| supervisor.run()));
        shared.backlog.close(true);
        if run.is_err() {
            let _ = panic_report.send(vec![Event::Log {
                level: log::Level::Error,
                message: "the deadpool supervisor stopped unexpectedly".into(),
            }]);
        }
    })
}

/// Waits for a reply from the supervisor with the GIL released, checking for
/// signals. `None` if the supervisor is gone.
fn wait_reply<T: Send>(py: Python<'_>, reply: &Receiver<T>) -> PyResult<Option<T>> {
    loop {
        match py.detach(|| reply.recv_timeout(SIGNAL_CHECK_INTERVAL)) {
            Ok(value) => return Ok(Some(value)),
            Err(RecvTimeoutError::Disconnected) => return Ok(None),
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
        }
    }
}

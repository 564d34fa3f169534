//! The Python-facing pool and its completion thread.
//!
//! `Pool` is what `deadpool.Deadpool` drives: it validates nothing (the shim
//! does), it only moves bytes and task ids. Blocking calls release the GIL and
//! wake every 50 ms to let Python deliver signals (Ctrl-C must interrupt a
//! blocked `submit` or `shutdown`). The completion thread is the only place
//! where the pool's background work meets Python: it attaches once per batch of
//! events and hands the whole batch to the shim's dispatcher.

use crate::backlog::{lock, Backlog, PushError, Task};
use crate::buffers::BufferPool;
use crate::events::{Command, Event, Outcome};
use crate::killer::Killer;
use crate::result_buffer::ResultBuffer;
use crate::stats::Stats;
use crate::supervisor::{Settings, Shared, StartMethod, Supervisor};
use crate::waker::Waker;
use crate::zygote::ZygoteLaunch;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// How often a blocked call comes back to Python to check for signals.
const SIGNAL_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// Results at least this large reach Python in their frame buffer, uncopied.
const LEND_RESULTS_FROM: usize = 64 << 10;
/// The most events handed to Python in one call.
const MAX_BATCH: usize = 4096;

// Event kinds as the dispatcher sees them: (kind, task_id, pid, payload).
const STARTED: u8 = 0;
const RETURNED: u8 = 1;
const RAISED: u8 = 2;
const TIMED_OUT: u8 = 3;
const CANCELLED: u8 = 4;
const LOST: u8 = 5;

/// Set by the completion thread when it has delivered its last event.
#[derive(Default)]
struct Finished {
    done: Mutex<bool>,
    signal: Condvar,
}

impl Finished {
    fn set(&self) {
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

/// The Python callables the completion thread calls.
struct Callbacks {
    dispatch: Py<PyAny>,
    make_config: Option<Py<PyAny>>,
    fork_zygote: Option<Py<PyAny>>,
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
    ) -> PyResult<Self> {
        let start_method = parse_start_method(start_method)?;
        let settings = Settings {
            max_workers,
            min_workers,
            max_tasks_per_child,
            max_worker_memory_bytes,
            start_method,
            launch: ZygoteLaunch { argv, preparation },
            static_config,
        };
        let shared = Arc::new(Shared {
            backlog: Backlog::new(max_backlog),
            waker: Waker::new()?,
            stats: Stats::default(),
            buffers: Arc::new(BufferPool::new()),
        });
        let (command_tx, command_rx) = crossbeam_channel::unbounded();
        let (event_tx, event_rx) = crossbeam_channel::unbounded();
        let finished = Arc::new(Finished::default());
        let completion_thread = Arc::new(OnceLock::new());
        let callbacks = Callbacks {
            dispatch,
            make_config,
            fork_zygote,
        };

        let supervisor = Supervisor::new(
            Arc::clone(&shared),
            settings,
            command_rx,
            event_tx,
            Killer::start()?,
        );
        let supervisor_thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("deadpool-supervisor".into())
                .spawn(move || {
                    // A bug that panics here must not leave futures hanging:
                    // the backlog closes (later submits get PoolClosed) and
                    // the completion thread fails whatever is unresolved.
                    let run =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| supervisor.run()));
                    shared.backlog.close(true);
                    if run.is_err() {
                        log::error!("the deadpool supervisor stopped unexpectedly");
                    }
                })?
        };
        let completion = {
            let (commands, shared, finished, thread_id) = (
                command_tx.clone(),
                Arc::clone(&shared),
                Arc::clone(&finished),
                Arc::clone(&completion_thread),
            );
            std::thread::Builder::new()
                .name("deadpool-completion".into())
                .spawn(move || {
                    let _ = thread_id.set(std::thread::current().id());
                    completion_loop(event_rx, commands, &shared, callbacks);
                    finished.set();
                })?
        };
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
    /// pool is closed.
    #[pyo3(signature = (task_id, payload, priority, timeout, respect_bound))]
    fn submit(
        &self,
        py: Python<'_>,
        task_id: u64,
        payload: &[u8],
        priority: u64,
        timeout: Option<f64>,
        respect_bound: bool,
    ) -> PyResult<bool> {
        let timeout = timeout
            .map(Duration::try_from_secs_f64)
            .transpose()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let mut task = Task {
            id: task_id,
            priority,
            payload: self.shared.buffers.copy_of(payload),
            timeout,
        };
        loop {
            match self.shared.backlog.push(task, respect_bound) {
                Ok(()) => {
                    Stats::add(&self.shared.stats.tasks_received);
                    self.shared.waker.wake();
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

    /// 1: removed while pending; 2: it was running and its worker is killed;
    /// 0: not found (already finished, or finishing right now).
    fn cancel(&self, py: Python<'_>, task_id: u64) -> PyResult<u8> {
        if self.shared.backlog.remove(task_id).is_some() {
            return Ok(1);
        }
        let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
        if self
            .commands
            .send(Command::Cancel {
                task_id,
                reply: reply_tx,
            })
            .is_err()
        {
            return Ok(0);
        }
        self.shared.waker.wake();
        let killed = wait_reply(py, &reply_rx)?;
        Ok(if killed == Some(true) { 2 } else { 0 })
    }

    /// Closes the backlog and tells the supervisor to wind down. Returns the ids
    /// of the pending tasks it removed (when `cancel_pending`).
    fn shutdown(&self, cancel_pending: bool, kill_running: bool) -> Vec<u64> {
        let removed = self.shared.backlog.close(cancel_pending);
        let _ = self.commands.send(Command::Shutdown { kill_running });
        self.shared.waker.wake();
        removed
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
    fn join_threads(&self, py: Python<'_>) {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
        py.detach(|| {
            for handle in handles {
                let _ = handle.join();
            }
        });
    }
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

/// Runs on its own thread for the pool's life, attached to the interpreter
/// once: it keeps one thread state and only releases the GIL while it waits.
/// (Attaching afresh per batch builds and tears down a thread state each
/// time, a memory mapping among it, which costs more than the batch itself
/// when results trickle in one by one.) Should the interpreter be finalizing
/// when a batch arrives, PyO3 parks this thread rather than letting CPython
/// end it under Rust frames.
fn completion_loop(
    events: Receiver<Vec<Event>>,
    commands: Sender<Command>,
    shared: &Shared,
    callbacks: Callbacks,
) {
    let ran = Python::try_attach(|py| {
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while let Some(batch) = py.detach(|| next_batch(&events)) {
                if deliver(py, batch, &callbacks, shared, &commands) {
                    shared.waker.wake();
                }
            }
        }));
        if served.is_err() {
            // Nobody would deliver outcomes any more: refuse new tasks, stop
            // the workers, and fail what is waiting (below), not hang it.
            log::error!("the deadpool completion thread failed; closing the pool");
            shared.backlog.close(true);
            let _ = commands.send(Command::Shutdown { kill_running: true });
            shared.waker.wake();
        }
        // Normally nothing is left; after an internal failure, every future
        // still waiting gets an exception instead of hanging.
        if let Err(error) = callbacks.dispatch.call_method0(py, "abandon") {
            error.write_unraisable(py, None);
        }
        drop(callbacks);
    });
    if ran.is_none() {
        // Python references must be released while attached; at interpreter
        // shutdown there is no one to release them to.
        log::debug!("interpreter gone; leaving the pool's callbacks to the OS");
    }
}

/// The next events, as many as are waiting (up to a batch); `None` once the
/// supervisor has finished.
fn next_batch(events: &Receiver<Vec<Event>>) -> Option<Vec<Event>> {
    let mut batch = events.recv().ok()?;
    while batch.len() < MAX_BATCH {
        match events.try_recv() {
            Ok(more) => batch.extend(more),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Hands a batch to Python; true if it sent the supervisor an answer (which
/// then needs waking).
fn deliver(
    py: Python<'_>,
    batch: Vec<Event>,
    callbacks: &Callbacks,
    shared: &Shared,
    commands: &Sender<Command>,
) -> bool {
    let items = PyList::empty(py);
    let mut answered = false;
    let mut started_here = started_and_finished(&batch);
    for event in batch {
        let item = match event {
            Event::Started { task_id, pid } => {
                if let Some(slot) = started_here.get_mut(&task_id) {
                    *slot = pid;
                    continue;
                }
                dispatch_item(py, STARTED, task_id, pid, None)
            }
            Event::Finished { task_id, outcome } => {
                let pid = started_here.remove(&task_id).unwrap_or(0);
                finished_item(py, task_id, pid, outcome, &shared.buffers)
            }
            Event::NeedConfig { worker_id } => {
                let config = call_for_bytes(py, callbacks.make_config.as_ref());
                let _ = commands.send(Command::WorkerConfig { worker_id, config });
                answered = true;
                continue;
            }
            Event::NeedFork {
                worker_id,
                child_end,
            } => {
                let pid = fork_zygote(py, callbacks.fork_zygote.as_ref(), child_end);
                let _ = commands.send(Command::Forked { worker_id, pid });
                answered = true;
                continue;
            }
            Event::Log { level, message } => {
                log::log!(target: "deadpool", level, "{message}");
                continue;
            }
        };
        match item.and_then(|item| items.append(item)) {
            Ok(()) => {}
            Err(error) => error.write_unraisable(py, None),
        }
    }
    if !items.is_empty() {
        if let Err(error) = callbacks.dispatch.call1(py, (items,)) {
            error.write_unraisable(py, Some(callbacks.dispatch.bind(py)));
        }
    }
    answered
}

fn dispatch_item<'py>(
    py: Python<'py>,
    kind: u8,
    task_id: u64,
    pid: i32,
    payload: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let payload = payload.unwrap_or_else(|| py.None().into_bound(py));
    PyTuple::new(
        py,
        [
            kind.into_pyobject(py)?.into_any(),
            task_id.into_pyobject(py)?.into_any(),
            pid.into_pyobject(py)?.into_any(),
            payload,
        ],
    )
}

/// Tasks both started and finished within `batch`: their start is folded
/// into their outcome (one Python call instead of two, and no RUNNING state
/// that nobody could have seen). Maps each to its pid, filled in on the way.
fn started_and_finished(batch: &[Event]) -> HashMap<u64, i32> {
    let finished: HashSet<u64> = batch
        .iter()
        .filter_map(|event| match event {
            Event::Finished { task_id, .. } => Some(*task_id),
            _ => None,
        })
        .collect();
    batch
        .iter()
        .filter_map(|event| match event {
            Event::Started { task_id, .. } if finished.contains(task_id) => Some((*task_id, 0)),
            _ => None,
        })
        .collect()
}

fn finished_item<'py>(
    py: Python<'py>,
    task_id: u64,
    pid: i32,
    outcome: Outcome,
    buffers: &Arc<BufferPool>,
) -> PyResult<Bound<'py, PyTuple>> {
    // A large result is lent to Python in its recycled buffer; a small one is
    // cheaper to copy into bytes than to wrap in a buffer object.
    let frame = |bytes: Vec<u8>| -> PyResult<Bound<'py, PyAny>> {
        if bytes.len() < LEND_RESULTS_FROM {
            return Ok(PyBytes::new(py, &bytes).into_any());
        }
        Ok(Bound::new(py, ResultBuffer::new(bytes, Arc::clone(buffers)))?.into_any())
    };
    let (kind, payload) = match outcome {
        Outcome::Returned(bytes) => (RETURNED, Some(frame(bytes)?)),
        Outcome::Raised(bytes) => (RAISED, Some(frame(bytes)?)),
        Outcome::TimedOut => (TIMED_OUT, None),
        Outcome::Cancelled => (CANCELLED, None),
        Outcome::Lost(message) => (LOST, Some(PyString::new(py, &message).into_any())),
    };
    dispatch_item(py, kind, task_id, pid, payload)
}

fn call_for_bytes(py: Python<'_>, callable: Option<&Py<PyAny>>) -> Result<Vec<u8>, String> {
    let callable = callable.ok_or("no settings factory was given")?;
    let result = callable.call0(py).map_err(|e| e.to_string())?;
    let bytes = result
        .bind(py)
        .cast::<PyBytes>()
        .map_err(|e| e.to_string())?;
    Ok(bytes.as_bytes().to_vec())
}

fn fork_zygote(
    py: Python<'_>,
    callable: Option<&Py<PyAny>>,
    child_end: OwnedFd,
) -> Result<i32, String> {
    let callable = callable.ok_or("no fork function was given")?;
    let result = callable
        .call1(py, (child_end.as_raw_fd(),))
        .map_err(|e| e.to_string())?;
    drop(child_end);
    result.extract::<i32>(py).map_err(|e| e.to_string())
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
        let folded = started_and_finished(&batch);
        assert_eq!(folded.keys().copied().collect::<Vec<_>>(), vec![1]);
    }
}

//! The completion thread: the one place where the pool's background work
//! meets Python. It attaches to the interpreter once, releases the GIL while
//! it waits, and hands each batch of events to the shim's dispatcher as
//! `(kind, task_id, pid, payload)` tuples (kinds: wire/dispatch.rs).

use super::pool::Finished;
use super::segment::Segment;
use crate::os::thread;
use crate::parent::buffers::BufferPool;
use crate::parent::messages::{fold_starts, Command, Death, Event, Notice, Outcome};
use crate::parent::supervisor::Shared;
use crate::wire::dispatch::EventKind;
use crossbeam_channel::{Receiver, Sender};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, ThreadId};

/// The most events handed to Python in one call.
const MAX_BATCH: usize = 4096;

/// The Python callables the completion thread calls.
pub struct Callbacks {
    pub dispatch: Py<PyAny>,
    pub make_config: Option<Py<PyAny>>,
    pub fork_zygote: Option<Py<PyAny>>,
}

pub fn start(
    events: Receiver<Vec<Event>>,
    commands: Sender<Command>,
    shared: Arc<Shared>,
    callbacks: Callbacks,
    finished: Arc<Finished>,
    thread_id: Arc<OnceLock<ThreadId>>,
) -> std::io::Result<JoinHandle<()>> {
    thread::spawn("deadpool-completion", move || {
        let _ = thread_id.set(std::thread::current().id());
        completion_loop(events, commands, &shared, callbacks);
        finished.set();
    })
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
            let _ = commands.send(Command::Shutdown {
                kill_running: true,
                signal: None,
            });
            shared.waker.wake();
        }
        // Normally nothing is left; after an internal failure, every future
        // still waiting gets an exception instead of hanging.
        if let Err(error) = callbacks.dispatch.call_method0(py, "abandon") {
            error.write_unraisable(py, None);
        }
        drop(callbacks);
    });
    // `None`: the interpreter is gone. The callbacks' references are left to
    // the OS (they can only be released while attached), and nothing is
    // logged, since logging would need the interpreter too.
    let _ = ran;
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

/// Hands a batch to Python; true if it answered the supervisor (which then
/// needs waking).
fn deliver(
    py: Python<'_>,
    batch: Vec<Event>,
    callbacks: &Callbacks,
    shared: &Shared,
    commands: &Sender<Command>,
) -> bool {
    let mut answered = false;
    let mut for_dispatcher = Vec::with_capacity(batch.len());
    for event in batch {
        match event {
            Event::NeedConfig { worker_id } => {
                let config = call_for_bytes(py, callbacks.make_config.as_ref());
                let _ = commands.send(Command::WorkerConfig { worker_id, config });
                answered = true;
            }
            Event::NeedFork => {
                let zygote = fork_zygote(py, callbacks.fork_zygote.as_ref());
                let _ = commands.send(Command::Forked { zygote });
                answered = true;
            }
            Event::Log { level, message } => log::log!(target: "deadpool", level, "{message}"),
            Event::Started { .. } | Event::Finished { .. } => for_dispatcher.push(event),
        }
    }
    dispatch(py, fold_starts(for_dispatcher), callbacks, &shared.buffers);
    answered
}

/// One call of the shim's dispatcher for the whole batch.
fn dispatch(
    py: Python<'_>,
    notices: Vec<Notice>,
    callbacks: &Callbacks,
    buffers: &Arc<BufferPool>,
) {
    if notices.is_empty() {
        return;
    }
    let items = PyList::empty(py);
    for notice in notices {
        if let Err(error) = notice_item(py, notice, buffers).and_then(|item| items.append(item)) {
            error.write_unraisable(py, None);
        }
    }
    if let Err(error) = callbacks.dispatch.call1(py, (items,)) {
        error.write_unraisable(py, Some(callbacks.dispatch.bind(py)));
    }
}

/// The dispatcher's `(kind, task_id, pid, payload)` tuple. A start carries
/// the worker's pid; an outcome carries it only when its start was folded in
/// (else None).
pub fn notice_item<'py>(
    py: Python<'py>,
    notice: Notice,
    buffers: &Arc<BufferPool>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (kind, task_id, pid, payload) = match notice {
        Notice::Started { task_id, pid } => (EventKind::Started, task_id, Some(pid), None),
        Notice::Finished {
            task_id,
            started_on,
            outcome,
        } => {
            let (kind, payload) = outcome_payload(py, outcome, buffers)?;
            (kind, task_id, started_on, payload)
        }
    };
    let payload = payload.unwrap_or_else(|| py.None().into_bound(py));
    PyTuple::new(
        py,
        [
            (kind as u8).into_pyobject(py)?.into_any(),
            task_id.into_pyobject(py)?.into_any(),
            pid.into_pyobject(py)?.into_any(),
            payload,
        ],
    )
}

fn outcome_payload<'py>(
    py: Python<'py>,
    outcome: Outcome,
    buffers: &Arc<BufferPool>,
) -> PyResult<(EventKind, Option<Bound<'py, PyAny>>)> {
    // One copy into bytes, made while the GIL is held anyway; the frame's
    // buffer goes straight back to the pool for the next large frame. (Lending
    // the buffer itself needs the buffer protocol, which the limited API of the
    // one abi3 wheel for every Python from 3.10 lacks.)
    let frame = |bytes: Vec<u8>| -> Bound<'py, PyAny> {
        let object = PyBytes::new(py, &bytes).into_any();
        buffers.give(bytes);
        object
    };
    Ok(match outcome {
        Outcome::Returned(bytes) => (EventKind::Returned, Some(frame(bytes))),
        Outcome::ReturnedShared(bytes, lease) => {
            let segment = Bound::new(py, Segment::new(lease))?.into_any();
            let payload = (frame(bytes), segment).into_pyobject(py)?.into_any();
            (EventKind::Returned, Some(payload))
        }
        Outcome::Raised(bytes) => (EventKind::Raised, Some(frame(bytes))),
        Outcome::OverMemory(bytes, limit) => {
            let payload = (frame(bytes), limit).into_pyobject(py)?.into_any();
            (EventKind::OverMemory, Some(payload))
        }
        Outcome::TimedOut(death) => (EventKind::TimedOut, Some(death_payload(py, death)?)),
        Outcome::Cancelled => (EventKind::Cancelled, None),
        Outcome::Lost(death) => (EventKind::Lost, Some(death_payload(py, death)?)),
    })
}

/// `(message, reason, pid, exitcode, max_rss, memory_used, memory_limit)`,
/// each unknown figure None (a pid of 0 is unknown).
fn death_payload<'py>(py: Python<'py>, death: Death) -> PyResult<Bound<'py, PyAny>> {
    let pid = (death.pid > 0).then_some(death.pid);
    let (used, limit) = death.memory.unzip();
    let fields = [
        PyString::new(py, &death.message).into_any(),
        PyString::new(py, death.reason.name()).into_any(),
        pid.into_pyobject(py)?.into_any(),
        death.exitcode.into_pyobject(py)?.into_any(),
        death.max_rss.into_pyobject(py)?.into_any(),
        used.into_pyobject(py)?.into_any(),
        limit.into_pyobject(py)?.into_any(),
    ];
    Ok(PyTuple::new(py, fields)?.into_any())
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

/// Calls the shim's fork function: `(pid, control fd)` of a new zygote,
/// whose control socket is ours from now on.
fn fork_zygote(py: Python<'_>, callable: Option<&Py<PyAny>>) -> Result<(i32, OwnedFd), String> {
    let callable = callable.ok_or("no fork function was given")?;
    let result = callable.call0(py).map_err(|e| e.to_string())?;
    let (pid, fd) = result
        .extract::<(i32, RawFd)>(py)
        .map_err(|e| e.to_string())?;
    Ok((pid, adopt_fd(fd)?))
}

/// A descriptor Python handed over (`socket.detach()`): ours to close.
pub fn adopt_fd(fd: RawFd) -> Result<OwnedFd, String> {
    if fd < 0 {
        return Err(format!("not a descriptor: {fd}"));
    }
    // SAFETY: the caller detached it from its socket object, so nothing
    // else owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

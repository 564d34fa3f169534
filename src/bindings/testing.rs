//! `deadpool._core._testing`: hooks for the test suite, fenced off from the
//! module's public names. Each wire function runs the parent's own encoder
//! or decoder, so tests/test_wire.py can check that what one language writes
//! the other reads as the same kind.

use super::completion::notice_item;
use crate::os::process_tree;
use crate::parent::buffers::BufferPool;
use crate::parent::messages::{Death, Notice, Outcome, Reason};
use crate::parent::zygote_client;
use crate::wire::frame::{FrameReader, PendingWrite, ReadOutcome, Tag};
use crate::wire::request;
use crate::wire::status::StatusDecoder;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use std::os::fd::BorrowedFd;
use std::sync::Arc;

/// Live descendants of `pid`.
#[pyfunction]
pub fn descendants(pid: i32) -> Vec<i32> {
    process_tree::descendants(pid)
}

/// The pid of this process's shared zygote, if one is running.
#[pyfunction]
pub fn shared_zygote_pid() -> Option<i32> {
    zygote_client::shared_zygote_pid()
}

/// Frames as the supervisor writes them to a worker.
#[pyfunction]
pub fn encode_frame(py: Python<'_>, tag: u8, task_id: u64, body: Vec<u8>) -> PyResult<Py<PyBytes>> {
    let tag = Tag::from_value(tag).ok_or_else(|| PyValueError::new_err("unknown tag"))?;
    let mut wire = Vec::new();
    PendingWrite::new(tag, task_id, body).write_to(&mut wire)?;
    Ok(PyBytes::new(py, &wire).unbind())
}

/// Frames as the supervisor reads them from a worker: `(tag, task_id, body)`.
#[pyfunction]
pub fn decode_frames(py: Python<'_>, data: Vec<u8>) -> PyResult<Vec<(u8, u64, Py<PyBytes>)>> {
    let mut reader = FrameReader::default();
    let mut source = std::io::Cursor::new(data);
    let mut frames = Vec::new();
    loop {
        match reader.read_from(&mut source)? {
            ReadOutcome::Frame(frame) => {
                let body = PyBytes::new(py, &frame.body).unbind();
                frames.push((frame.tag as u8, frame.id, body));
            }
            ReadOutcome::Eof { mid_frame: false } => return Ok(frames),
            other => return Err(PyValueError::new_err(format!("{other:?}"))),
        }
    }
}

/// Status records as the supervisor reads them: `(kind, value)`.
#[pyfunction]
pub fn decode_status(data: Vec<u8>) -> Vec<(u32, i32)> {
    let mut decoder = StatusDecoder::default();
    decoder.feed(&data);
    std::iter::from_fn(|| decoder.next_record())
        .map(|(kind, value)| (kind as u32, value))
        .collect()
}

/// Sends a worker request on `fd` as the pool asks its zygote for a worker
/// (the parent's ends of the new pipes are closed again).
#[pyfunction]
pub fn send_worker_request(fd: i32) -> PyResult<()> {
    if fd < 0 {
        return Err(PyValueError::new_err("fd must be non-negative"));
    }
    // SAFETY: the caller keeps the descriptor open for this call.
    let control = unsafe { BorrowedFd::borrow_raw(fd) };
    drop(zygote_client::request_worker(control)?);
    Ok(())
}

/// Sends the message that lets the zygote's spare go, as the last pool does.
#[pyfunction]
pub fn send_release_spare(fd: i32) -> PyResult<()> {
    if fd < 0 {
        return Err(PyValueError::new_err("fd must be non-negative"));
    }
    // SAFETY: the caller keeps the descriptor open for this call.
    Ok(request::send_release_spare(unsafe {
        BorrowedFd::borrow_raw(fd)
    })?)
}

/// The preparation data as the pool sends it to a new zygote.
#[pyfunction]
pub fn encode_preparation(py: Python<'_>, data: Vec<u8>) -> PyResult<Py<PyBytes>> {
    let mut wire = Vec::new();
    request::write_preparation(&mut wire, &data)?;
    Ok(PyBytes::new(py, &wire).unbind())
}

/// One dispatcher tuple of every kind, for task ids 0 to 6, as the
/// completion thread builds them: started on pid 4242, returned `returned`,
/// raised `raised`, timed out, cancelled, lost with `lost` (killed by
/// SIGKILL, peak RSS 50 MiB), and raised `raised` over a 32 MiB limit.
#[pyfunction]
pub fn one_notice_of_each_kind<'py>(
    py: Python<'py>,
    returned: Vec<u8>,
    raised: Vec<u8>,
    lost: String,
) -> PyResult<Vec<Bound<'py, PyTuple>>> {
    let buffers = Arc::new(BufferPool::new());
    let finished = |task_id, outcome| Notice::Finished {
        task_id,
        started_on: None,
        outcome,
    };
    let death = |reason, message: String| Death {
        reason,
        pid: 4242,
        exitcode: Some(-9),
        max_rss: Some(50 << 20),
        ..Death::lost(message)
    };
    let timed_out = death(Reason::Timeout, "the task timed out".into());
    let notices = vec![
        Notice::Started {
            task_id: 0,
            pid: 4242,
        },
        finished(1, Outcome::Returned(returned)),
        finished(2, Outcome::Raised(raised.clone())),
        finished(3, Outcome::TimedOut(timed_out)),
        finished(4, Outcome::Cancelled),
        finished(5, Outcome::Lost(death(Reason::Killed, lost))),
        finished(6, Outcome::OverMemory(raised, 32 << 20)),
    ];
    notices
        .into_iter()
        .map(|notice| notice_item(py, notice, &buffers))
        .collect()
}

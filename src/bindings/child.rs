//! What zygote and worker processes call (python/deadpool/_zygote.py and
//! _worker.py). Descriptors arrive as numbers owned by the Python caller for
//! the length of the call; blocking calls release the GIL.

use crate::child::{frame_io, setup};
use crate::os::{memory, process_tree};
use crate::wire::frame::Tag;
use crate::wire::request;
use crate::wire::status::StatusKind;
use nix::errno::Errno;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// An I/O error as Python raises its own: `OSError(errno, strerror)`, which
/// Python turns into the matching subclass (`BrokenPipeError`, ...) with
/// `errno` set. (PyO3's own conversion picks the subclass but leaves `errno`
/// unset.) Errors without an errno, such as a stream that ended mid-frame,
/// go through PyO3's conversion.
pub(crate) fn os_error(error: io::Error) -> PyErr {
    match error.raw_os_error() {
        Some(code) => PyOSError::new_err((code, Errno::from_raw(code).desc())),
        None => error.into(),
    }
}

/// A descriptor number from Python, for the duration of one call. A
/// negative one is refused here: a `BorrowedFd` must never hold -1.
pub(crate) fn borrow(fd: RawFd) -> PyResult<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "fd must be a non-negative file descriptor, not {fd}"
        )));
    }
    // SAFETY: non-negative, and the Python caller keeps it open for the
    // call, which is as long as the borrow is used (it never escapes).
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Blocks (without the GIL) for the next frame from the pool. Returns
/// `(tag, task_id, body)`, or None when the pool closed the pipe between
/// frames; a pipe closed inside a frame raises.
#[pyfunction]
pub fn read_frame(py: Python<'_>, fd: RawFd) -> PyResult<Option<(u8, u64, Py<PyBytes>)>> {
    let fd = borrow(fd)?;
    let Some((tag, id, len)) = py.detach(|| frame_io::read_header(fd)).map_err(os_error)? else {
        return Ok(None);
    };
    let body = PyBytes::new_with(py, len, |buf| {
        py.detach(|| frame_io::read_body(fd, buf))
            .map_err(os_error)?;
        Ok(())
    })?;
    Ok(Some((tag as u8, id, body.unbind())))
}

/// Writes one frame, blocking without the GIL. The body is written straight
/// from the bytes object, uncopied.
#[pyfunction]
pub fn write_frame(py: Python<'_>, fd: RawFd, tag: u8, task_id: u64, body: &[u8]) -> PyResult<()> {
    let fd = borrow(fd)?;
    let tag = Tag::from_value(tag)
        .ok_or_else(|| PyValueError::new_err(format!("unknown frame tag {tag}")))?;
    py.detach(|| frame_io::write_frame(fd, tag, task_id, body))
        .map_err(os_error)?;
    Ok(())
}

/// The zygote reports on a worker: `STATUS_PID` or `STATUS_EXIT`.
#[pyfunction]
pub fn write_status(fd: RawFd, kind: u32, value: i32) -> PyResult<()> {
    let fd = borrow(fd)?;
    let kind = StatusKind::from_value(kind)
        .ok_or_else(|| PyValueError::new_err(format!("unknown status kind {kind}")))?;
    frame_io::write_status(fd, kind, value).map_err(os_error)
}

/// The zygote's first read: the preparation data, or None if the pool went
/// away before sending all of it.
#[pyfunction]
pub fn read_preparation(py: Python<'_>, fd: RawFd) -> PyResult<Option<Py<PyBytes>>> {
    let fd = borrow(fd)?;
    let data = py
        .detach(|| request::read_preparation(&mut frame_io::FdReader(fd)))
        .map_err(os_error)?;
    Ok(data.map(|data| PyBytes::new(py, &data).unbind()))
}

/// Called by a worker right after the zygote forked it.
#[pyfunction]
pub fn become_worker() -> PyResult<()> {
    setup::become_worker().map_err(os_error)
}

/// Called by an exec'd zygote before it serves.
#[pyfunction]
pub fn become_zygote() -> PyResult<()> {
    setup::become_zygote().map_err(os_error)
}

/// SIGKILLs `pid`, its process group and every descendant.
#[pyfunction]
pub fn kill_tree(pid: i32) {
    process_tree::kill_tree(pid);
}

/// SIGKILLs every descendant of `pid` (not `pid` itself); returns how many.
#[pyfunction]
pub fn kill_descendants(pid: i32) -> usize {
    process_tree::kill_descendants(pid)
}

/// Worker start-up: let large payload buffers be reused (see os/memory.rs).
#[pyfunction]
pub fn tune_allocator_for_worker() {
    memory::tune_for_worker();
}

/// Resident set size of `pid` in bytes, None if it is gone.
#[pyfunction]
pub fn rss_bytes(pid: i32) -> Option<u64> {
    process_tree::rss_bytes(pid)
}

/// This process's name (`/proc/<pid>/comm`), for a spare to restore.
#[pyfunction]
pub fn process_name() -> PyResult<String> {
    setup::process_name().map_err(os_error)
}

/// Renames this process as `ps` shows it (a spare names itself).
#[pyfunction]
pub fn set_process_name(name: &str) -> PyResult<()> {
    setup::set_process_name(name).map_err(os_error)
}

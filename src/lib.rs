//! deadpool's native core. `pool` and this file are the only ones that know
//! about Python; everything else is plain Rust with its own tests.

mod backlog;
mod buffers;
mod deadline;
mod events;
mod exit_status;
mod fork_reset;
mod killer;
mod memory;
mod pool;
mod process_tree;
mod protocol;
mod result_buffer;
mod stats;
mod supervisor;
mod waker;
mod worker_process;
mod zygote;

use pyo3::prelude::*;

#[pymodule]
mod _core {
    use super::*;
    use pyo3::exceptions::{PyOSError, PyValueError};
    use pyo3::types::PyBytes;

    #[pymodule_export]
    use crate::pool::Pool;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // A second import (e.g. in a subinterpreter) finds the logger already set.
        let _ = pyo3_log::try_init();
        // Compiled in from Cargo.toml (maturin's version source): reading the
        // installed metadata instead would cost every worker start ~40 ms.
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }

    /// Worker side: blocks (without the GIL) for the next frame from the pool.
    /// Returns `(tag, task_id, body)`, or None when the pool closed the pipe.
    #[pyfunction]
    fn read_frame(py: Python<'_>, fd: i32) -> PyResult<Option<(u8, u64, Py<PyBytes>)>> {
        let Some((tag, id, len)) = py.detach(|| worker_process::read_header(fd))? else {
            return Ok(None);
        };
        let body = PyBytes::new_with(py, len, |buf| {
            py.detach(|| worker_process::read_exact(fd, buf))?;
            Ok(())
        })?;
        Ok(Some((tag as u8, id, body.unbind())))
    }

    /// Worker side: writes one frame, blocking without the GIL. The body is
    /// written straight from the bytes object, uncopied.
    #[pyfunction]
    fn write_frame(py: Python<'_>, fd: i32, tag: u8, task_id: u64, body: &[u8]) -> PyResult<()> {
        let tag = protocol::Tag::from_byte(tag)
            .ok_or_else(|| PyValueError::new_err("unknown frame tag"))?;
        py.detach(|| worker_process::write_frame(fd, tag, task_id, body))?;
        Ok(())
    }

    /// Called by a worker right after the zygote forked it.
    #[pyfunction]
    fn become_worker(zygote_pid: i32, die_with_zygote: bool) -> PyResult<()> {
        worker_process::become_worker(zygote_pid, die_with_zygote)
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Called by an exec'd zygote: orphans of its workers become its children,
    /// so it can reap them and kill them when its lifeline goes.
    #[pyfunction]
    fn become_zygote() -> PyResult<()> {
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// SIGKILLs `pid`, its process group and every descendant.
    #[pyfunction]
    fn kill_tree(pid: i32) {
        process_tree::kill_tree(pid);
    }

    /// Called by a zygote forked from the parent ("fork" start method).
    #[pyfunction]
    fn become_forked_zygote(parent_pid: i32) -> PyResult<()> {
        worker_process::become_forked_zygote(parent_pid)
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Worker start-up: let large payload buffers be reused (see memory.rs).
    #[pyfunction]
    fn tune_allocator_for_worker() {
        memory::tune_for_worker();
    }

    /// Returns freed heap memory to the OS (glibc `malloc_trim(0)`).
    #[pyfunction]
    fn malloc_trim() -> bool {
        memory::trim()
    }

    /// Resident set size of `pid` in bytes, None if it is gone.
    #[pyfunction]
    fn rss_bytes(pid: i32) -> Option<u64> {
        process_tree::rss_bytes(pid)
    }

    /// SIGKILLs every descendant of `pid` (not `pid` itself); returns how many.
    #[pyfunction]
    fn kill_descendants(pid: i32) -> usize {
        process_tree::kill_descendants(pid)
    }

    /// Live descendants of `pid`.
    #[pyfunction]
    fn descendants(pid: i32) -> Vec<i32> {
        process_tree::descendants(pid)
    }

    /// This process's name (`/proc/<pid>/comm`), for a spare to restore.
    #[pyfunction]
    fn process_name() -> PyResult<String> {
        worker_process::process_name().map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Renames this process as `ps` shows it (a spare names itself).
    #[pyfunction]
    fn set_process_name(name: &str) -> PyResult<()> {
        worker_process::set_process_name(name).map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// The pid of this process's shared zygote, if one is running.
    #[pyfunction]
    fn shared_zygote_pid() -> Option<i32> {
        zygote::shared_zygote_pid()
    }

    /// In the child of an `os.fork()`: let go of the parent's zygote.
    #[pyfunction]
    fn forget_zygote_after_fork() {
        zygote::forget_shared_after_fork();
    }
}

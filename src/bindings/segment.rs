//! Shared-memory segments as Python sees them (python/deadpool/_payload.py):
//! `Segment`, one of the pool's segments on loan (parent/segments.rs), and the
//! calls that fill Python objects from a segment and pass segments between a
//! worker and its pool. `bytes` and `bytearray` are copied in here; any other
//! buffer (a numpy array's) Python writes itself, with `os.pwrite`: reading
//! an arbitrary buffer from Rust needs the buffer protocol, which the
//! limited API of Python 3.10 lacks.

use super::child::{borrow, os_error};
use crate::os::fd_passing;
use crate::os::segment::{advise_huge_pages, read_exact_at_uninit};
use crate::os::sync::lock;
use crate::parent::segments::Lease;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::sync::Mutex;

/// A segment lent to one task. `submit` takes it over; dropped or released
/// before that, it goes back to the pool.
#[pyclass(frozen, module = "deadpool._core")]
pub struct Segment {
    lease: Mutex<Option<Lease>>,
}

impl Segment {
    pub fn new(lease: Lease) -> Segment {
        Segment {
            lease: Mutex::new(Some(lease)),
        }
    }

    /// For a task that takes the segment with it.
    pub fn take(&self) -> Option<Lease> {
        lock(&self.lease).take()
    }

    /// A task refused for now (a full backlog) leaves its segment here.
    pub fn put_back(&self, lease: Lease) {
        *lock(&self.lease) = Some(lease);
    }
}

#[pymethods]
impl Segment {
    /// Its descriptor, valid while the segment is held here.
    #[getter]
    fn fd(&self) -> PyResult<RawFd> {
        lock(&self.lease)
            .as_ref()
            .and_then(Lease::segment)
            .map(|segment| segment.fd().as_raw_fd())
            .ok_or_else(|| PyValueError::new_err("the segment was released"))
    }

    /// Gives it back to the pool now rather than when it is collected.
    fn release(&self) {
        drop(self.take());
    }

    /// Copies all of `data`, a `bytes` or `bytearray`, into the segment at
    /// `offset` through the parent's mapping of it. A `bytes` is copied
    /// without the GIL; a `bytearray` with it, since another thread could
    /// resize it meanwhile.
    fn write(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(bytes) = data.cast::<PyBytes>() {
            let data = bytes.as_bytes();
            return py
                .detach(|| self.with_segment(|s| s.copy_in(offset, data)))
                .map_err(os_error);
        }
        let bytearray = data.cast::<PyByteArray>()?;
        // SAFETY: the GIL is held for the whole copy, so no Python code can
        // resize or free the bytearray's buffer meanwhile.
        let data = unsafe { bytearray.as_bytes() };
        self.with_segment(|s| s.copy_in(offset, data))
            .map_err(os_error)
    }

    /// A new `bytes` (or, `writable`, `bytearray`) holding `length` bytes of
    /// the segment from `offset`, copied through the mapping without the GIL.
    fn read(
        &self,
        py: Python<'_>,
        offset: u64,
        length: usize,
        writable: bool,
    ) -> PyResult<Py<PyAny>> {
        fill_new_buffer(py, length, writable, |buf| {
            self.with_segment(|s| s.copy_out(offset, buf))
        })
    }
}

impl Segment {
    /// Runs `act` on the segment, under its lock (never held while calling
    /// Python).
    fn with_segment<T>(
        &self,
        act: impl FnOnce(&mut crate::os::segment::Segment) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut lease = lock(&self.lease);
        let segment = lease
            .as_mut()
            .and_then(Lease::segment_mut)
            .ok_or_else(|| std::io::Error::other("the segment was released"))?;
        act(segment)
    }
}

/// A new `bytes` (or, `writable`, `bytearray`) holding `length` bytes of the
/// segment `fd` from `offset`: the one copy a worker makes, straight from
/// the segment into the object's memory, without the GIL.
#[pyfunction]
pub fn read_segment(
    py: Python<'_>,
    fd: RawFd,
    offset: u64,
    length: usize,
    writable: bool,
) -> PyResult<Py<PyAny>> {
    let fd = borrow(fd)?;
    fill_new_buffer(py, length, writable, |buf| {
        read_exact_at_uninit(fd, offset, buf)
    })
}

/// A new `bytes` or `bytearray` of `length` bytes, filled by `fill` without
/// the GIL (large ones on huge pages: see os/segment.rs).
fn fill_new_buffer<F>(py: Python<'_>, length: usize, writable: bool, fill: F) -> PyResult<Py<PyAny>>
where
    F: FnOnce(&mut [MaybeUninit<u8>]) -> std::io::Result<()> + Send,
{
    let size = isize::try_from(length)
        .map_err(|_| PyValueError::new_err(format!("a buffer of {length} bytes is too large")))?;
    // SAFETY: both calls with a null source allocate an object of `size`
    // bytes, contents unset; a null result is an error, raised here.
    let raw = unsafe {
        if writable {
            pyo3::ffi::PyByteArray_FromStringAndSize(std::ptr::null(), size)
        } else {
            pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size)
        }
    };
    // SAFETY: `raw` is a new reference or null (the error set).
    let object = unsafe { Bound::from_owned_ptr_or_err(py, raw)? };
    // SAFETY: `object` is the exact type asked for; its buffer holds `length`
    // bytes (plus a terminator) and lives as long as `object`.
    let data = unsafe {
        if writable {
            pyo3::ffi::PyByteArray_AsString(object.as_ptr())
        } else {
            pyo3::ffi::PyBytes_AsString(object.as_ptr())
        }
    };
    if data.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: nobody else can reach the object yet, so this is the only view
    // of its buffer while it is filled; `MaybeUninit` because it is unset.
    let buf = unsafe { std::slice::from_raw_parts_mut(data.cast::<MaybeUninit<u8>>(), length) };
    advise_huge_pages(buf);
    py.detach(|| fill(buf)).map_err(os_error)?;
    Ok(object.unbind())
}

/// A worker sends the segment `fd` holding task `task_id`'s result.
#[pyfunction]
pub fn send_segment(socket: RawFd, task_id: u64, fd: RawFd) -> PyResult<()> {
    fd_passing::send_fd(borrow(socket)?, task_id, borrow(fd)?).map_err(os_error)
}

/// A worker receives the segment of task `task_id`, blocking without the
/// GIL: a descriptor the caller then owns.
#[pyfunction]
pub fn receive_segment(py: Python<'_>, socket: RawFd, task_id: u64) -> PyResult<RawFd> {
    let socket = borrow(socket)?;
    match py.detach(|| fd_passing::recv_fd(socket, true)) {
        Ok(Some((id, fd))) if id == task_id => Ok(fd.into_raw_fd()),
        Ok(Some((id, _))) => Err(PyOSError::new_err(format!(
            "the segment of task {id} came for task {task_id}"
        ))),
        Ok(None) => Err(PyOSError::new_err("the pool closed the segment socket")),
        Err(error) => Err(os_error(error)),
    }
}

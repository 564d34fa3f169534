//! Shared-memory segments as Python sees them (python/deadpool/_payload.py):
//! `Segment`, one of the pool's segments on loan (parent/segments.rs), and the
//! calls that fill Python objects from a segment and pass segments between a
//! worker and its pool.

use super::child::{borrow, os_error};
use crate::os::fd_passing;
use crate::os::segment::{advise_huge_pages, read_exact_at_uninit};
use crate::os::sync::lock;
use crate::parent::segments::Lease;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use std::ffi::{c_char, c_int, c_void};
use std::mem::MaybeUninit;
use std::os::fd::{IntoRawFd, RawFd};
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
    /// Gives it back to the pool now rather than when it is collected.
    fn release(&self) {
        drop(self.take());
    }

    /// Copies all of `data`, any contiguous buffer (`bytes`, a numpy
    /// array's `PickleBuffer`...), into the segment at `offset` through the
    /// parent's mapping of it, without the GIL: the export held meanwhile
    /// keeps the buffer where it is (a `bytearray` refuses to resize).
    fn write(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let export = Export::contiguous(data)?;
        let (address, len) = (export.address(), export.len());
        py.detach(|| {
            // SAFETY: `export` keeps these `len` bytes alive and in place
            // until it is dropped, after this closure returns.
            let bytes = unsafe { std::slice::from_raw_parts(address as *const u8, len) };
            self.with_segment(|s| s.copy_in(offset, bytes))
        })
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

/// `Py_buffer`, as every CPython from 3.3 lays it out (frozen in the stable
/// ABI since 3.11). PyO3 declares it only for builds that need 3.11, and
/// this wheel serves 3.10 too.
#[repr(C)]
struct RawBuffer {
    buf: *mut c_void,
    obj: *mut pyo3::ffi::PyObject,
    len: isize,
    itemsize: isize,
    readonly: c_int,
    ndim: c_int,
    format: *mut c_char,
    shape: *mut isize,
    strides: *mut isize,
    suboffsets: *mut isize,
    internal: *mut c_void,
}

extern "C" {
    // Exported by every CPython 3; in the stable ABI since 3.11.
    fn PyObject_GetBuffer(
        obj: *mut pyo3::ffi::PyObject,
        view: *mut RawBuffer,
        flags: c_int,
    ) -> c_int;
    fn PyBuffer_Release(view: *mut RawBuffer);
}

/// `PyBUF_SIMPLE`: one contiguous run of bytes, or an error.
const BUFFER_SIMPLE: c_int = 0;

/// A buffer exported by a Python object, released (with the GIL) on drop.
struct Export<'py> {
    view: RawBuffer,
    _py: Python<'py>,
}

impl<'py> Export<'py> {
    fn contiguous(object: &Bound<'py, PyAny>) -> PyResult<Export<'py>> {
        // SAFETY: all-zero is a valid (empty) Py_buffer for GetBuffer to fill.
        let mut view: RawBuffer = unsafe { std::mem::zeroed() };
        // SAFETY: a live object and a Py_buffer to fill, with the GIL held.
        if unsafe { PyObject_GetBuffer(object.as_ptr(), &mut view, BUFFER_SIMPLE) } != 0 {
            return Err(PyErr::fetch(object.py()));
        }
        Ok(Export {
            view,
            _py: object.py(),
        })
    }

    fn address(&self) -> usize {
        self.view.buf as usize
    }

    fn len(&self) -> usize {
        usize::try_from(self.view.len).unwrap_or(0)
    }
}

impl Drop for Export<'_> {
    fn drop(&mut self) {
        // SAFETY: a view GetBuffer filled, released once, with the GIL held
        // (the `Python` token says so).
        unsafe { PyBuffer_Release(&mut self.view) };
    }
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

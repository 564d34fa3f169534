//! A result frame handed to Python without copying it into a `bytes` object.
//!
//! `pickle.loads` accepts any bytes-like object, so the completion thread
//! passes the frame body as a read-only buffer; when Python lets go of it, the
//! memory goes back to the pool for the next large frame.

use crate::parent::buffers::BufferPool;
use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::os::raw::c_int;
use std::sync::Arc;

#[pyclass(frozen, module = "deadpool._core")]
pub struct ResultBuffer {
    data: Vec<u8>,
    buffers: Arc<BufferPool>,
}

impl ResultBuffer {
    pub fn new(data: Vec<u8>, buffers: Arc<BufferPool>) -> Self {
        ResultBuffer { data, buffers }
    }
}

#[pymethods]
impl ResultBuffer {
    /// Read-only, contiguous bytes: the buffer protocol's simplest form.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("a buffer view is needed"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("a result buffer is read-only"));
        }
        let data = &slf.get().data;
        let len = ffi::Py_ssize_t::try_from(data.len())
            .map_err(|_| PyBufferError::new_err("buffer too large"))?;
        // SAFETY: `view` is the caller's valid Py_buffer; FillInfo takes a new
        // reference to `slf`, which keeps `data` (never mutated) alive and in
        // place for as long as the view exists.
        let status = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                data.as_ptr() as *mut std::os::raw::c_void,
                len,
                1,
                flags,
            )
        };
        if status == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

impl Drop for ResultBuffer {
    fn drop(&mut self) {
        self.buffers.give(std::mem::take(&mut self.data));
    }
}

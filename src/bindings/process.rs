//! Process-wide calls of the user's process (and of workers, for trimming).

use crate::os::memory;
use crate::parent::zygote_client;
use pyo3::prelude::*;

/// Returns freed heap memory to the OS (glibc `malloc_trim(0)`).
#[pyfunction]
pub fn malloc_trim() -> bool {
    memory::trim()
}

/// In the child of an `os.fork()`: let go of the parent's zygote.
#[pyfunction]
pub fn forget_zygote_after_fork() {
    zygote_client::forget_shared_after_fork();
}

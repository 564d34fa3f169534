//! deadpool's native core, `deadpool._core`. This file only declares the
//! module; the tree below shows who runs what:
//!
//! - `bindings/`: the edge, the only code that imports pyo3.
//! - `parent/`: the pool's threads in the user's process (backlog,
//!   supervisor, zygote client, killer), plain Rust.
//! - `child/`: what zygotes and workers do to themselves, and their frame I/O.
//! - `wire/`: every byte layout and code shared across processes or languages.
//! - `os/`: process trees, exit statuses, the allocator, locks.

#[macro_use]
mod wire;
mod bindings;
mod child;
mod os;
mod parent;

use pyo3::prelude::*;

#[pymodule]
mod _core {
    use super::*;

    #[pymodule_export]
    use crate::bindings::pool::Pool;
    #[pymodule_export]
    use crate::bindings::room_signal::RoomSignal;
    #[pymodule_export]
    use crate::bindings::segment::{read_segment, receive_segment, send_segment, Segment};

    #[pymodule_export]
    use crate::bindings::child::{
        become_worker, become_zygote, kill_descendants, kill_tree, process_name, read_frame,
        read_preparation, rss_bytes, set_process_name, tune_allocator_for_worker, write_frame,
        write_status,
    };
    #[pymodule_export]
    use crate::bindings::process::{forget_zygote_after_fork, malloc_trim};

    #[pymodule]
    mod _testing {
        #[pymodule_export]
        use crate::bindings::testing::{
            decode_frames, decode_status, descendants, encode_frame, encode_preparation,
            one_notice_of_each_kind, send_release_spare, send_worker_request, shared_zygote_pid,
        };
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // A second import (e.g. in a subinterpreter) finds the logger already set.
        let _ = pyo3_log::try_init();
        // Compiled in from Cargo.toml (maturin's version source): reading the
        // installed metadata instead would cost every worker start ~40 ms.
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        crate::bindings::wire::export(m)
    }
}

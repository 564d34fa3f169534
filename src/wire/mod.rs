//! The wire: every byte layout and code that crosses a process or language
//! boundary, defined once. The bindings export each constant to Python
//! (`deadpool._core.TAG_OK`, `STATUS_PID`, `WORKER_REQUEST`, `EVENT_LOST`,
//! `CANCEL_KILLED_RUNNING`, ...) and the Python side imports them instead of
//! keeping copies; tests/test_wire.py sends every kind across.
//!
//! - [`frame`]: pool <-> worker frames on the private task and result pipes.
//! - [`status`]: zygote -> pool records on a worker's status pipe.
//! - [`request`]: pool -> zygote messages on the control socket.
//! - [`dispatch`]: core -> shim event kinds, and the answers of a cancel.

pub mod dispatch;
pub mod frame;
pub mod request;
pub mod status;

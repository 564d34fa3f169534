//! The edge: the only files that import pyo3. Everything they call is plain
//! Rust under parent/, child/, wire/ and os/.
//!
//! - `pool.rs`: `Pool`, driven by `deadpool.Deadpool` on the caller's threads.
//! - `completion.rs`: the completion thread, where outcomes meet Python.
//! - `room_signal.rs`: the descriptor an event loop polls for backlog room.
//! - `segment.rs`: shared-memory segments, and moving buffers through them.
//! - `child.rs`: what zygote and worker processes call.
//! - `process.rs`: process-wide calls of the user's process.
//! - `wire.rs`: the wire constants, exported to Python.
//! - `testing.rs`: `deadpool._core._testing`, for the test suite only.

pub mod child;
pub mod completion;
pub mod pool;
pub mod process;
pub mod room_signal;
pub mod segment;
pub mod testing;
pub mod wire;

//! Code that runs in the user's process, on the pool's own threads: plain
//! Rust, no Python. The supervisor owns the workers; the rest are the parts
//! it and the bindings share.

pub mod backlog;
pub mod buffers;
pub mod deadline;
pub mod killer;
pub mod messages;
pub mod room;
pub mod segments;
pub mod stats;
pub mod supervisor;
pub mod waker;
pub mod zygote_client;

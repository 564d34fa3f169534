//! Code that runs inside deadpool's child processes (zygotes and workers),
//! called from python/deadpool/_zygote.py and _worker.py through the
//! bindings in bindings/child.rs.

pub mod frame_io;
pub mod setup;

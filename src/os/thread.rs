//! The pool's own threads.

use std::io;
use std::thread::JoinHandle;

/// Starts a named thread (the name shows in `ps -T`, gdb and panics).
pub fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(body)
}

//! `RoomSignal`: the file descriptor an asyncio event loop polls to learn that
//! a pool's backlog has room (`Pool.notify_when_room`; parent/room.rs).

use crate::parent::room::RoomSignal as Signal;
use pyo3::prelude::*;
use std::os::fd::RawFd;
use std::sync::Arc;

#[pyclass(frozen, module = "deadpool._core")]
pub struct RoomSignal {
    signal: Arc<Signal>,
}

impl RoomSignal {
    pub fn signal(&self) -> &Arc<Signal> {
        &self.signal
    }
}

#[pymethods]
impl RoomSignal {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(RoomSignal {
            signal: Arc::new(Signal::new()?),
        })
    }

    /// The eventfd: readable once the signal has fired. It stays open while
    /// this object lives.
    fn fileno(&self) -> RawFd {
        self.signal.raw_fd()
    }

    /// Makes it unreadable again, until it next fires.
    fn clear(&self) {
        self.signal.clear();
    }
}

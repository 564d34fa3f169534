//! What the core tells the Python shim: the kinds of the `(kind, task_id, pid,
//! payload)` tuples the completion thread hands to the dispatcher, and the
//! answers of `Pool.cancel` and `Pool.try_submit`.

wire_codes! {
    /// The first field of a dispatcher tuple. `Started`: the task reached a
    /// worker (the pid is set, the payload None). `Returned`: the payload is
    /// the pickled return value. `Raised`: the pickled `(exception or None,
    /// repr, traceback text)`. `TimedOut`: the deadline passed and the
    /// worker's tree was killed. `Cancelled`: killed on request (cancel, or
    /// shutdown without waiting). `Lost`: the worker was lost. Both of these
    /// carry the worker's end as `(message, reason, pid, exitcode, max_rss,
    /// memory_used, memory_limit)` (see `bindings/completion.rs`); reason
    /// "memory" is a task its memory limit stopped. `OverMemory`: a
    /// memory-limited task raised `MemoryError`; the payload is `(Raised's
    /// payload, memory_limit)`.
    pub enum EventKind: u8 {
        Started = 0, Returned = 1, Raised = 2, TimedOut = 3, Cancelled = 4, Lost = 5,
        OverMemory = 6,
    }
}

wire_codes! {
    /// What `Pool.cancel` found. `NotFound`: already finished, or finishing
    /// right now (its outcome is on the way). `RemovedPending`: it waited in
    /// the backlog and is removed. `KilledRunning`: it was running and its
    /// worker is killed.
    pub enum CancelReply: u8 { NotFound = 0, RemovedPending = 1, KilledRunning = 2 }
}

wire_codes! {
    /// What `Pool.try_submit` did. `Accepted`: the task is in the backlog.
    /// `Full`: `max_backlog` tasks wait and nothing was queued (arm a room
    /// signal, then try again). `Closed`: the pool is shut down.
    pub enum SubmitReply: u8 { Accepted = 0, Full = 1, Closed = 2 }
}

//! What the core tells the Python shim: the kinds of the `(kind, task_id, pid,
//! payload)` tuples the completion thread hands to the dispatcher, and the
//! answers of `Pool.cancel`.

/// The first field of a dispatcher tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    /// The task reached a worker; `pid` is set, the payload is None.
    Started = 0,
    /// The payload is the pickled return value.
    Returned = 1,
    /// The payload is the pickled `(exception or None, repr, traceback text)`.
    Raised = 2,
    /// The deadline passed and the worker's tree was killed.
    TimedOut = 3,
    /// Killed on request (cancel, or shutdown without waiting).
    Cancelled = 4,
    /// The worker was lost; the payload is the message naming pid and status.
    Lost = 5,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Started,
        EventKind::Returned,
        EventKind::Raised,
        EventKind::TimedOut,
        EventKind::Cancelled,
        EventKind::Lost,
    ];

    /// The name Python sees, as `EVENT_<NAME>` on `deadpool._core`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Started => "STARTED",
            EventKind::Returned => "RETURNED",
            EventKind::Raised => "RAISED",
            EventKind::TimedOut => "TIMED_OUT",
            EventKind::Cancelled => "CANCELLED",
            EventKind::Lost => "LOST",
        }
    }
}

/// What `Pool.cancel` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum CancelReply {
    /// Already finished, or finishing right now: its outcome is on the way.
    NotFound = 0,
    /// It was waiting in the backlog and is removed.
    RemovedPending = 1,
    /// It was running and its worker is killed.
    KilledRunning = 2,
}

impl CancelReply {
    pub const ALL: [CancelReply; 3] = [
        CancelReply::NotFound,
        CancelReply::RemovedPending,
        CancelReply::KilledRunning,
    ];

    /// The name Python sees, as `CANCEL_<NAME>` on `deadpool._core`.
    pub fn name(self) -> &'static str {
        match self {
            CancelReply::NotFound => "NOT_FOUND",
            CancelReply::RemovedPending => "REMOVED_PENDING",
            CancelReply::KilledRunning => "KILLED_RUNNING",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn values_and_names_are_distinct() {
        let kinds: HashSet<u8> = EventKind::ALL.iter().map(|k| *k as u8).collect();
        let names: HashSet<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!((kinds.len(), names.len()), (6, 6));
        let replies: HashSet<u8> = CancelReply::ALL.iter().map(|r| *r as u8).collect();
        assert_eq!(replies.len(), 3);
    }
}

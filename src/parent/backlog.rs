//! The bounded priority backlog between `submit` and the supervisor.
//!
//! Lower priority values run first and equal priorities run in submit order, so
//! the key is `(priority, id)` with ids handed out in submit order. A `BTreeMap`
//! (rather than a heap) lets a pending task be cancelled in O(log n).
//!
//! A full backlog makes `submit` wait on a condvar; callers that must not
//! block (an asyncio event loop) arm a `RoomSignal` instead.

use crate::os::sync::lock;
use crate::parent::room::RoomSignal;
use crate::parent::segments::Lease;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug)]
pub struct Task {
    pub id: u64,
    pub priority: u64,
    pub payload: Vec<u8>,
    pub timeout: Option<Duration>,
    /// How far the task's process tree may grow, in bytes (see
    /// os/tree_memory.rs); `None` for no limit.
    pub memory_limit: Option<u64>,
    /// Where its large buffers are (parent/segments.rs), if they are shared.
    pub segment: Option<Lease>,
}

#[derive(Debug)]
pub enum PushError {
    /// The pool is shutting down.
    Closed,
    /// The bound is reached; the caller may wait for space and retry.
    Full(Task),
}

#[derive(Default)]
struct Queue {
    tasks: BTreeMap<(u64, u64), Task>,
    priority_of: HashMap<u64, u64>,
    closed: bool,
    /// Submitters waiting for room. Waking a condvar costs a syscall even with
    /// nobody waiting, and `pop` runs once per task.
    blocked_submitters: usize,
    /// Signals to fire the next time there is room, each once per arming.
    room_watchers: Vec<Arc<RoomSignal>>,
}

pub struct Backlog {
    queue: Mutex<Queue>,
    space: Condvar,
    /// Zero means unbounded, as with `queue.Queue(maxsize=0)`.
    bound: usize,
}

impl Backlog {
    pub fn new(bound: usize) -> Self {
        Backlog {
            queue: Mutex::new(Queue::default()),
            space: Condvar::new(),
            bound,
        }
    }

    /// Adds a task. With `respect_bound` false the task is admitted past the
    /// bound (used where blocking would stall an event loop).
    pub fn push(&self, task: Task, respect_bound: bool) -> Result<(), PushError> {
        let mut queue = lock(&self.queue);
        if queue.closed {
            return Err(PushError::Closed);
        }
        if respect_bound && self.bound > 0 && queue.tasks.len() >= self.bound {
            return Err(PushError::Full(task));
        }
        queue.priority_of.insert(task.id, task.priority);
        queue.tasks.insert((task.priority, task.id), task);
        Ok(())
    }

    /// Blocks up to `timeout` until there may be room (or the backlog closed);
    /// false if the time ran out first. Callers re-try `push`; waking
    /// spuriously is harmless.
    pub fn wait_for_space(&self, timeout: Duration) -> bool {
        let mut queue = lock(&self.queue);
        if self.has_room(&queue) {
            return true;
        }
        queue.blocked_submitters += 1;
        let (mut queue, waited) = self
            .space
            .wait_timeout_while(queue, timeout, |q| !self.has_room(q))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.blocked_submitters -= 1;
        !waited.timed_out()
    }

    /// Whether a `push` that respects the bound would get past it (or find
    /// the backlog closed): what a waiting submitter waits for.
    fn has_room(&self, queue: &Queue) -> bool {
        queue.closed || self.bound == 0 || queue.tasks.len() < self.bound
    }

    /// Fires `signal` once there is room or the backlog has closed: at once
    /// if that is so now, else the next time a task leaves and makes room
    /// (or the backlog closes). Once per call; arming an armed signal again
    /// changes nothing. The caller clears the signal, re-tries its `push` and
    /// arms it again if the backlog is full again.
    pub fn notify_when_room(&self, signal: &Arc<RoomSignal>) {
        let mut queue = lock(&self.queue);
        if self.has_room(&queue) {
            drop(queue);
            signal.fire();
            return;
        }
        if !queue.room_watchers.iter().any(|w| Arc::ptr_eq(w, signal)) {
            queue.room_watchers.push(Arc::clone(signal));
        }
    }

    /// The next task to run: lowest priority value, then earliest submitted.
    pub fn pop(&self) -> Option<Task> {
        let mut queue = lock(&self.queue);
        let (_, task) = queue.tasks.pop_first()?;
        queue.priority_of.remove(&task.id);
        self.made_room(queue);
        Some(task)
    }

    /// A task left. Past-the-bound admissions can leave the backlog full
    /// still, so room signals fire only if there is room now.
    fn made_room(&self, mut queue: MutexGuard<'_, Queue>) {
        let someone_waits = queue.blocked_submitters > 0;
        let watchers = if !queue.room_watchers.is_empty() && self.has_room(&queue) {
            std::mem::take(&mut queue.room_watchers)
        } else {
            Vec::new()
        };
        drop(queue);
        if someone_waits {
            self.space.notify_one();
        }
        for signal in watchers {
            signal.fire();
        }
    }

    /// Removes a pending task, e.g. on `Future.cancel()`.
    pub fn remove(&self, id: u64) -> Option<Task> {
        let mut queue = lock(&self.queue);
        let priority = queue.priority_of.remove(&id)?;
        let task = queue.tasks.remove(&(priority, id));
        self.made_room(queue);
        task
    }

    /// Refuses new tasks from now on and wakes every blocked submitter (and
    /// fires every armed room signal). With `drain`, also empties the queue
    /// and returns the removed task ids.
    pub fn close(&self, drain: bool) -> Vec<u64> {
        let mut queue = lock(&self.queue);
        queue.closed = true;
        let watchers = std::mem::take(&mut queue.room_watchers);
        let removed = if drain {
            queue.priority_of.clear();
            std::mem::take(&mut queue.tasks)
                .into_values()
                .map(|t| t.id)
                .collect()
        } else {
            Vec::new()
        };
        drop(queue);
        self.space.notify_all();
        for signal in watchers {
            signal.fire();
        }
        removed
    }

    pub fn len(&self) -> usize {
        lock(&self.queue).tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_closed(&self) -> bool {
        lock(&self.queue).closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn task(id: u64, priority: u64) -> Task {
        Task {
            id,
            priority,
            payload: vec![id as u8],
            timeout: None,
            memory_limit: None,
            segment: None,
        }
    }

    fn drain_ids(backlog: &Backlog) -> Vec<u64> {
        std::iter::from_fn(|| backlog.pop()).map(|t| t.id).collect()
    }

    #[test]
    fn lower_priority_value_first_then_submit_order() {
        let backlog = Backlog::new(0);
        for (id, priority) in [(1, 10), (2, 0), (3, 10), (4, 0), (5, 5)] {
            backlog.push(task(id, priority), true).expect("push");
        }
        assert_eq!(drain_ids(&backlog), vec![2, 4, 5, 1, 3]);
    }

    #[test]
    fn bound_rejects_when_full_unless_told_to_admit() {
        let backlog = Backlog::new(2);
        backlog.push(task(1, 0), true).expect("push");
        backlog.push(task(2, 0), true).expect("push");
        match backlog.push(task(3, 0), true) {
            Err(PushError::Full(t)) => assert_eq!(t.id, 3),
            other => panic!("expected Full, got {other:?}"),
        }
        backlog
            .push(task(3, 0), false)
            .expect("admitted past the bound");
        assert_eq!(backlog.len(), 3);
    }

    #[test]
    fn zero_bound_is_unbounded() {
        let backlog = Backlog::new(0);
        for id in 0..1000 {
            backlog.push(task(id, 0), true).expect("push");
        }
        assert_eq!(backlog.len(), 1000);
    }

    #[test]
    fn remove_takes_out_exactly_one_pending_task() {
        let backlog = Backlog::new(0);
        for id in 1..=3 {
            backlog.push(task(id, 7), true).expect("push");
        }
        assert_eq!(backlog.remove(2).map(|t| t.id), Some(2));
        assert!(backlog.remove(2).is_none());
        assert_eq!(drain_ids(&backlog), vec![1, 3]);
    }

    #[test]
    fn close_refuses_and_optionally_drains() {
        let backlog = Backlog::new(0);
        backlog.push(task(1, 0), true).expect("push");
        backlog.push(task(2, 1), true).expect("push");
        let removed = backlog.close(true);
        assert_eq!(removed, vec![1, 2]);
        assert!(matches!(
            backlog.push(task(3, 0), true),
            Err(PushError::Closed)
        ));
        assert!(backlog.is_empty());
    }

    #[test]
    fn close_without_drain_keeps_tasks_for_the_supervisor() {
        let backlog = Backlog::new(0);
        backlog.push(task(1, 0), true).expect("push");
        assert!(backlog.close(false).is_empty());
        assert_eq!(drain_ids(&backlog), vec![1]);
    }

    #[test]
    fn waiting_submitter_wakes_when_space_frees() {
        let backlog = assert_freeing_wakes_a_waiting_submitter(|backlog| backlog.pop().is_some());
        backlog.push(task(2, 0), true).expect("room now");
    }

    #[test]
    fn waiting_submitter_wakes_when_a_pending_task_is_cancelled() {
        let backlog =
            assert_freeing_wakes_a_waiting_submitter(|backlog| backlog.remove(1).is_some());
        backlog.push(task(2, 0), true).expect("room now");
    }

    #[test]
    fn close_wakes_a_waiting_submitter() {
        let backlog = assert_freeing_wakes_a_waiting_submitter(|backlog| {
            backlog.close(false);
            true
        });
        assert!(matches!(
            backlog.push(task(2, 0), true),
            Err(PushError::Closed)
        ));
    }

    /// A submitter waits on a full backlog while another thread runs `free`:
    /// it must wake at once, not at its timeout.
    fn assert_freeing_wakes_a_waiting_submitter(free: fn(&Backlog) -> bool) -> Arc<Backlog> {
        let backlog = Arc::new(Backlog::new(1));
        backlog.push(task(1, 0), true).expect("push");
        let freer = {
            let backlog = Arc::clone(&backlog);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                free(&backlog)
            })
        };
        assert!(
            backlog.wait_for_space(Duration::from_secs(10)),
            "woken by the freed slot, not the timeout"
        );
        assert!(freer.join().expect("join"));
        backlog
    }

    fn full_backlog_and_armed_signal() -> (Backlog, Arc<RoomSignal>) {
        let backlog = Backlog::new(2);
        backlog.push(task(1, 0), true).expect("push");
        backlog.push(task(2, 0), true).expect("push");
        let signal = Arc::new(RoomSignal::new().expect("eventfd"));
        backlog.notify_when_room(&signal);
        assert!(!signal.is_fired(), "no room yet");
        (backlog, signal)
    }

    #[test]
    fn room_signal_fires_at_once_when_there_is_room() {
        for backlog in [Backlog::new(2), Backlog::new(0)] {
            backlog.push(task(1, 0), true).expect("push");
            let signal = Arc::new(RoomSignal::new().expect("eventfd"));
            backlog.notify_when_room(&signal);
            assert!(signal.is_fired());
            assert!(lock(&backlog.queue).room_watchers.is_empty());
        }
    }

    #[test]
    fn room_signal_fires_when_a_task_starts() {
        let (backlog, signal) = full_backlog_and_armed_signal();
        assert_eq!(backlog.pop().map(|t| t.id), Some(1));
        assert!(signal.is_fired());
        backlog.push(task(3, 0), true).expect("room now");
    }

    #[test]
    fn room_signal_fires_when_a_pending_task_is_cancelled() {
        let (backlog, signal) = full_backlog_and_armed_signal();
        assert!(backlog.remove(99).is_none());
        assert!(!signal.is_fired(), "removing nothing makes no room");
        assert!(backlog.remove(2).is_some());
        assert!(signal.is_fired());
    }

    #[test]
    fn room_signal_fires_when_the_backlog_closes() {
        let (backlog, signal) = full_backlog_and_armed_signal();
        backlog.close(false);
        assert!(signal.is_fired());
        let late = Arc::new(RoomSignal::new().expect("eventfd"));
        backlog.notify_when_room(&late);
        assert!(late.is_fired(), "a closed backlog has nothing to wait for");
    }

    #[test]
    fn room_signal_stays_quiet_while_the_backlog_stays_full() {
        let (backlog, signal) = full_backlog_and_armed_signal();
        // Admitted past the bound (a submit on an event loop's thread): the
        // first task to leave leaves the backlog as full as the bound.
        backlog.push(task(3, 0), false).expect("admitted");
        assert!(backlog.pop().is_some());
        assert!(!signal.is_fired(), "still full");
        assert!(backlog.pop().is_some());
        assert!(signal.is_fired(), "room now");
    }

    #[test]
    fn room_signal_fires_once_per_arming() {
        let (backlog, signal) = full_backlog_and_armed_signal();
        backlog.notify_when_room(&signal);
        assert_eq!(
            lock(&backlog.queue).room_watchers.len(),
            1,
            "armed twice, kept once"
        );
        assert!(backlog.pop().is_some());
        assert!(signal.is_fired());
        signal.clear();
        backlog.push(task(3, 0), true).expect("refill");
        assert!(backlog.pop().is_some());
        assert!(!signal.is_fired(), "not armed again");
        backlog.push(task(4, 0), true).expect("refill");
        backlog.notify_when_room(&signal);
        assert!(backlog.remove(4).is_some());
        assert!(signal.is_fired(), "armed again");
    }

    #[test]
    fn every_armed_room_signal_fires() {
        let (backlog, first) = full_backlog_and_armed_signal();
        let second = Arc::new(RoomSignal::new().expect("eventfd"));
        backlog.notify_when_room(&second);
        assert!(backlog.pop().is_some());
        assert!(first.is_fired() && second.is_fired());
    }
}

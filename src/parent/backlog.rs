//! The bounded priority backlog between `submit` and the supervisor.
//!
//! Lower priority values run first and equal priorities run in submit order, so
//! the key is `(priority, id)` with ids handed out in submit order. A `BTreeMap`
//! (rather than a heap) lets a pending task be cancelled in O(log n).

use crate::os::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Debug)]
pub struct Task {
    pub id: u64,
    pub priority: u64,
    pub payload: Vec<u8>,
    pub timeout: Option<Duration>,
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
        let has_room = |q: &Queue| q.closed || self.bound == 0 || q.tasks.len() < self.bound;
        if has_room(&queue) {
            return true;
        }
        queue.blocked_submitters += 1;
        let (mut queue, waited) = self
            .space
            .wait_timeout_while(queue, timeout, |q| !has_room(q))
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.blocked_submitters -= 1;
        !waited.timed_out()
    }

    /// The next task to run: lowest priority value, then earliest submitted.
    pub fn pop(&self) -> Option<Task> {
        let mut queue = lock(&self.queue);
        let (_, task) = queue.tasks.pop_first()?;
        queue.priority_of.remove(&task.id);
        self.made_room(queue);
        Some(task)
    }

    fn made_room(&self, queue: MutexGuard<'_, Queue>) {
        let someone_waits = queue.blocked_submitters > 0;
        drop(queue);
        if someone_waits {
            self.space.notify_one();
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

    /// Refuses new tasks from now on and wakes every blocked submitter.
    /// With `drain`, also empties the queue and returns the removed task ids.
    pub fn close(&self, drain: bool) -> Vec<u64> {
        let mut queue = lock(&self.queue);
        queue.closed = true;
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
}

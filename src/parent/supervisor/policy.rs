//! The supervisor's decisions, as plain arithmetic: how many workers to
//! start, when a worker retires, how long to back off after failed starts.
//! Nothing here touches a process, so each rule is unit-tested on its own.

use std::time::Duration;

/// How long a retiring worker may spend in its finalizer and atexit handlers.
pub const RETIRE_GRACE: Duration = Duration::from_secs(10);
/// The back-off after the first failed start; it doubles with each failure
/// in a row, [`MAX_BACKOFF_DOUBLINGS`] times at most.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF_DOUBLINGS: u32 = 9;
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Consecutive start-up failures after which waiting tasks start to fail.
pub const STARTUP_FAILURES_BEFORE_GIVING_UP: u32 = 8;

/// The pool as the sizing rule sees it.
#[derive(Clone, Copy, Debug)]
pub struct Staffing {
    /// Workers starting, idle or busy.
    pub serving: usize,
    /// Workers idle, or starting and not told to retire.
    pub available: usize,
    /// Tasks in the backlog.
    pub waiting: usize,
    pub min_workers: usize,
    pub max_workers: usize,
    pub closing: bool,
}

/// Workers to start now: enough to keep `min_workers` (none once closing),
/// and one per waiting task that no available worker will take, up to
/// `max_workers`.
pub fn workers_to_start(pool: Staffing) -> usize {
    let floor = if pool.closing { 0 } else { pool.min_workers };
    let for_floor = floor.saturating_sub(pool.serving);
    let for_backlog = pool
        .waiting
        .saturating_sub(pool.available)
        .min(pool.max_workers.saturating_sub(pool.serving));
    for_floor.max(for_backlog)
}

/// A closing pool with nothing left to run lets its idle workers go.
pub fn retire_idle_workers(pool: Staffing) -> bool {
    pool.closing && pool.waiting == 0
}

/// What the retirement rule needs to know about a worker that just
/// finished a task (`tasks_done` counts that task).
#[derive(Clone, Copy, Debug)]
pub struct FinishedTask {
    pub tasks_done: u64,
    pub max_tasks_per_child: Option<u64>,
    /// The worker's resident memory and the bound, when one is set.
    pub memory: Option<(u64, u64)>,
    pub backlog_empty: bool,
    /// Workers starting, idle or busy, this one included.
    pub serving: usize,
    pub min_workers: usize,
    pub closing: bool,
}

/// After each task a worker retires when it has run its share of tasks, has
/// grown to the memory bound, is more than `min_workers` needs with nothing
/// waiting, or the pool is closing with nothing waiting.
pub fn retire_after_task(task: FinishedTask) -> bool {
    let used_up = task
        .max_tasks_per_child
        .is_some_and(|max| task.tasks_done >= max);
    let too_big = task.memory.is_some_and(|(rss, bound)| rss >= bound);
    let surplus = task.backlog_empty && task.serving > task.min_workers;
    used_up || too_big || surplus || (task.closing && task.backlog_empty)
}

/// How long to wait before starting a worker after `failures` failed starts
/// in a row (at least one).
pub fn startup_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(MAX_BACKOFF_DOUBLINGS);
    (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
}

/// Whether a waiting task should fail now rather than wait for a worker: only
/// when starts keep failing and no worker is left that could serve it. A
/// worker killed while starting (the OOM killer, say) thus costs no task.
pub fn give_up_on_a_waiting_task(failures: u32, anyone_serving: bool) -> bool {
    !anyone_serving && failures >= STARTUP_FAILURES_BEFORE_GIVING_UP
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two workers serving at most four, at a floor of two; `change` adjusts.
    fn pool(change: impl FnOnce(&mut Staffing)) -> Staffing {
        let mut pool = Staffing {
            serving: 0,
            available: 0,
            waiting: 0,
            min_workers: 2,
            max_workers: 4,
            closing: false,
        };
        change(&mut pool);
        pool
    }

    /// The first task of a worker at the floor with work waiting; `change` adjusts.
    fn task(change: impl FnOnce(&mut FinishedTask)) -> bool {
        let mut task = FinishedTask {
            tasks_done: 1,
            max_tasks_per_child: None,
            memory: None,
            backlog_empty: false,
            serving: 2,
            min_workers: 2,
            closing: false,
        };
        change(&mut task);
        retire_after_task(task)
    }

    #[test]
    fn the_pool_starts_its_floor_and_then_one_worker_per_uncovered_task() {
        assert_eq!(workers_to_start(pool(|_| {})), 2);
        assert_eq!(workers_to_start(pool(|p| p.closing = true)), 0);
        let busy = pool(|p| (p.serving, p.waiting) = (2, 10));
        assert_eq!(workers_to_start(busy), 2, "up to max_workers");
        let one_free = pool(|p| (p.serving, p.available, p.waiting) = (2, 1, 2));
        assert_eq!(workers_to_start(one_free), 1);
        let full = pool(|p| (p.serving, p.waiting) = (4, 10));
        assert_eq!(workers_to_start(full), 0);
        let covered = pool(|p| (p.serving, p.available, p.waiting) = (3, 3, 3));
        assert_eq!(workers_to_start(covered), 0);
    }

    #[test]
    fn idle_workers_retire_only_when_closing_with_nothing_waiting() {
        assert!(!retire_idle_workers(pool(|_| {})));
        assert!(retire_idle_workers(pool(|p| p.closing = true)));
        assert!(!retire_idle_workers(pool(
            |p| (p.closing, p.waiting) = (true, 1)
        )));
    }

    #[test]
    fn a_worker_retires_after_its_share_of_tasks() {
        assert!(!task(|_| {}));
        assert!(task(
            |t| (t.tasks_done, t.max_tasks_per_child) = (3, Some(3))
        ));
        assert!(!task(
            |t| (t.tasks_done, t.max_tasks_per_child) = (2, Some(3))
        ));
    }

    #[test]
    fn the_memory_bound_is_inclusive() {
        assert!(task(|t| t.memory = Some((100, 100))));
        assert!(!task(|t| t.memory = Some((99, 100))));
    }

    #[test]
    fn surplus_workers_retire_when_nothing_waits() {
        assert!(task(|t| (t.serving, t.backlog_empty) = (3, true)));
        assert!(!task(|t| t.serving = 3), "work is waiting");
        assert!(!task(|t| t.backlog_empty = true), "at the floor");
    }

    #[test]
    fn a_closing_pool_retires_workers_once_nothing_waits() {
        assert!(task(|t| (t.closing, t.backlog_empty) = (true, true)));
        assert!(!task(|t| t.closing = true));
    }

    #[test]
    fn backoff_doubles_then_stops_growing() {
        assert_eq!(startup_backoff(1), Duration::from_millis(5));
        assert_eq!(startup_backoff(2), Duration::from_millis(10));
        assert_eq!(startup_backoff(10), Duration::from_millis(5 * 512));
        assert_eq!(startup_backoff(1000), startup_backoff(10));
        assert!(startup_backoff(u32::MAX) <= MAX_BACKOFF);
    }

    #[test]
    fn waiting_tasks_fail_only_when_no_worker_can_start_or_serve() {
        let limit = STARTUP_FAILURES_BEFORE_GIVING_UP;
        assert!(!give_up_on_a_waiting_task(limit - 1, false));
        assert!(give_up_on_a_waiting_task(limit, false));
        assert!(!give_up_on_a_waiting_task(limit, true));
    }
}

//! The counters behind `get_statistics()`: written by the supervisor (and by
//! `submit` for `tasks_received`), read from any thread without a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Stats {
    pub tasks_received: AtomicU64,
    pub tasks_launched: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub worker_processes_created: AtomicU64,
    pub max_workers_busy_concurrently: AtomicU64,
    pub worker_processes_still_alive: AtomicU64,
    pub worker_processes_idle: AtomicU64,
    pub worker_processes_busy: AtomicU64,
    // Beyond the original's eight:
    pub tasks_timed_out: AtomicU64,
    pub tasks_over_memory_limit: AtomicU64,
    pub worker_processes_killed_by_signal: AtomicU64,
    pub bytes_through_shared_memory: AtomicU64,
}

/// A census of the live workers, published after every change.
pub struct Census {
    pub alive: u64,
    pub idle: u64,
    pub busy: u64,
}

impl Stats {
    pub fn publish(&self, census: Census) {
        self.worker_processes_still_alive
            .store(census.alive, Relaxed);
        self.worker_processes_idle.store(census.idle, Relaxed);
        self.worker_processes_busy.store(census.busy, Relaxed);
        self.max_workers_busy_concurrently
            .fetch_max(census.busy, Relaxed);
    }

    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// The original's eight keys in its order, then ours.
    pub fn snapshot(&self) -> [(&'static str, u64); 12] {
        [
            ("tasks_received", self.tasks_received.load(Relaxed)),
            ("tasks_launched", self.tasks_launched.load(Relaxed)),
            ("tasks_failed", self.tasks_failed.load(Relaxed)),
            (
                "worker_processes_created",
                self.worker_processes_created.load(Relaxed),
            ),
            (
                "max_workers_busy_concurrently",
                self.max_workers_busy_concurrently.load(Relaxed),
            ),
            (
                "worker_processes_still_alive",
                self.worker_processes_still_alive.load(Relaxed),
            ),
            (
                "worker_processes_idle",
                self.worker_processes_idle.load(Relaxed),
            ),
            (
                "worker_processes_busy",
                self.worker_processes_busy.load(Relaxed),
            ),
            ("tasks_timed_out", self.tasks_timed_out.load(Relaxed)),
            (
                "tasks_over_memory_limit",
                self.tasks_over_memory_limit.load(Relaxed),
            ),
            (
                "worker_processes_killed_by_signal",
                self.worker_processes_killed_by_signal.load(Relaxed),
            ),
            (
                "bytes_through_shared_memory",
                self.bytes_through_shared_memory.load(Relaxed),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_maximum_only_grows() {
        let stats = Stats::default();
        stats.publish(Census {
            alive: 3,
            idle: 0,
            busy: 3,
        });
        stats.publish(Census {
            alive: 3,
            idle: 2,
            busy: 1,
        });
        let snapshot = stats.snapshot();
        assert_eq!(snapshot[4], ("max_workers_busy_concurrently", 3));
        assert_eq!(snapshot[7], ("worker_processes_busy", 1));
        assert_eq!(snapshot[6], ("worker_processes_idle", 2));
    }
}

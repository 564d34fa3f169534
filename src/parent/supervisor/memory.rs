//! Per-task memory limits: while a memory-limited task runs, the supervisor
//! looks at the resident memory of its worker's process tree every
//! [`MEMORY_POLL`] and kills the tree once it has grown past the limit.
//!
//! Why from outside, and not with rlimits in the worker: `RLIMIT_AS` and
//! `RLIMIT_DATA` count address space (reserved arenas, thread stacks,
//! untouched `calloc` memory, mapped files), not memory in use; they bound
//! each process alone, so a child the task starts escapes them; and C code
//! that meets a failed `malloc` often crashes instead of raising. Resident
//! memory of the tree is what the OOM killer weighs, and a kill from
//! outside always works. The price is precision: a task can grow for up to
//! one poll interval past its limit before it is stopped (README: "Testing
//! OOM and timeout paths" has the measurements). Pools without limited
//! tasks never poll: nothing here runs for them.

use super::worker::{Cause, State};
use super::Supervisor;
use crate::os::tree_memory::{resident_bytes, TreeWatch};
use crate::parent::messages::{Death, Reason};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

/// How often a memory-limited task's tree is looked at. Each look costs a
/// listing of `/proc` and one `statm` read per process of the tree (tens of
/// microseconds); 5 ms bounds the overshoot of a task growing at 1 GB/s to
/// about 5 MB.
pub const MEMORY_POLL: Duration = Duration::from_millis(5);

/// A memory-limited task's watch over its worker's tree.
pub struct MemoryWatch {
    pub limit: u64,
    /// The worker's resident memory when the task started: the limit bounds
    /// what the task adds to it.
    pub baseline: u64,
    tree: TreeWatch,
}

impl MemoryWatch {
    pub fn start(pid: i32, limit: u64) -> MemoryWatch {
        MemoryWatch {
            limit,
            baseline: resident_bytes(pid).unwrap_or(0),
            tree: TreeWatch::new(pid),
        }
    }
}

/// Whether a task that added `used` bytes is past `limit`.
pub fn over_limit(used: u64, limit: u64) -> bool {
    used > limit
}

impl Supervisor {
    /// Schedules the next look, if none is due yet (a task with a limit
    /// just started).
    pub(super) fn watch_memory_soon(&mut self) {
        if self.memory_check_at.is_none() {
            self.memory_check_at = Some(Instant::now() + MEMORY_POLL);
        }
    }

    /// Looks at every memory-limited task's tree, if it is time, and kills
    /// those past their limits.
    pub(super) fn enforce_memory_limits(&mut self, now: Instant) {
        if self.memory_check_at.is_none_or(|at| at > now) {
            return;
        }
        let mut watched = false;
        let mut killed = Vec::new();
        for worker in self.workers.values_mut() {
            let pid = worker.pid_or_zero();
            let State::Busy {
                memory: Some(watch),
                ..
            } = &mut worker.state
            else {
                continue;
            };
            let Some(tree) = watch.tree.look() else {
                continue; // it died: its exit will tell
            };
            let used = tree.rss.saturating_sub(watch.baseline);
            if !over_limit(used, watch.limit) {
                watched = true;
                continue;
            }
            // Stop every process of the tree at once, so none grows while
            // the killer thread takes the tree apart.
            for member in &tree.members {
                let _ = kill(Pid::from_raw(*member), Signal::SIGSTOP);
            }
            let limit = watch.limit;
            worker.kill_for(Cause::Memory { used, limit });
            killed.push(pid);
        }
        self.memory_check_at = watched.then(|| now + MEMORY_POLL);
        for pid in killed {
            self.log(
                log::Level::Info,
                format!("worker {pid} went past its task's memory limit; killed it"),
            );
        }
    }
}

/// The error a task stopped by its memory limit gets.
pub fn memory_death(pid: i32, used: u64, limit: u64) -> Death {
    Death {
        message: format!(
            "the task's processes grew by {} MiB, past its memory limit of {} MiB; \
             worker {pid} was killed",
            mib(used),
            mib(limit)
        ),
        reason: Reason::Memory,
        memory: Some((used, limit)),
        pid,
        ..Death::lost(String::new())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_itself_is_allowed() {
        assert!(!over_limit(100, 100));
        assert!(over_limit(101, 100));
    }

    #[test]
    fn the_message_names_growth_limit_and_worker() {
        let death = memory_death(42, 3 << 20, 2 << 20);
        assert_eq!(death.reason, Reason::Memory);
        assert_eq!(death.memory, Some((3 << 20, 2 << 20)));
        assert!(
            death.message.contains("grew by 3.0 MiB"),
            "{}",
            death.message
        );
        assert!(death.message.contains("limit of 2.0 MiB; worker 42"));
    }

    #[test]
    fn a_watch_starts_from_the_current_memory() {
        let watch = MemoryWatch::start(std::process::id() as i32, 1);
        assert!(watch.baseline > 0);
    }
}

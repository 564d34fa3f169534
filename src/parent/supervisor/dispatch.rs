//! Tasks out to idle workers, and the deadlines that follow them.

use super::memory::MemoryWatch;
use super::worker::{Cause, State};
use super::Supervisor;
use crate::parent::deadline;
use crate::parent::messages::Event;
use crate::parent::stats::Stats;
use std::time::Instant;

impl Supervisor {
    /// One waiting task per idle worker; the clock starts as it is written.
    pub(super) fn dispatch(&mut self) {
        let mut broken = Vec::new();
        let mut memory_limited = false;
        let Supervisor {
            workers,
            shared,
            pending_events,
            ..
        } = self;
        for (worker_id, worker) in workers.iter_mut() {
            if !matches!(worker.state, State::Idle) {
                continue;
            }
            let Some(task) = shared.backlog.pop() else {
                break;
            };
            // Only a memory-limited task costs a read of /proc here.
            let memory = task.memory_limit.map(|limit| {
                memory_limited = true;
                Box::new(MemoryWatch::start(worker.pid_or_zero(), limit))
            });
            worker.state = State::Busy {
                task_id: task.id,
                deadline: deadline::deadline_for(Instant::now(), task.timeout),
                memory,
            };
            Stats::add(&shared.stats.tasks_launched);
            pending_events.push(Event::Started {
                task_id: task.id,
                pid: worker.pid_or_zero(),
            });
            if !worker.send_task(task.id, task.payload, task.segment) {
                broken.push(*worker_id);
            }
        }
        if memory_limited {
            self.watch_memory_soon();
        }
        for worker_id in broken {
            self.pipe_closed(worker_id);
        }
    }

    /// A timed-out task fails once its worker's exit is in (inbound.rs), so
    /// that its error carries the real exit status and peak memory.
    pub(super) fn enforce_deadlines(&mut self, now: Instant) {
        let mut stuck = Vec::new();
        for worker in self.workers.values_mut() {
            match worker.state {
                State::Busy {
                    deadline: Some(deadline),
                    ..
                } if deadline <= now => {
                    worker.kill_for(Cause::Timeout);
                }
                State::Retiring { deadline } if deadline::is_due(deadline, now) => {
                    stuck.push(worker.pid_or_zero());
                    worker.kill_and_forget_task();
                }
                _ => {}
            }
        }
        for pid in stuck {
            self.log(
                log::Level::Warn,
                format!(
                    "worker {pid} did not exit within {:?} of retiring; killed it",
                    super::policy::RETIRE_GRACE
                ),
            );
        }
    }
}

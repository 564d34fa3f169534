//! Tasks out to idle workers, and the deadlines that follow them.

use super::worker::State;
use super::Supervisor;
use crate::parent::deadline;
use crate::parent::messages::{Event, Outcome};
use crate::parent::stats::Stats;
use crate::wire::frame::{PendingWrite, Tag};
use std::time::Instant;

impl Supervisor {
    /// One waiting task per idle worker; the clock starts as it is written.
    pub(super) fn dispatch(&mut self) {
        let mut broken = Vec::new();
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
            worker.state = State::Busy {
                task_id: task.id,
                deadline: deadline::deadline_for(Instant::now(), task.timeout),
            };
            Stats::add(&shared.stats.tasks_launched);
            pending_events.push(Event::Started {
                task_id: task.id,
                pid: worker.pid_or_zero(),
            });
            if !worker.send(PendingWrite::new(Tag::Task, task.id, task.payload)) {
                broken.push(*worker_id);
            }
        }
        for worker_id in broken {
            self.pipe_closed(worker_id);
        }
    }

    pub(super) fn enforce_deadlines(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        let mut stuck = Vec::new();
        for worker in self.workers.values_mut() {
            match worker.state {
                State::Busy {
                    task_id,
                    deadline: Some(deadline),
                } if deadline <= now => {
                    worker.kill_and_forget_task();
                    timed_out.push(task_id);
                }
                State::Retiring { deadline } if deadline::is_due(deadline, now) => {
                    stuck.push(worker.pid_or_zero());
                    worker.kill_and_forget_task();
                }
                _ => {}
            }
        }
        for task_id in timed_out {
            self.finish_task(task_id, Outcome::TimedOut);
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

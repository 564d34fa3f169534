//! What comes back from workers and zygotes: result frames, status records,
//! closed pipes, and finally each worker's exit.

use super::memory::memory_death;
use super::worker::{Cause, Exit, State, Worker, Zygotes};
use super::Supervisor;
use crate::os::exit_status::{describe_death, exitcode};
use crate::parent::messages::{Death, Outcome, Reason};
use crate::parent::stats::Stats;
use crate::parent::zygote_client;
use crate::wire::frame::{Frame, ReadOutcome, Tag};
use crate::wire::status::StatusKind;

impl Supervisor {
    pub(super) fn write_pending(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !worker.flush() {
            self.pipe_closed(worker_id);
        }
    }

    /// Reads at most one frame: a worker sends one and then waits for us, so
    /// there is nothing more to read now, and skipping the read that would
    /// only say EAGAIN saves a syscall per task.
    pub(super) fn read_results(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        match worker.read_result() {
            None | Some(Ok(ReadOutcome::Pending)) => {}
            Some(Ok(ReadOutcome::Frame(frame))) => self.on_frame(worker_id, frame),
            Some(Ok(ReadOutcome::Eof { .. }) | Err(_)) => {
                worker.close_results();
                self.pipe_closed(worker_id);
                self.exited_if_orphaned(worker_id);
            }
            Some(Ok(ReadOutcome::Corrupt(error))) => {
                worker.close_results();
                self.protocol_broken(worker_id, &error.to_string());
                self.exited_if_orphaned(worker_id);
            }
        }
    }

    fn on_frame(&mut self, worker_id: u64, frame: Frame) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        match (frame.tag, &worker.state) {
            (Tag::Ready, State::Starting { retire_when_ready }) => {
                let Ok(pid) = <[u8; 4]>::try_from(frame.body.as_slice()) else {
                    let detail = format!("a Ready frame of {} bytes", frame.body.len());
                    self.protocol_broken(worker_id, &detail);
                    return;
                };
                let retire = *retire_when_ready;
                worker.pid_arrived(u32::from_le_bytes(pid) as i32);
                self.startup_failures = 0;
                if retire {
                    worker.retire();
                } else {
                    worker.state = State::Idle;
                }
            }
            (Tag::Ok | Tag::Err, &State::Busy { task_id, .. }) if frame.id == task_id => {
                let outcome = match frame.tag {
                    Tag::Ok => Outcome::Returned(frame.body),
                    _ => Outcome::Raised(frame.body),
                };
                // It has read its arguments and written its answer.
                worker.lent = None;
                self.finish_task(task_id, outcome);
                self.after_task(worker_id);
            }
            (Tag::OkShared | Tag::OkSegment, &State::Busy { task_id, .. })
                if frame.id == task_id =>
            {
                let segment = worker.result_segment(frame.tag, task_id);
                worker.lent = None;
                match segment {
                    Ok(segment) => {
                        self.finish_task(task_id, Outcome::ReturnedShared(frame.body, segment));
                        self.after_task(worker_id);
                    }
                    Err(detail) => self.protocol_broken(worker_id, &detail),
                }
            }
            (
                Tag::ErrMemory,
                State::Busy {
                    task_id, memory, ..
                },
            ) if frame.id == *task_id => {
                let task_id = *task_id;
                let limit = memory.as_ref().map_or(0, |watch| watch.limit);
                // Its heap may be anything after a MemoryError: replace it.
                worker.lent = None;
                worker.tasks_done += 1;
                worker.retire();
                self.finish_task(task_id, Outcome::OverMemory(frame.body, limit));
            }
            // A result racing with our kill (timeout, memory, cancel): the
            // kill decided the outcome.
            (
                Tag::Ok | Tag::Err | Tag::ErrMemory | Tag::OkShared | Tag::OkSegment,
                State::Killed | State::Lost { .. },
            ) => {}
            (tag, _) => self.protocol_broken(worker_id, &format!("unexpected {tag:?} frame")),
        }
    }

    /// The worker wrote something it must not have: kill it and fail its task.
    fn protocol_broken(&mut self, worker_id: u64, detail: &str) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let pid = worker.pid_or_zero();
        if let Some(task_id) = worker.kill_and_forget_task() {
            let message =
                format!("Subprocess {pid} broke the result protocol ({detail}) and was replaced");
            let death = Death {
                pid,
                ..Death::lost(message)
            };
            self.finish_task(task_id, Outcome::Lost(death));
        }
    }

    /// A pipe to the worker closed: it died, or closed its own descriptors.
    /// Kill it to be sure, and resolve its task once the exit status is known.
    pub(super) fn pipe_closed(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let task_id = match worker.state {
            State::Busy { task_id, .. } => Some(task_id),
            State::Idle => None,
            // Stays Starting, so its exit counts as a start-up failure.
            State::Starting { .. } => {
                if !worker.has_exited() {
                    worker.kill();
                }
                return;
            }
            State::Retiring { .. } | State::Killed | State::Lost { .. } => return,
        };
        if !worker.has_exited() {
            worker.kill();
        }
        worker.state = State::Lost {
            task_id,
            cause: Cause::Died,
        };
    }

    /// A worker whose zygote died has nobody to report its exit: once its
    /// result pipe closes too (and it has been killed to be sure), it is gone.
    fn exited_if_orphaned(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if worker.zygote_gone() && !worker.has_exited() {
            worker.exit = Some(Exit::Unknown);
            self.worker_exited(worker_id);
        }
    }

    pub(super) fn read_status(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !worker.drain_status() {
            return;
        }
        while let Some((kind, value)) = worker.status.next_record() {
            match kind {
                StatusKind::Pid => worker.pid_arrived(value),
                StatusKind::Exit => worker.exit = Some(Exit::Reported(value)),
                StatusKind::MaxRss => worker.max_rss = Some(u64::from(value as u32) * 1024),
            }
        }
        let zygote_died = worker.zygote_gone() && !worker.has_exited();
        if zygote_died && worker.results_closed() {
            worker.exit = Some(Exit::Unknown);
        }
        let has_exited = worker.has_exited();
        if zygote_died {
            self.zygote_died(worker_id);
        }
        if has_exited {
            self.read_results(worker_id);
            self.worker_exited(worker_id);
        }
    }

    /// A worker's zygote closed its status pipe without reporting the exit:
    /// the zygote died. The worker may live on; the next one needs a new
    /// zygote.
    fn zygote_died(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get(&worker_id) else {
            return;
        };
        match worker.pipes.zygote {
            Zygotes::Shared { pid } => {
                zygote_client::bury_shared(pid);
                self.graveyard_pending = true;
            }
            Zygotes::Pool { pid } => {
                if self.pool_zygote.as_ref().is_some_and(|z| z.pid() == pid) {
                    self.lose_pool_zygote();
                }
            }
            Zygotes::Own(_) => {}
        }
    }

    fn worker_exited(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.remove(&worker_id) else {
            return;
        };
        let death = death_of(&worker);
        if death.reason == Reason::Killed {
            Stats::add(&self.shared.stats.worker_processes_killed_by_signal);
        }
        match worker.state {
            State::Busy { task_id, .. }
            | State::Lost {
                task_id: Some(task_id),
                cause: Cause::Died,
            } => self.finish_task(task_id, Outcome::Lost(death)),
            State::Lost {
                task_id: Some(task_id),
                cause: Cause::Timeout,
            } => self.finish_task(task_id, Outcome::TimedOut(death)),
            State::Lost {
                task_id: Some(task_id),
                cause: Cause::Memory { .. },
            } => self.finish_task(task_id, Outcome::Lost(death)),
            State::Starting { .. } => {
                self.startup_failed(&format!("{} while starting", death.message))
            }
            State::Idle | State::Lost { task_id: None, .. } => self.log(
                log::Level::Warn,
                format!("an idle worker died: {}", death.message),
            ),
            State::Retiring { .. } | State::Killed => {}
        }
        if let Zygotes::Own(zygote) = worker.pipes.zygote {
            if !zygote.try_reap() {
                self.zygotes_to_reap.push(zygote);
            }
        }
    }
}

/// How a worker that has exited ended, in the words and figures its task's
/// error gives. A worker we killed (timeout, memory, a kill we were asked
/// for) is reported as such; otherwise its exit status says.
fn death_of(worker: &Worker) -> Death {
    let pid = worker.pid_or_zero();
    let status = match worker.exit {
        Some(Exit::Reported(status)) => Some(status),
        _ => None,
    };
    let exitcode = status.and_then(exitcode);
    let mut death = match worker.state {
        State::Lost {
            cause: Cause::Timeout,
            ..
        } => Death {
            reason: Reason::Timeout,
            ..Death::lost(format!("the task timed out; worker {pid} was killed"))
        },
        State::Lost {
            cause: Cause::Memory { used, limit },
            ..
        } => memory_death(pid, used, limit),
        _ => {
            let reason = match exitcode {
                _ if worker.signalled_by_pool => Reason::Cancelled,
                Some(code) if code < 0 => Reason::Killed,
                Some(_) => Reason::Exited,
                None => Reason::Lost,
            };
            Death {
                reason,
                ..Death::lost(describe_death(pid, status))
            }
        }
    };
    death.pid = pid;
    death.exitcode = exitcode;
    death.max_rss = worker.max_rss;
    death
}

//! Starting workers, growing and shrinking the pool, retiring after tasks.

use super::policy::{self, FinishedTask, Staffing};
use super::worker::{Pid, State, Worker, Zygotes};
use super::{StartMethod, Supervisor};
use crate::os::process_tree;
use crate::parent::messages::{Death, Event, Outcome};
use crate::parent::stats::Stats;
use crate::parent::zygote_client::{self, WorkerChannels, Zygote};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Instant;

impl Supervisor {
    pub(super) fn spawn_worker(&mut self) {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        let (channels, zygote) = match self.start_process() {
            Ok(started) => started,
            // "fork" and the pool's zygote is being replaced: try again once
            // it is here, without counting a failure.
            Err(_) if self.fork_in_flight => return,
            Err(error) => {
                self.startup_failed(&format!("could not start a worker process: {error}"));
                return;
            }
        };
        Stats::add(&self.shared.stats.worker_processes_created);
        let mut worker = Worker::new(channels, zygote, &self.shared, &self.killer);
        match &self.settings.static_config {
            Some(config) => {
                worker.send_config(config.clone());
            }
            None => self.emit(Event::NeedConfig { worker_id: id }),
        }
        self.workers.insert(id, worker);
    }

    /// Asks for a worker process as the start method says.
    fn start_process(&mut self) -> io::Result<(WorkerChannels, Zygotes)> {
        match self.settings.start_method {
            StartMethod::Forkserver => {
                let mut notes = Vec::new();
                let result =
                    zygote_client::request_shared_worker(&self.settings.launch, &mut notes);
                for note in notes {
                    self.log(log::Level::Warn, note);
                }
                let (channels, pid) = result?;
                Ok((channels, Zygotes::Shared { pid }))
            }
            StartMethod::Spawn => {
                let zygote = Zygote::launch(&self.settings.launch, true)?;
                let channels = zygote.request_worker()?;
                Ok((channels, Zygotes::Own(zygote)))
            }
            StartMethod::Fork => self.request_from_pool_zygote(),
        }
    }

    /// "fork": workers come from the zygote forked when the pool was made;
    /// if it is gone, a new one is asked for.
    fn request_from_pool_zygote(&mut self) -> io::Result<(WorkerChannels, Zygotes)> {
        let requested = match &self.pool_zygote {
            Some(zygote) => zygote
                .request_worker()
                .map(|channels| (channels, zygote.pid())),
            None => Err(io::Error::other("the pool's zygote is being forked")),
        };
        match requested {
            Ok((channels, pid)) => Ok((channels, Zygotes::Pool { pid })),
            Err(error) => {
                self.lose_pool_zygote();
                Err(error)
            }
        }
    }

    /// The pool's zygote died (or never came): reap it, and have a new one
    /// forked, unless one is on its way already.
    pub(super) fn lose_pool_zygote(&mut self) {
        if let Some(mut dead) = self.pool_zygote.take() {
            dead.let_go();
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(dead.pid()),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.zygotes_to_reap.push(dead);
        }
        if !self.fork_in_flight {
            self.fork_in_flight = true;
            self.emit(Event::NeedFork);
        }
    }

    pub(super) fn adopt_pool_zygote(&mut self, forked: Result<(i32, OwnedFd), String>) {
        self.fork_in_flight = false;
        match forked {
            Ok((pid, control)) => self.pool_zygote = Some(Zygote::adopt(pid, control)),
            Err(message) => self.startup_failed(&format!("could not fork a zygote: {message}")),
        }
    }

    /// A worker could not be started or died before it was ready. Back off so
    /// a broken environment cannot spin, and fail a waiting task only when
    /// the policy says nothing could ever serve it.
    pub(super) fn startup_failed(&mut self, message: &str) {
        self.log(log::Level::Error, message.to_string());
        self.startup_failures += 1;
        self.spawn_blocked_until =
            Some(Instant::now() + policy::startup_backoff(self.startup_failures));
        let anyone_serving = self
            .workers
            .values()
            .any(|w| matches!(w.state, State::Idle | State::Busy { .. }));
        if !policy::give_up_on_a_waiting_task(self.startup_failures, anyone_serving) {
            return;
        }
        if let Some(task) = self.shared.backlog.pop() {
            let message = format!(
                "no worker could be started ({} attempts in a row failed); the last: {message}",
                self.startup_failures
            );
            self.finish_task(task.id, Outcome::Lost(Death::lost(message)));
        }
    }

    fn staffing(&self) -> Staffing {
        Staffing {
            serving: self.workers.values().filter(|w| w.is_serving()).count(),
            available: self.workers.values().filter(|w| w.is_available()).count(),
            waiting: self.shared.backlog.len(),
            min_workers: self.settings.min_workers,
            max_workers: self.settings.max_workers,
            closing: self.closing,
        }
    }

    pub(super) fn maintain_workers(&mut self) {
        if self
            .spawn_blocked_until
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        self.spawn_blocked_until = None;
        let pool = self.staffing();
        for _ in 0..policy::workers_to_start(pool) {
            self.spawn_worker();
        }
        if policy::retire_idle_workers(pool) {
            self.retire_idle_workers();
        }
    }

    /// A worker answered its task: retire it or make it idle.
    pub(super) fn after_task(&mut self, worker_id: u64) {
        let serving = self.workers.values().filter(|w| w.is_serving()).count();
        let backlog_empty = self.shared.backlog.is_empty();
        let (min_workers, max_tasks_per_child, memory_bound) = (
            self.settings.min_workers,
            self.settings.max_tasks_per_child,
            self.settings.max_worker_memory_bytes,
        );
        let closing = self.closing;
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        worker.tasks_done += 1;
        let memory = match (memory_bound, worker.pid) {
            (Some(bound), Pid::Known(pid)) => process_tree::rss_bytes(pid).map(|rss| (rss, bound)),
            _ => None,
        };
        let retire = policy::retire_after_task(FinishedTask {
            tasks_done: worker.tasks_done,
            max_tasks_per_child,
            memory,
            backlog_empty,
            serving,
            min_workers,
            closing,
        });
        if retire {
            worker.retire();
        } else {
            worker.state = State::Idle;
        }
    }
}

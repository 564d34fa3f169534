//! Starting workers, growing and shrinking the pool, retiring after tasks.

use super::policy::{self, FinishedTask, Staffing};
use super::worker::{Link, Pid, State, Worker, Zygotes};
use super::{StartMethod, Supervisor};
use crate::os::process_tree;
use crate::parent::messages::{Event, Outcome};
use crate::parent::stats::Stats;
use crate::parent::zygote_client::{self, Zygote};
use std::io;
use std::time::Instant;

impl Supervisor {
    pub(super) fn spawn_worker(&mut self) {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        let link = match self.start_link(id) {
            Ok(link) => link,
            Err(error) => {
                self.startup_failed(&format!("could not start a worker process: {error}"));
                return;
            }
        };
        Stats::add(&self.shared.stats.worker_processes_created);
        let mut worker = Worker::new(link, &self.shared.buffers, &self.killer);
        if worker.is_connected() {
            self.send_first_config(id, &mut worker);
        }
        self.workers.insert(id, worker);
    }

    /// Asks for a worker process as the start method says.
    fn start_link(&mut self, worker_id: u64) -> io::Result<Link> {
        match self.settings.start_method {
            StartMethod::Forkserver => {
                let mut notes = Vec::new();
                let result =
                    zygote_client::request_shared_worker(&self.settings.launch, &mut notes);
                for note in notes {
                    self.log(log::Level::Warn, note);
                }
                let (channels, pid) = result?;
                Ok(Worker::connect(channels, Zygotes::Shared { pid }))
            }
            StartMethod::Spawn => {
                let zygote = Zygote::launch(&self.settings.launch, true)?;
                let channels = zygote.request_worker()?;
                Ok(Worker::connect(channels, Zygotes::Own(zygote)))
            }
            StartMethod::Fork => {
                let (control, child_end) = zygote_client::fork_control_pair()?;
                self.emit(Event::NeedFork {
                    worker_id,
                    child_end,
                });
                Ok(Link::AwaitingFork { control })
            }
        }
    }

    fn send_first_config(&mut self, worker_id: u64, worker: &mut Worker) {
        match &self.settings.static_config {
            Some(config) => {
                worker.send_config(config.clone());
            }
            None => self.emit(Event::NeedConfig { worker_id }),
        }
    }

    pub(super) fn adopt_forked_zygote(&mut self, worker_id: u64, pid: Result<i32, String>) {
        let Some(mut worker) = self.workers.remove(&worker_id) else {
            return;
        };
        let Link::AwaitingFork { control } = worker.link else {
            self.workers.insert(worker_id, worker);
            return;
        };
        let zygote = match pid {
            Ok(pid) => Zygote::adopt(pid, control),
            Err(message) => {
                self.startup_failed(&format!("could not fork a worker process: {message}"));
                return;
            }
        };
        match zygote.request_worker() {
            Ok(channels) => {
                worker.link = Worker::connect(channels, Zygotes::Own(zygote));
                self.send_first_config(worker_id, &mut worker);
                self.workers.insert(worker_id, worker);
            }
            Err(error) => {
                self.zygotes_to_reap.push(zygote);
                self.startup_failed(&format!("could not start a worker process: {error}"));
            }
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
            self.finish_task(task.id, Outcome::Lost(message));
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

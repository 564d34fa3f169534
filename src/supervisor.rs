//! The supervisor: one thread per pool that owns every worker and never
//! touches Python.
//!
//! Each turn of its loop drains the wake-up fd, takes commands, enforces
//! deadlines, starts or retires workers, hands backlog tasks to idle workers,
//! and then sleeps in `ppoll` on every worker's result and status pipes (and on
//! task pipes with output pending) until the nearest deadline. All pipe I/O is
//! non-blocking, so a dead, stuck or malicious worker can delay nothing but its
//! own task. Outcomes go to the completion thread as plain data.

use crate::backlog::Backlog;
use crate::buffers::BufferPool;
use crate::deadline;
use crate::events::{Command, Event, Outcome};
use crate::exit_status::describe_death;
use crate::killer::Killer;
use crate::process_tree;
use crate::protocol::{Frame, FrameReader, PendingWrite, ReadOutcome, Tag, MAX_BODY_LEN};
use crate::stats::{Census, Stats};
use crate::waker::Waker;
use crate::zygote::{
    self, WorkerChannels, Zygote, ZygoteLaunch, STATUS_KIND_EXIT, STATUS_KIND_PID,
    STATUS_RECORD_LEN,
};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a retiring worker may spend in its finalizer and atexit handlers.
const RETIRE_GRACE: Duration = Duration::from_secs(10);
/// How soon to look again for a per-worker zygote that has not exited yet.
const REAP_RETRY: Duration = Duration::from_millis(20);
const SPAWN_BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// Consecutive start-up failures after which waiting tasks start to fail.
const STARTUP_FAILURES_BEFORE_GIVING_UP: u32 = 8;
const SPAWN_BACKOFF_MAX: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMethod {
    Forkserver,
    Spawn,
    Fork,
}

pub struct Settings {
    pub max_workers: usize,
    pub min_workers: usize,
    pub max_tasks_per_child: Option<u64>,
    pub max_worker_memory_bytes: Option<u64>,
    pub start_method: StartMethod,
    pub launch: ZygoteLaunch,
    /// Pickled worker settings; `None` means "ask for fresh ones per worker"
    /// (they snapshot `propagate_environ` at each worker's creation).
    pub static_config: Option<Vec<u8>>,
}

/// What the Python-facing side and the supervisor both hold.
pub struct Shared {
    pub backlog: Backlog,
    pub waker: Waker,
    pub stats: Stats,
    pub buffers: Arc<BufferPool>,
}

enum State {
    /// Spawned; its settings are on the way and `Ready` has not arrived.
    Starting,
    Idle,
    Busy {
        task_id: u64,
        deadline: Option<Instant>,
    },
    /// Told to run its finalizer and exit.
    Retiring {
        deadline: Instant,
    },
    /// Broke its pipe or protocol; its task (if any) fails once the exit status is in.
    Dying {
        task_id: Option<u64>,
    },
    /// Killed by us (timeout, cancel, shutdown); its task is already resolved.
    Killed,
}

struct Worker {
    pid: Option<i32>,
    channels: Option<WorkerChannels>,
    /// "fork" start method: the control socket while the zygote is being forked.
    fork_control: Option<OwnedFd>,
    zygote: Option<Zygote>,
    /// "forkserver": the pid of the shared zygote that forked this worker.
    shared_zygote: Option<i32>,
    reader: FrameReader,
    status_bytes: Vec<u8>,
    outbox: VecDeque<PendingWrite>,
    state: State,
    tasks_done: u64,
    result_open: bool,
    /// False once the zygote closed the status pipe. Without an exit record
    /// that means the zygote died; the worker itself may live on, orphaned.
    status_open: bool,
    exited: bool,
    exit_status: Option<i32>,
    retire_when_ready: bool,
    /// Killed before the zygote told us its pid: kill as soon as it does.
    kill_when_pid_known: bool,
    /// Where written task payloads go back for reuse.
    buffers: Arc<BufferPool>,
    killer: Arc<Killer>,
}

impl Worker {
    fn new(buffers: &Arc<BufferPool>, killer: &Arc<Killer>) -> Worker {
        Worker {
            pid: None,
            channels: None,
            fork_control: None,
            zygote: None,
            shared_zygote: None,
            reader: FrameReader::with_buffers(MAX_BODY_LEN, Arc::clone(buffers)),
            status_bytes: Vec::new(),
            outbox: VecDeque::new(),
            state: State::Starting,
            tasks_done: 0,
            result_open: true,
            status_open: true,
            exited: false,
            exit_status: None,
            retire_when_ready: false,
            kill_when_pid_known: false,
            buffers: Arc::clone(buffers),
            killer: Arc::clone(killer),
        }
    }

    fn is_serving(&self) -> bool {
        matches!(
            self.state,
            State::Starting | State::Idle | State::Busy { .. }
        )
    }

    fn kill(&mut self) {
        match self.pid {
            Some(pid) => self.killer.kill_tree(pid),
            None => self.kill_when_pid_known = true,
        }
    }
}

#[derive(Clone, Copy)]
enum FdRole {
    Result,
    Status,
    Task,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    settings: Settings,
    commands: Receiver<Command>,
    events: Sender<Vec<Event>>,
    workers: BTreeMap<u64, Worker>,
    next_worker_id: u64,
    closing: bool,
    spawn_blocked_until: Option<Instant>,
    startup_failures: u32,
    zygotes_to_reap: Vec<Zygote>,
    /// The last `ppoll` found the wake-up fd readable.
    woken: bool,
    /// Dead shared zygotes wait to be reaped (see zygote.rs).
    graveyard_pending: bool,
    killer: Arc<Killer>,
    /// Events of this turn, sent as one message (one wake-up of the
    /// completion thread instead of one per event).
    outbox: RefCell<Vec<Event>>,
}

impl Supervisor {
    pub fn new(
        shared: Arc<Shared>,
        settings: Settings,
        commands: Receiver<Command>,
        events: Sender<Vec<Event>>,
        killer: Killer,
    ) -> Self {
        let killer = Arc::new(killer);
        Supervisor {
            shared,
            settings,
            commands,
            events,
            workers: BTreeMap::new(),
            next_worker_id: 0,
            closing: false,
            spawn_blocked_until: None,
            startup_failures: 0,
            zygotes_to_reap: Vec::new(),
            woken: false,
            graveyard_pending: false,
            killer,
            outbox: RefCell::new(Vec::new()),
        }
    }

    pub fn run(mut self) {
        for _ in 0..self.settings.max_workers {
            self.spawn_worker();
        }
        loop {
            self.shared.waker.drain(std::mem::take(&mut self.woken));
            self.take_commands();
            self.enforce_deadlines(Instant::now());
            self.reap_zygotes();
            self.maintain_workers();
            self.dispatch();
            self.publish_census();
            self.send_events();
            if self.finished() {
                break;
            }
            let timeout = deadline::sleep_until_earliest(self.next_wakeup(), Instant::now());
            self.wait_for_io(timeout);
        }
        self.send_events();
        self.wait_for_zygotes();
    }

    /// The supervisor never calls Python, not even to log: the completion
    /// thread forwards these to the `deadpool` logger.
    fn log(&self, level: log::Level, message: String) {
        self.emit(Event::Log { level, message });
    }

    fn emit(&self, event: Event) {
        self.outbox.borrow_mut().push(event);
    }

    fn send_events(&self) {
        let events = std::mem::take(&mut *self.outbox.borrow_mut());
        if !events.is_empty() {
            // The receiver only goes away with the pool itself; nothing to tell then.
            let _ = self.events.send(events);
        }
    }

    fn finish_task(&self, task_id: u64, outcome: Outcome) {
        if matches!(
            outcome,
            Outcome::Raised(_) | Outcome::TimedOut | Outcome::Lost(_)
        ) {
            Stats::add(&self.shared.stats.tasks_failed);
        }
        self.emit(Event::Finished { task_id, outcome });
    }

    // ----- commands -------------------------------------------------------

    fn take_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(command) => self.handle_command(command),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    // The pool object is gone without a shutdown: finish what runs.
                    self.shared.backlog.close(false);
                    self.closing = true;
                    return;
                }
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Cancel { task_id, reply } => {
                let _ = reply.send(self.cancel_running(task_id));
            }
            Command::Shutdown { kill_running } => {
                self.closing = true;
                if kill_running {
                    self.kill_all_busy();
                }
            }
            Command::ClearWorkers => self.clear_idle_workers(),
            Command::WorkerConfig { worker_id, config } => self.deliver_config(worker_id, config),
            Command::Forked { worker_id, pid } => self.adopt_forked_zygote(worker_id, pid),
        }
    }

    fn cancel_running(&mut self, task_id: u64) -> bool {
        let found = self
            .workers
            .values_mut()
            .find(|w| matches!(w.state, State::Busy { task_id: t, .. } if t == task_id));
        let Some(worker) = found else { return false };
        worker.kill();
        worker.state = State::Killed;
        self.finish_task(task_id, Outcome::Cancelled);
        true
    }

    fn kill_all_busy(&mut self) {
        let mut killed = Vec::new();
        for worker in self.workers.values_mut() {
            if let State::Busy { task_id, .. } = worker.state {
                worker.kill();
                worker.state = State::Killed;
                killed.push(task_id);
            }
        }
        for task_id in killed {
            self.finish_task(task_id, Outcome::Cancelled);
        }
    }

    fn clear_idle_workers(&mut self) {
        for worker in self.workers.values_mut() {
            match worker.state {
                State::Idle => retire(worker),
                State::Starting => worker.retire_when_ready = true,
                _ => {}
            }
        }
    }

    fn deliver_config(&mut self, worker_id: u64, config: Result<Vec<u8>, String>) {
        if let Err(message) = &config {
            self.log(
                log::Level::Error,
                format!("could not make a worker's settings: {message}"),
            );
        }
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        match config {
            Ok(config) => {
                worker
                    .outbox
                    .push_front(PendingWrite::new(Tag::Config, 0, config));
                flush(worker);
            }
            Err(_) => {
                worker.kill();
                worker.state = State::Dying { task_id: None };
            }
        }
    }

    // ----- starting and retiring workers ----------------------------------

    fn spawn_worker(&mut self) {
        let id = self.next_worker_id;
        self.next_worker_id += 1;
        let mut worker = Worker::new(&self.shared.buffers, &self.killer);
        let started = match self.settings.start_method {
            StartMethod::Forkserver => {
                let mut notes = Vec::new();
                let result = zygote::request_shared_worker(&self.settings.launch, &mut notes);
                for note in notes {
                    self.log(log::Level::Warn, note);
                }
                result.map(|(channels, zygote_pid)| {
                    worker.channels = Some(channels);
                    worker.shared_zygote = Some(zygote_pid);
                })
            }
            StartMethod::Spawn => Zygote::launch(&self.settings.launch, true).and_then(|z| {
                worker.channels = Some(z.request_worker()?);
                worker.zygote = Some(z);
                Ok(())
            }),
            StartMethod::Fork => zygote::fork_control_pair().map(|(parent_end, child_end)| {
                worker.fork_control = Some(parent_end);
                self.emit(Event::NeedFork {
                    worker_id: id,
                    child_end,
                });
            }),
        };
        if let Err(error) = started {
            self.startup_failed(&format!("could not start a worker process: {error}"));
            return;
        }
        Stats::add(&self.shared.stats.worker_processes_created);
        if worker.channels.is_some() {
            self.send_config(id, &mut worker);
        }
        self.workers.insert(id, worker);
    }

    fn send_config(&self, worker_id: u64, worker: &mut Worker) {
        match &self.settings.static_config {
            Some(config) => {
                worker
                    .outbox
                    .push_front(PendingWrite::new(Tag::Config, 0, config.clone()));
                flush(worker);
            }
            None => self.emit(Event::NeedConfig { worker_id }),
        }
    }

    fn adopt_forked_zygote(&mut self, worker_id: u64, pid: Result<i32, String>) {
        let Some(mut worker) = self.workers.remove(&worker_id) else {
            return;
        };
        let Some(control) = worker.fork_control.take() else {
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
                worker.channels = Some(channels);
                worker.zygote = Some(zygote);
                self.send_config(worker_id, &mut worker);
                self.workers.insert(worker_id, worker);
            }
            Err(error) => {
                self.zygotes_to_reap.push(zygote);
                self.startup_failed(&format!("could not start a worker process: {error}"));
            }
        }
    }

    /// A worker could not be started or died before it was ready. Back off so a
    /// broken environment cannot spin. Only when workers keep failing to start
    /// (no worker became ready in between) and none is left to serve does the
    /// next task fail, so that nothing waits forever on a pool that cannot
    /// start workers, while a worker killed mid-start (by the OOM killer, say)
    /// costs no task at all.
    fn startup_failed(&mut self, message: &str) {
        self.log(log::Level::Error, message.to_string());
        self.startup_failures += 1;
        let factor = 1u32 << self.startup_failures.min(10).saturating_sub(1);
        let backoff = (SPAWN_BACKOFF_FIRST * factor).min(SPAWN_BACKOFF_MAX);
        self.spawn_blocked_until = Some(Instant::now() + backoff);
        let anyone_serving = self
            .workers
            .values()
            .any(|w| matches!(w.state, State::Idle | State::Busy { .. }));
        if !anyone_serving && self.startup_failures >= STARTUP_FAILURES_BEFORE_GIVING_UP {
            if let Some(task) = self.shared.backlog.pop() {
                let message = format!(
                    "no worker could be started ({} attempts in a row failed); the last: {message}",
                    self.startup_failures
                );
                self.finish_task(task.id, Outcome::Lost(message));
            }
        }
    }

    fn maintain_workers(&mut self) {
        if self
            .spawn_blocked_until
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        self.spawn_blocked_until = None;
        let serving = self.workers.values().filter(|w| w.is_serving()).count();
        let available = self
            .workers
            .values()
            .filter(|w| matches!(w.state, State::Idle | State::Starting) && !w.retire_when_ready)
            .count();
        let waiting = self.shared.backlog.len();
        let floor = if self.closing {
            0
        } else {
            self.settings.min_workers
        };
        let wanted_for_floor = floor.saturating_sub(serving);
        let wanted_for_backlog = waiting
            .saturating_sub(available)
            .min(self.settings.max_workers.saturating_sub(serving));
        for _ in 0..wanted_for_floor.max(wanted_for_backlog) {
            self.spawn_worker();
        }
        if self.closing && waiting == 0 {
            self.retire_everyone_idle();
        }
    }

    fn retire_everyone_idle(&mut self) {
        for worker in self.workers.values_mut() {
            match worker.state {
                State::Idle => retire(worker),
                State::Starting => worker.retire_when_ready = true,
                _ => {}
            }
        }
    }

    /// After each task: retire on max_tasks_per_child, on the memory bound,
    /// or to shrink towards min_workers when there is nothing left to do.
    fn after_task(&mut self, worker_id: u64) {
        let serving = self.workers.values().filter(|w| w.is_serving()).count();
        let backlog_empty = self.shared.backlog.is_empty();
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        worker.tasks_done += 1;
        let used_up = self
            .settings
            .max_tasks_per_child
            .is_some_and(|max| worker.tasks_done >= max);
        let too_big = match (self.settings.max_worker_memory_bytes, worker.pid) {
            (Some(bound), Some(pid)) => {
                process_tree::rss_bytes(pid).is_some_and(|rss| rss >= bound)
            }
            _ => false,
        };
        let surplus = backlog_empty && serving > self.settings.min_workers;
        if used_up || too_big || surplus || (self.closing && backlog_empty) {
            retire(worker);
        } else {
            worker.state = State::Idle;
        }
    }

    // ----- dispatch and deadlines -----------------------------------------

    fn dispatch(&mut self) {
        let idle: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| matches!(w.state, State::Idle))
            .map(|(id, _)| *id)
            .collect();
        for worker_id in idle {
            let Some(task) = self.shared.backlog.pop() else {
                return;
            };
            let Some(worker) = self.workers.get_mut(&worker_id) else {
                continue;
            };
            let deadline = deadline::deadline_for(Instant::now(), task.timeout);
            worker.state = State::Busy {
                task_id: task.id,
                deadline,
            };
            worker
                .outbox
                .push_back(PendingWrite::new(Tag::Task, task.id, task.payload));
            let pid = worker.pid.unwrap_or(0);
            Stats::add(&self.shared.stats.tasks_launched);
            self.emit(Event::Started {
                task_id: task.id,
                pid,
            });
            if let Some(worker) = self.workers.get_mut(&worker_id) {
                if !flush(worker) {
                    self.pipe_closed(worker_id);
                }
            }
        }
    }

    fn enforce_deadlines(&mut self, now: Instant) {
        let mut timed_out = Vec::new();
        let mut stuck = Vec::new();
        for worker in self.workers.values_mut() {
            match worker.state {
                State::Busy {
                    task_id,
                    deadline: Some(deadline),
                } if deadline <= now => {
                    worker.kill();
                    worker.state = State::Killed;
                    timed_out.push(task_id);
                }
                State::Retiring { deadline } if deadline::is_due(deadline, now) => {
                    stuck.push(worker.pid.unwrap_or(0));
                    worker.kill();
                    worker.state = State::Killed;
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
                format!("worker {pid} did not exit within {RETIRE_GRACE:?} of retiring; killed it"),
            );
        }
    }

    fn next_wakeup(&self) -> Vec<Instant> {
        let deadlines = self.workers.values().filter_map(|w| match w.state {
            State::Busy { deadline, .. } => deadline,
            State::Retiring { deadline } => Some(deadline),
            _ => None,
        });
        let reaping = !self.zygotes_to_reap.is_empty() || self.graveyard_pending;
        let reap = reaping.then(|| Instant::now() + REAP_RETRY);
        deadlines
            .chain(self.spawn_blocked_until)
            .chain(reap)
            .collect()
    }

    fn finished(&self) -> bool {
        self.closing
            && self.shared.backlog.is_closed()
            && self.shared.backlog.is_empty()
            && self.workers.is_empty()
    }

    fn publish_census(&self) {
        let alive = self
            .workers
            .values()
            .filter(|w| !w.exited && w.channels.is_some())
            .count() as u64;
        let idle = self
            .workers
            .values()
            .filter(|w| matches!(w.state, State::Idle))
            .count() as u64;
        let busy = self
            .workers
            .values()
            .filter(|w| matches!(w.state, State::Busy { .. }))
            .count() as u64;
        self.shared.stats.publish(Census { alive, idle, busy });
    }

    // ----- I/O ------------------------------------------------------------

    fn wait_for_io(&mut self, timeout: Option<Duration>) {
        let mut pollfds = vec![libc::pollfd {
            fd: self.shared.waker.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut owners: Vec<(u64, FdRole)> = vec![(u64::MAX, FdRole::Result)];
        for (id, worker) in &self.workers {
            let Some(channels) = &worker.channels else {
                continue;
            };
            let mut watch = |fd: RawFd, events: libc::c_short, role: FdRole| {
                pollfds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                owners.push((*id, role));
            };
            if worker.result_open {
                watch(channels.result_r.as_raw_fd(), libc::POLLIN, FdRole::Result);
            }
            if worker.status_open && !worker.exited {
                watch(channels.status_r.as_raw_fd(), libc::POLLIN, FdRole::Status);
            }
            if !worker.outbox.is_empty() {
                watch(channels.task_w.as_raw_fd(), libc::POLLOUT, FdRole::Task);
            }
        }
        if !ppoll(&mut pollfds, timeout) {
            return;
        }
        self.woken = pollfds[0].revents != 0;
        // Results before statuses: a worker's last frame must be read before
        // its exit is handled.
        for pass in [FdRole::Result, FdRole::Task, FdRole::Status] {
            for (pollfd, (id, role)) in pollfds.iter().zip(&owners).skip(1) {
                if pollfd.revents == 0
                    || std::mem::discriminant(role) != std::mem::discriminant(&pass)
                {
                    continue;
                }
                match role {
                    FdRole::Result => self.read_results(*id),
                    FdRole::Task => self.write_pending(*id),
                    FdRole::Status => self.read_status(*id),
                }
            }
        }
    }

    fn write_pending(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !flush(worker) {
            self.pipe_closed(worker_id);
        }
    }

    /// Reads at most one frame: a worker sends one and then waits for us, so
    /// there is nothing more to read now, and skipping the read that would
    /// only say EAGAIN saves a syscall per task.
    fn read_results(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !worker.result_open {
            return;
        }
        let Some(channels) = worker.channels.as_mut() else {
            return;
        };
        match worker.reader.read_from(&mut channels.result_r) {
            Ok(ReadOutcome::Frame(frame)) => self.on_frame(worker_id, frame),
            Ok(ReadOutcome::Pending) => {}
            Ok(ReadOutcome::Eof { .. }) | Err(_) => {
                worker.result_open = false;
                self.pipe_closed(worker_id);
                self.exited_if_orphaned(worker_id);
            }
            Ok(ReadOutcome::Corrupt(error)) => {
                worker.result_open = false;
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
            (Tag::Ready, State::Starting) => {
                if let Ok(bytes) = <[u8; 4]>::try_from(frame.body.as_slice()) {
                    worker.pid = Some(u32::from_le_bytes(bytes) as i32);
                }
                self.startup_failures = 0;
                if worker.retire_when_ready {
                    retire(worker);
                } else {
                    worker.state = State::Idle;
                }
            }
            (Tag::Ok | Tag::Err, &State::Busy { task_id, .. }) if frame.id == task_id => {
                let outcome = match frame.tag {
                    Tag::Ok => Outcome::Returned(frame.body),
                    _ => Outcome::Raised(frame.body),
                };
                self.finish_task(task_id, outcome);
                self.after_task(worker_id);
            }
            // A result racing with our kill (timeout, cancel): already resolved.
            (Tag::Ok | Tag::Err, State::Killed) => {}
            (tag, _) => self.protocol_broken(worker_id, &format!("unexpected {tag:?} frame")),
        }
    }

    /// The worker wrote something it must not have: kill it and fail its task.
    fn protocol_broken(&mut self, worker_id: u64, detail: &str) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let pid = worker.pid.unwrap_or(0);
        let task = match worker.state {
            State::Busy { task_id, .. } => Some(task_id),
            _ => None,
        };
        worker.kill();
        worker.state = State::Killed;
        if let Some(task_id) = task {
            let message =
                format!("Subprocess {pid} broke the result protocol ({detail}) and was replaced");
            self.finish_task(task_id, Outcome::Lost(message));
        }
    }

    /// A pipe to the worker closed: it died, or closed its own descriptors.
    /// Kill it to be sure, and resolve its task once the exit status is known.
    fn pipe_closed(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let task_id = match worker.state {
            State::Busy { task_id, .. } => Some(task_id),
            State::Idle => None,
            // Stays Starting, so its exit counts as a start-up failure.
            State::Starting => {
                if !worker.exited {
                    worker.kill();
                }
                return;
            }
            State::Retiring { .. } | State::Killed | State::Dying { .. } => return,
        };
        if !worker.exited {
            worker.kill();
        }
        worker.state = State::Dying { task_id };
    }

    /// A worker whose zygote died has nobody to report its exit: once its
    /// result pipe closes too (and it has been killed to be sure), it is gone.
    fn exited_if_orphaned(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !worker.status_open && !worker.exited {
            worker.exited = true;
            self.worker_exited(worker_id);
        }
    }

    fn read_status(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let Some(channels) = worker.channels.as_mut() else {
            return;
        };
        let mut buf = [0u8; 64];
        loop {
            match channels.status_r.read(&mut buf) {
                Ok(0) => {
                    worker.status_open = false;
                    break;
                }
                Ok(n) => worker.status_bytes.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    worker.status_open = false;
                    break;
                }
            }
        }
        while worker.status_bytes.len() >= STATUS_RECORD_LEN {
            let record: Vec<u8> = worker.status_bytes.drain(..STATUS_RECORD_LEN).collect();
            let kind = u32::from_le_bytes([record[0], record[1], record[2], record[3]]);
            let value = i32::from_le_bytes([record[4], record[5], record[6], record[7]]);
            match kind {
                STATUS_KIND_PID => {
                    worker.pid = Some(value);
                    if worker.kill_when_pid_known && !worker.exited {
                        worker.killer.kill_tree(value);
                    }
                }
                STATUS_KIND_EXIT => {
                    worker.exit_status = Some(value);
                    worker.exited = true;
                }
                _ => {}
            }
        }
        let zygote_died = !worker.status_open && !worker.exited;
        if zygote_died {
            if let Some(pid) = worker.shared_zygote {
                zygote::bury_shared(pid);
                self.graveyard_pending = true;
            }
            if !worker.result_open {
                worker.exited = true;
            }
        }
        if worker.exited {
            self.read_results(worker_id);
            self.worker_exited(worker_id);
        }
    }

    fn worker_exited(&mut self, worker_id: u64) {
        let Some(worker) = self.workers.remove(&worker_id) else {
            return;
        };
        let pid = worker.pid.unwrap_or(0);
        let description = describe_death(pid, worker.exit_status);
        match worker.state {
            State::Busy { task_id, .. }
            | State::Dying {
                task_id: Some(task_id),
            } => {
                self.finish_task(task_id, Outcome::Lost(description));
            }
            State::Starting => self.startup_failed(&format!("{description} while starting")),
            State::Idle | State::Dying { task_id: None } => {
                self.log(
                    log::Level::Warn,
                    format!("an idle worker died: {description}"),
                );
            }
            State::Retiring { .. } | State::Killed => {}
        }
        if let Some(zygote) = worker.zygote {
            if !zygote.try_reap() {
                self.zygotes_to_reap.push(zygote);
            }
        }
    }

    fn reap_zygotes(&mut self) {
        self.zygotes_to_reap.retain(|zygote| !zygote.try_reap());
        self.graveyard_pending = !zygote::reap_graveyard();
    }

    /// Per-worker zygotes exit right after their worker, and a dead shared one
    /// may still await reaping; give them a moment so the pool leaves no zombie.
    fn wait_for_zygotes(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        self.reap_zygotes();
        while (!self.zygotes_to_reap.is_empty() || self.graveyard_pending)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
            self.reap_zygotes();
        }
    }
}

fn retire(worker: &mut Worker) {
    worker
        .outbox
        .push_back(PendingWrite::new(Tag::Retire, 0, Vec::new()));
    worker.state = State::Retiring {
        deadline: Instant::now() + RETIRE_GRACE,
    };
    flush(worker);
}

/// Writes what the task pipe takes now; false when the pipe is broken.
fn flush(worker: &mut Worker) -> bool {
    let Some(channels) = worker.channels.as_mut() else {
        return true;
    };
    while let Some(pending) = worker.outbox.front_mut() {
        match pending.write_to(&mut channels.task_w) {
            Ok(true) => {
                if let Some(done) = worker.outbox.pop_front() {
                    worker.buffers.give(done.into_body());
                }
            }
            Ok(false) => return true,
            Err(_) => {
                worker.outbox.clear();
                return false;
            }
        }
    }
    true
}

/// `ppoll` with microsecond resolution, so deadlines are kept to well under a
/// millisecond. Returns false when nothing is ready (timeout or signal).
fn ppoll(pollfds: &mut [libc::pollfd], timeout: Option<Duration>) -> bool {
    let timespec = timeout.map(deadline::to_timespec);
    let timespec_ptr = timespec
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the slice is valid for its length; a null timeout means "forever".
    let ready = unsafe {
        libc::ppoll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            timespec_ptr,
            std::ptr::null(),
        )
    };
    ready > 0
}

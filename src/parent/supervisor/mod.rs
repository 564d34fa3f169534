//! The supervisor: one thread per pool that owns every worker and never
//! touches Python (it does not even log: log lines travel as events).
//!
//! ```text
//!  submit() ──▶ Backlog ──pop──┐            commands (cancel, shutdown, clear,
//!  (caller)   (priority,id)    │             settings, forked) ──┐
//!                              ▼                                 ▼
//!           ┌──────────── supervisor loop (this thread) ─────────────┐
//!           │ drain waker ▸ commands ▸ deadlines ▸ memory limits ▸   │
//!           │ reap zygotes ▸                                          │
//!           │ staff (spawn/retire) ▸ dispatch ▸ census ▸ send events │
//!           │ ▸ ppoll(waker, result/status pipes, task pipes with    │
//!           │         output pending; until the nearest deadline)    │
//!           └──┬──────────────▲───────────────┬──────────────────────┘
//!        task  │ frames       │ result frames │ status records (pid, exit)
//!              ▼              │               ▲
//!            worker ─────────-┘           its zygote (reaps it)
//!
//!  events (Started, Finished, NeedConfig, NeedFork, Log) ──▶ completion
//!  thread (bindings/completion.rs) ──▶ the shim's dispatcher ──▶ futures
//! ```
//!
//! Pipe I/O with workers is non-blocking, so a dead, stuck or malicious worker
//! can delay nothing but its own task. Starting a worker talks to a zygote
//! (parent/zygote_client.rs says why that brief blocking is safe). Tree kills
//! run on the killer thread, since walking /proc takes milliseconds.
//!
//! Files: `worker.rs` (the worker record and its states), `policy.rs` (the
//! sizing and retirement rules), `staffing.rs` (starting and retiring),
//! `commands.rs`, `dispatch.rs` (tasks out, deadlines), `memory.rs` (per-task
//! memory limits), `inbound.rs` (frames and status records in), `poll.rs`
//! (the wait).
//!
//! Zygotes by start method: "forkserver" shares one exec'd zygote among all
//! pools of the process; "spawn" execs one per worker; "fork" forks one per
//! pool from the thread that makes the pool (a safe point, as the stdlib
//! forks in the thread that submits) and every worker from it, so no worker
//! is ever forked from a background thread of the user's process.

mod commands;
mod dispatch;
mod inbound;
mod memory;
mod policy;
mod poll;
mod staffing;
mod worker;

use crate::parent::backlog::Backlog;
use crate::parent::buffers::BufferPool;
use crate::parent::deadline;
use crate::parent::killer::Killer;
use crate::parent::messages::{Command, Event, Outcome};
use crate::parent::segments::SegmentPool;
use crate::parent::stats::{Census, Stats};
use crate::parent::waker::Waker;
use crate::parent::zygote_client::{self, Zygote, ZygoteLaunch};
use crossbeam_channel::{Receiver, Sender};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{State, Worker};

/// How soon to look again for a zygote that has not exited yet.
const REAP_RETRY: Duration = Duration::from_millis(20);
/// How long a finished pool waits for its zygotes to be reapable.
const ZYGOTE_REAP_LIMIT: Duration = Duration::from_secs(2);
const ZYGOTE_REAP_POLL: Duration = Duration::from_millis(5);

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
    /// "fork": the zygote the shim forked from the user's thread that made
    /// the pool; every worker of the pool is forked from it.
    pub pool_zygote: Option<Zygote>,
}

/// What the Python-facing side and the supervisor both hold.
pub struct Shared {
    pub backlog: Backlog,
    pub waker: Arc<Waker>,
    pub stats: Stats,
    pub buffers: Arc<BufferPool>,
    pub segments: Arc<SegmentPool>,
}

impl Shared {
    /// `shared_memory_cap`: bytes of segments lent out at once, at most.
    pub fn new(max_backlog: usize, shared_memory_cap: u64) -> std::io::Result<Shared> {
        let waker = Arc::new(Waker::new()?);
        Ok(Shared {
            backlog: Backlog::new(max_backlog),
            segments: SegmentPool::new(shared_memory_cap, Some(Arc::clone(&waker))),
            waker,
            stats: Stats::default(),
            buffers: Arc::new(BufferPool::new()),
        })
    }
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
    /// "fork": the zygote workers come from, and whether a new one is being
    /// forked (the completion thread was asked: `Event::NeedFork`).
    pool_zygote: Option<Zygote>,
    fork_in_flight: bool,
    /// When to look at the memory of the memory-limited tasks' trees next;
    /// `None` while no such task runs (then nothing is polled).
    memory_check_at: Option<Instant>,
    /// When the next free shared-memory segment is due to be freed.
    segment_expiry: Option<Instant>,
    /// The last `ppoll` found the wake-up fd readable.
    woken: bool,
    /// Dead shared zygotes wait to be reaped (see zygote_client.rs).
    graveyard_pending: bool,
    killer: Arc<Killer>,
    /// Events of this turn, sent as one message (one wake-up of the
    /// completion thread instead of one per event).
    pending_events: Vec<Event>,
}

impl Supervisor {
    pub fn new(
        shared: Arc<Shared>,
        mut settings: Settings,
        commands: Receiver<Command>,
        events: Sender<Vec<Event>>,
        killer: Killer,
    ) -> Self {
        let pool_zygote = settings.pool_zygote.take();
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
            pool_zygote,
            fork_in_flight: false,
            memory_check_at: None,
            segment_expiry: None,
            woken: false,
            graveyard_pending: false,
            killer: Arc::new(killer),
            pending_events: Vec::new(),
        }
    }

    pub fn run(mut self) {
        let _user = (self.settings.start_method == StartMethod::Forkserver)
            .then(zygote_client::SharedZygoteUser::register);
        for _ in 0..self.settings.max_workers {
            self.spawn_worker();
        }
        loop {
            self.shared.waker.drain(std::mem::take(&mut self.woken));
            self.take_commands();
            let now = Instant::now();
            self.enforce_deadlines(now);
            self.enforce_memory_limits(now);
            self.reap_zygotes();
            self.maintain_workers();
            self.dispatch();
            self.segment_expiry = self.shared.segments.expire(now);
            self.publish_census();
            self.send_events();
            if self.finished() {
                break;
            }
            let timeout = deadline::sleep_until_earliest(self.next_wakeup(), Instant::now());
            self.wait_for_io(timeout);
        }
        self.send_events();
        if let Some(mut zygote) = self.pool_zygote.take() {
            zygote.let_go();
            self.zygotes_to_reap.push(zygote);
        }
        self.wait_for_zygotes();
        self.workers.clear();
        // The pool's memory goes with it; results still on their way to
        // Python free theirs as they are read.
        self.shared.segments.close();
    }

    /// The completion thread forwards these to the `deadpool` logger.
    fn log(&mut self, level: log::Level, message: String) {
        self.emit(Event::Log { level, message });
    }

    fn emit(&mut self, event: Event) {
        self.pending_events.push(event);
    }

    fn send_events(&mut self) {
        let events = std::mem::take(&mut self.pending_events);
        if !events.is_empty() {
            // The receiver only goes away with the pool itself; nothing to tell then.
            let _ = self.events.send(events);
        }
    }

    fn finish_task(&mut self, task_id: u64, outcome: Outcome) {
        let stats = &self.shared.stats;
        if outcome.failed() {
            Stats::add(&stats.tasks_failed);
        }
        if matches!(outcome, Outcome::TimedOut(_)) {
            Stats::add(&stats.tasks_timed_out);
        }
        if outcome.over_memory() {
            Stats::add(&stats.tasks_over_memory_limit);
        }
        self.emit(Event::Finished { task_id, outcome });
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
            .chain(self.memory_check_at)
            .chain(self.segment_expiry)
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
        let count = |keep: fn(&Worker) -> bool| self.workers.values().filter(|w| keep(w)).count();
        self.shared.stats.publish(Census {
            alive: count(|w| !w.has_exited()) as u64,
            idle: count(|w| matches!(w.state, State::Idle)) as u64,
            busy: count(|w| matches!(w.state, State::Busy { .. })) as u64,
        });
    }

    fn reap_zygotes(&mut self) {
        self.zygotes_to_reap.retain(|zygote| !zygote.try_reap());
        self.graveyard_pending = !zygote_client::reap_graveyard();
    }

    /// Per-worker zygotes exit right after their worker, and a dead shared one
    /// may still await reaping; give them a moment so the pool leaves no zombie.
    fn wait_for_zygotes(&mut self) {
        let deadline = Instant::now() + ZYGOTE_REAP_LIMIT;
        self.reap_zygotes();
        while (!self.zygotes_to_reap.is_empty() || self.graveyard_pending)
            && Instant::now() < deadline
        {
            std::thread::sleep(ZYGOTE_REAP_POLL);
            self.reap_zygotes();
        }
    }
}

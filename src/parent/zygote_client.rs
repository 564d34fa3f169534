//! The parent's side of the zygotes: single-threaded Python processes
//! (python/deadpool/_zygote.py) that fork workers on request.
//!
//! Forking the user's multi-threaded interpreter is unsafe (locks held by other
//! threads stay locked in the child), so workers are forked by a zygote started
//! fresh with `exec`. The default start method shares one zygote per parent
//! process; "spawn" starts one fresh zygote per worker (a new interpreter for
//! each) and "fork" makes the per-worker zygote by forking the parent.
//!
//! A request is one message on the zygote's control socket carrying four file
//! descriptors (see wire/request.rs). The zygote answers on the status pipe
//! with the worker's pid and, once it has reaped the worker, its real wait
//! status (wire/status.rs). The control socket is also the zygote's lifeline:
//! EOF means the parent died.
//!
//! The control socket reaches an exec'd zygote as its standard input, so
//! that `Command` can use `posix_spawn` (no copy of the parent's address
//! space, no Rust code between fork and exec); the zygote moves it to another
//! descriptor and puts /dev/null in its place, as multiprocessing gives its
//! children. Talking to a zygote blocks, briefly: the requests are a few bytes
//! on a socket buffer that holds thousands, and the preparation data is sent
//! once, to a zygote that reads it first thing.

use crate::os::fd_passing;
use crate::os::fork_reset::ForkResetMutex;
use crate::wire::request::{self, WORKER_REQUEST_FDS};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, Pid};
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};

/// Pipe capacity we ask for: large frames then cross in few wake-ups.
const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// How to start a zygote: the interpreter command line and the pickled
/// `multiprocessing.spawn` preparation data (sys.path, the `__main__` module...).
#[derive(Clone, Debug)]
pub struct ZygoteLaunch {
    pub argv: Vec<String>,
    pub preparation: Vec<u8>,
}

/// The parent's ends of one worker's private channels.
pub struct WorkerChannels {
    pub task_w: File,
    pub result_r: File,
    pub status_r: File,
    /// Carries shared-memory segments both ways (os/fd_passing.rs).
    pub segments: OwnedFd,
}

pub struct Zygote {
    pid: i32,
    control: Lifeline,
    owner_pid: u32,
}

/// A zygote's control socket, the parent's end: the zygote takes its end of
/// file for "the parent is gone". Every one open in this process is listed,
/// so that a child made by `os.fork()` closes its copies: a copy left open in
/// a long-lived child would keep a zygote alive after this process died.
struct Lifeline(Option<OwnedFd>);

static LIFELINES: ForkResetMutex<HashSet<RawFd>> = ForkResetMutex::new();

impl Lifeline {
    fn new(fd: OwnedFd) -> Lifeline {
        LIFELINES.lock().insert(fd.as_raw_fd());
        Lifeline(Some(fd))
    }

    fn fd(&self) -> io::Result<BorrowedFd<'_>> {
        self.0
            .as_ref()
            .map(|fd| fd.as_fd())
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Closes it (under the list's lock, so no fork sees it half-done).
    fn cut(&mut self) {
        if let Some(fd) = self.0.take() {
            let mut lifelines = LIFELINES.lock();
            lifelines.remove(&fd.as_raw_fd());
            drop(fd);
        }
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        self.cut();
    }
}

impl Zygote {
    /// Starts a zygote with a fresh `exec` of the interpreter.
    pub fn launch(launch: &ZygoteLaunch, single_worker: bool) -> io::Result<Zygote> {
        let (parent_end, child_end) = control_pair()?;
        let (program, args) = launch.argv.split_first().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "empty interpreter command")
        })?;
        let script = format!(
            "from deadpool._zygote import zygote_main_from_stdin; zygote_main_from_stdin({})",
            if single_worker { "True" } else { "False" }
        );
        let child = Command::new(program)
            .args(args)
            .arg("-c")
            .arg(script)
            .stdin(Stdio::from(child_end))
            .spawn()?;
        let zygote = Zygote::adopt(child.id() as i32, parent_end);
        zygote.send_preparation(&launch.preparation)?;
        Ok(zygote)
    }

    /// Takes charge of the zygote `pid` whose control socket is `control`
    /// (one we started, or one the caller forked itself: "fork").
    pub fn adopt(pid: i32, control: OwnedFd) -> Zygote {
        Zygote {
            pid,
            control: Lifeline::new(control),
            owner_pid: std::process::id(),
        }
    }

    /// Closes its lifeline: a zygote serving many workers then kills what
    /// is left below it and exits, to be reaped.
    pub fn let_go(&mut self) {
        self.control.cut();
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn send_preparation(&self, preparation: &[u8]) -> io::Result<()> {
        let mut control = File::from(self.control.fd()?.try_clone_to_owned()?);
        request::write_preparation(&mut control, preparation)
    }

    /// Asks the zygote for one worker and returns the parent's channel ends,
    /// already non-blocking.
    pub fn request_worker(&self) -> io::Result<WorkerChannels> {
        request_worker(self.control.fd()?)
    }

    /// Reaps the zygote if it has exited; true once it is gone.
    pub fn try_reap(&self) -> bool {
        matches!(
            waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_)
        )
    }
}

fn control_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends one worker request on `control` with fresh pipes; returns the
/// parent's ends, already non-blocking.
pub fn request_worker(control: std::os::fd::BorrowedFd<'_>) -> io::Result<WorkerChannels> {
    let (task_r, task_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (result_r, result_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (segments, segments_theirs) = fd_passing::pair()?;
    for fd in [&task_w, &result_r] {
        // Best effort: a smaller pipe only costs extra wake-ups.
        let _ = fcntl(fd, FcntlArg::F_SETPIPE_SZ(PIPE_CAPACITY));
    }
    let fds: [_; WORKER_REQUEST_FDS] = [
        task_r.as_raw_fd(),
        result_w.as_raw_fd(),
        status_w.as_raw_fd(),
        segments_theirs.as_raw_fd(),
    ];
    request::send_worker_request(control, fds)?;
    drop((task_r, result_w, status_w, segments_theirs));
    for fd in [&task_w, &result_r, &status_r, &segments] {
        set_nonblocking(fd)?;
    }
    Ok(WorkerChannels {
        task_w: File::from(task_w),
        result_r: File::from(result_r),
        status_r: File::from(status_r),
        segments,
    })
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The zygote shared by every pool of this process (the default start method).
static SHARED: ForkResetMutex<Option<Zygote>> = ForkResetMutex::new();

/// Requests a worker from the shared zygote, starting (or restarting) it as
/// needed. Losing the zygote therefore never breaks a pool: the next request
/// starts a new one.
/// `notes` collects what is worth logging (the caller may not log directly).
/// Returns the worker's channels and the pid of the zygote that made it.
pub fn request_shared_worker(
    launch: &ZygoteLaunch,
    notes: &mut Vec<String>,
) -> io::Result<(WorkerChannels, i32)> {
    let mut dead = None;
    let result = request_from_shared(launch, notes, &mut dead);
    if let Some(zygote) = dead {
        bury(zygote);
    }
    result
}

fn request_from_shared(
    launch: &ZygoteLaunch,
    notes: &mut Vec<String>,
    dead: &mut Option<Zygote>,
) -> io::Result<(WorkerChannels, i32)> {
    let mut shared = SHARED.lock();
    if let Some(zygote) = shared.as_ref() {
        if zygote.owner_pid != std::process::id() {
            // Inherited through os.fork(): that zygote belongs to our parent.
            *shared = None;
        }
    }
    if let Some(zygote) = shared.as_ref() {
        match zygote.request_worker() {
            Ok(channels) => return Ok((channels, zygote.pid)),
            Err(error) => {
                notes.push(format!(
                    "zygote {} is gone ({error}); starting a new one",
                    zygote.pid
                ));
                // Buried below, after the lock: SHARED is never held while
                // GRAVEYARD is taken.
                *dead = shared.take();
            }
        }
    }
    let zygote = Zygote::launch(launch, false)?;
    let pid = zygote.pid;
    let channels = zygote.request_worker();
    *shared = Some(zygote);
    Ok((channels?, pid))
}

/// Shared zygotes that are gone but not yet reaped. A broken control socket
/// closes a moment before the process becomes reapable, so one look is not
/// enough; they are looked at again until reaped, so none stays a zombie.
static GRAVEYARD: ForkResetMutex<Vec<Zygote>> = ForkResetMutex::new();

fn bury(zygote: Zygote) {
    // Its lifeline is broken either way; make sure it is really going.
    let _ = nix::sys::signal::kill(Pid::from_raw(zygote.pid), nix::sys::signal::Signal::SIGKILL);
    if !zygote.try_reap() {
        GRAVEYARD.lock().push(zygote);
    }
}

/// Reaps dead zygotes; true when none is left waiting to be reaped.
pub fn reap_graveyard() -> bool {
    let mut graveyard = GRAVEYARD.lock();
    graveyard.retain(|zygote| !zygote.try_reap());
    graveyard.is_empty()
}

/// The shared zygote `pid` has died (a worker's status pipe closed without an
/// exit record): if it is still the current one, the next request starts a new
/// one, and it waits in the graveyard to be reaped.
pub fn bury_shared(pid: i32) {
    let mut shared = SHARED.lock();
    if shared.as_ref().is_some_and(|zygote| zygote.pid == pid) {
        if let Some(dead) = shared.take() {
            drop(shared);
            bury(dead);
        }
    }
}

/// Pools of this process that use the shared zygote.
static SHARED_ZYGOTE_USERS: ForkResetMutex<usize> = ForkResetMutex::new();

/// Held by a pool for as long as it may ask the shared zygote for workers.
/// When the last one goes, the zygote is told to let its spare child go, so
/// that, as with the stdlib's forkserver, nothing but the zygote outlives
/// the pools.
pub struct SharedZygoteUser(());

impl SharedZygoteUser {
    pub fn register() -> SharedZygoteUser {
        *SHARED_ZYGOTE_USERS.lock() += 1;
        SharedZygoteUser(())
    }
}

impl Drop for SharedZygoteUser {
    fn drop(&mut self) {
        let remaining = {
            let mut users = SHARED_ZYGOTE_USERS.lock();
            *users = users.saturating_sub(1);
            *users
        };
        if remaining == 0 {
            if let Some(zygote) = SHARED.lock().as_ref() {
                // A zygote that is gone has no spare to release.
                if let Ok(control) = zygote.control.fd() {
                    let _ = request::send_release_spare(control);
                }
            }
        }
    }
}

/// The pid of the shared zygote, if one is running.
pub fn shared_zygote_pid() -> Option<i32> {
    SHARED.lock().as_ref().map(Zygote::pid)
}

/// In a child made by `os.fork()`: start with fresh locks (one held by
/// another thread at fork time would never be released here), and close the
/// inherited copy of every zygote's lifeline, so that each zygote still sees
/// its lifeline close when the parent dies. The parent's zygote handles are
/// forgotten, not dropped: those zygotes are the parent's, not ours to reap
/// or to talk to. (A lock held at the fork leaks what it guards; a lifeline
/// listed under it then stays open in this child until it exits.)
pub fn forget_shared_after_fork() {
    let inherited = LIFELINES.reset_after_fork().unwrap_or_default();
    std::mem::forget(SHARED.reset_after_fork());
    std::mem::forget(GRAVEYARD.reset_after_fork());
    let _ = SHARED_ZYGOTE_USERS.reset_after_fork();
    for fd in inherited {
        // SAFETY: a copy of a lifeline made by the fork; nothing in this child
        // owns it (the handles holding it were forgotten above, or belong to
        // pool threads that do not exist here).
        unsafe { libc::close(fd) };
    }
}

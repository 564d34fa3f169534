//! What a freshly started child process does to itself before it runs user
//! code: process groups, parent-death signals, subreaping, its name.

use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{getppid, setpgid, Pid};
use std::io;

/// Makes the calling process a proper worker of the zygote `zygote_pid`:
/// - leader of its own process group, so one `killpg` reaches its tree and a
///   terminal's Ctrl-C (sent to the parent's group) does not;
/// - a child subreaper, so orphans of a task stay in its tree to be killed;
/// - with `die_with_zygote`, SIGKILLed when the zygote dies (safe: a zygote is
///   single-threaded, so "the thread that forked us" is the zygote itself).
///
/// Workers of an exec'd zygote do not die with it: if the zygote is killed,
/// they finish their tasks over their own pipes (the parent's death still
/// reaches them through the zygote's lifeline, or their task pipe's EOF).
pub fn become_worker(zygote_pid: i32, die_with_zygote: bool) -> io::Result<()> {
    setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    if die_with_zygote {
        die_with_parent(Signal::SIGKILL, zygote_pid, "the zygote")?;
    }
    prctl::set_child_subreaper(true)?;
    Ok(())
}

/// For a zygote forked straight from the parent ("fork" start method): get
/// SIGTERM when the parent thread that forked it ends (it lives as long as its
/// pool, and dies with the parent), and handle it by killing everything below.
pub fn become_forked_zygote(parent_pid: i32) -> io::Result<()> {
    die_with_parent(Signal::SIGTERM, parent_pid, "the parent")?;
    prctl::set_child_subreaper(true)?;
    Ok(())
}

/// An exec'd zygote: orphans of its workers become its children, so it can
/// reap them and kill them when its lifeline goes.
pub fn become_zygote() -> io::Result<()> {
    Ok(prctl::set_child_subreaper(true)?)
}

/// Asks for `signal` when the parent goes, then checks that the parent is
/// still `parent_pid`: had it died before the request, no signal would come.
fn die_with_parent(signal: Signal, parent_pid: i32, parent: &str) -> io::Result<()> {
    prctl::set_pdeathsig(signal)?;
    if getppid().as_raw() != parent_pid {
        return Err(io::Error::other(format!(
            "{parent} died while this process was starting"
        )));
    }
    Ok(())
}

/// This thread's name, as `ps` and `/proc/<pid>/comm` show it for a
/// process's main thread. (Read from /proc: nix's `prctl::get_name` hands the
/// kernel a buffer it declares immutable, and optimised builds read zeros.)
pub fn process_name() -> io::Result<String> {
    let comm = std::fs::read_to_string("/proc/thread-self/comm")?;
    Ok(comm.trim_end_matches('\n').to_string())
}

/// Renames this process (the kernel keeps the first 15 bytes).
pub fn set_process_name(name: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    Ok(prctl::set_name(&name)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_name_round_trips() {
        // prctl names the calling thread: do it on a thread of our own.
        std::thread::spawn(|| {
            set_process_name("deadpool-test").expect("set");
            assert_eq!(process_name().expect("get"), "deadpool-test");
            set_process_name("a-name-longer-than-fifteen").expect("set");
            assert_eq!(process_name().expect("get"), "a-name-longer-t");
        })
        .join()
        .expect("thread");
    }
}

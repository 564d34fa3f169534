//! What a freshly started child process does to itself before it runs user
//! code: its process group, subreaping, its name.

use nix::sys::prctl;
use nix::unistd::{setpgid, Pid};
use std::io;

/// Makes the calling process a proper worker:
/// - leader of its own process group, so one `killpg` reaches its tree and a
///   terminal's Ctrl-C (sent to the parent's group) does not;
/// - a child subreaper, so orphans of a task stay in its tree to be killed.
///
/// Workers do not die with their zygote: if it is killed, they finish their
/// tasks over their own pipes (the parent's death still reaches them through
/// the zygote's lifeline, or their task pipe's end of file).
pub fn become_worker() -> io::Result<()> {
    setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
    prctl::set_child_subreaper(true)?;
    Ok(())
}

/// A zygote: orphans of its workers become its children, so it can reap
/// them and kill them when its lifeline goes.
pub fn become_zygote() -> io::Result<()> {
    Ok(prctl::set_child_subreaper(true)?)
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

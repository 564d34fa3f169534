//! Finding and killing a worker's whole process tree, and reading its memory.
//!
//! Workers lead their own process group and are child subreapers, so a task's
//! children, grandchildren and orphans stay below the worker in the `ppid` tree
//! even after a `setsid()` or after their own parent has exited. A kill
//! therefore walks `/proc` for descendants *before* killing anything (killing
//! the worker first would re-parent its tree out of reach).

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashSet;
use std::io::Read;

/// `(pid, ppid)` of every live (not exited) process whose pid is above `above`.
/// Reading each process's status is what costs; listing `/proc` is cheap, so
/// a scan for new pids only is fast.
fn live_processes(above: i32) -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= above {
            continue;
        }
        if let Some((state, ppid)) = state_and_parent(pid) {
            if state != b'Z' && state != b'X' {
                found.push((pid, ppid));
            }
        }
    }
    found
}

/// The state letter and parent pid from `/proc/<pid>/stat`, or `None` once
/// the process is gone. One open and one read into the stack, parsing two
/// fields: a kill scans every process on the machine, and a full parse of
/// each stat (as a general-purpose reader does) made that scan cost more
/// CPU than starting the replacement worker.
pub(super) fn state_and_parent(pid: i32) -> Option<(u8, i32)> {
    let mut buffer = [0u8; 1024];
    let filled = read_start_of(&format!("/proc/{pid}/stat"), &mut buffer)?;
    parse_state_and_parent(&buffer[..filled])
}

/// Reads as much of `path` as fits in `buffer` (a `/proc` file whose first
/// fields are all a caller wants), with no allocation; the bytes read.
pub(super) fn read_start_of(path: &str, buffer: &mut [u8]) -> Option<usize> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(filled)
}

/// `pid (comm) S ppid ...`: the command may hold spaces and parentheses, so
/// the fields start after the last `)`.
fn parse_state_and_parent(stat: &[u8]) -> Option<(u8, i32)> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|field| !field.is_empty());
    let state = *fields.next()?.first()?;
    let ppid = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
    Some((state, ppid))
}

/// Adds to `members` every process of `processes` whose parent is a member
/// (repeatedly, so grandchildren found in the same scan count too).
pub(super) fn absorb(members: &mut HashSet<i32>, processes: &[(i32, i32)]) {
    loop {
        let before = members.len();
        for &(pid, ppid) in processes {
            if members.contains(&ppid) {
                members.insert(pid);
            }
        }
        if members.len() == before {
            return;
        }
    }
}

/// Every live descendant of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let processes = live_processes(0);
    let mut members = HashSet::from([root]);
    absorb(&mut members, &processes);
    processes
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| *pid != root && members.contains(pid))
        .collect()
}

/// Upper bound on scan-and-kill passes for a tree that keeps forking.
const MAX_PASSES: usize = 400;
/// Every this many passes, scan all pids again (in case pids wrapped around).
const FULL_SCAN_EVERY: usize = 16;
/// Quick scans in a row that find nothing, after which the tree is taken
/// for dead without waiting for the next full scan.
const QUIET_QUICK_SCANS_TO_STOP: u32 = 3;

/// SIGKILLs `root`'s descendants until none is left alive, then `root` and its
/// process group. `root` is stopped first and dies last: while it lives,
/// orphans of the tree are re-parented to it (a subreaper) and stay findable.
///
/// A process that keeps forking (its parent exiting each time) can outrun a
/// scan of all of `/proc`. Pids are handed out in increasing order, so after
/// one full scan the next passes read only pids above the highest seen: such
/// a pass takes microseconds, and a SIGKILL that lands while the process is
/// inside `fork()` aborts the fork. Errors are ignored on purpose: a process
/// that is already gone is exactly what we want.
pub fn kill_tree(root: i32) {
    if root <= 0 {
        return;
    }
    let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    kill_descendants(root);
    let _ = killpg(Pid::from_raw(root), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
}

/// Sends `signal` once to `root`'s descendants, its process group and
/// `root`: a request to stop (SIGTERM), which the processes may handle, so
/// unlike [`kill_tree`] nothing is stopped first or chased after.
pub fn signal_tree(root: i32, signal: Signal) {
    if root <= 0 {
        return;
    }
    for pid in descendants(root) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
    let _ = killpg(Pid::from_raw(root), signal);
    let _ = kill(Pid::from_raw(root), signal);
}

/// SIGKILLs every descendant of `root` but not `root` itself, pass after pass
/// until none is left (see [`kill_tree`]). A retiring worker calls this on
/// itself so that nothing a task left running outlives the worker. Returns how
/// many processes were killed.
pub fn kill_descendants(root: i32) -> usize {
    let mut members = HashSet::from([root]);
    let mut highest_seen = 0;
    let mut quiet_passes = 0;
    let mut killed = 0;
    for pass in 0..MAX_PASSES {
        let full = pass % FULL_SCAN_EVERY == 0;
        let processes = live_processes(if full { 0 } else { highest_seen });
        highest_seen = processes
            .iter()
            .map(|(pid, _)| *pid)
            .fold(highest_seen, i32::max);
        absorb(&mut members, &processes);
        let alive: Vec<i32> = processes
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| *pid != root && members.contains(pid))
            .collect();
        for &pid in &alive {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        killed += alive.len();
        quiet_passes = if alive.is_empty() {
            quiet_passes + 1
        } else {
            0
        };
        // Done after a quiet full scan (nothing anywhere) or several quiet
        // quick ones following it.
        if alive.is_empty() && (full || quiet_passes >= QUIET_QUICK_SCANS_TO_STOP) && pass > 0 {
            break;
        }
    }
    killed
}

/// Resident set size in bytes, or `None` when the process is gone.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let process = procfs::process::Process::new(pid).ok()?;
    let statm = process.statm().ok()?;
    Some(statm.resident * procfs::page_size())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_the_last_parenthesis() {
        assert_eq!(
            parse_state_and_parent(b"42 (a (weird) name) R 7 42 42 0 -1"),
            Some((b'R', 7))
        );
        assert_eq!(parse_state_and_parent(b"1 (init) S 0 1 1"), Some((b'S', 0)));
        assert_eq!(parse_state_and_parent(b"garbage"), None);
        assert_eq!(parse_state_and_parent(b"5 (x) Z"), None);
    }

    #[test]
    fn reads_this_process_with_its_real_parent() {
        let (state, ppid) = state_and_parent(std::process::id() as i32).expect("own stat");
        assert_eq!(ppid, nix::unistd::getppid().as_raw());
        // The main thread's state: this test may run on another thread.
        assert!(b"RS".contains(&state), "state {}", state as char);
    }
    use std::process::Command;

    #[test]
    fn finds_and_kills_a_grandchild() {
        // sh -> sleep: the sleep is a grandchild of this test process.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn sh");
        let root = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while descendants(root).is_empty() {
            assert!(std::time::Instant::now() < deadline, "sleep never appeared");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let grandchild = descendants(root)[0];
        kill_tree(root);
        // sh may exit by itself once its child is gone; either way it is reaped.
        child.wait().expect("wait");
        // The grandchild was re-parented to init (or a subreaper) and killed;
        // it is gone once its stat is unreadable or shows a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let alive = procfs::process::Process::new(grandchild)
                .and_then(|p| p.stat())
                .map(|s| s.state != 'Z')
                .unwrap_or(false);
            if !alive {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "grandchild survived");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn signal_tree_delivers_the_signal_it_is_given() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        signal_tree(child.id() as i32, Signal::SIGTERM);
        let status = child.wait().expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn rss_of_self_is_positive_and_of_nonexistent_is_none() {
        assert!(rss_bytes(std::process::id() as i32).unwrap_or(0) > 0);
        assert_eq!(rss_bytes(i32::MAX), None);
    }
}

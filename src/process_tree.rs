//! Finding and killing a worker's whole process tree, and reading its memory.
//!
//! Workers lead their own process group and are child subreapers, so a task's
//! children, grandchildren and orphans stay below the worker in the `ppid` tree
//! even after a `setsid()` or after their own parent has exited. A kill
//! therefore walks `/proc` for descendants *before* killing anything (killing
//! the worker first would re-parent its tree out of reach).

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;

/// Every live descendant of `root` (children first, then their children...).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children_of: HashMap<i32, Vec<i32>> = HashMap::new();
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    for process in processes.flatten() {
        if let Ok(stat) = process.stat() {
            children_of.entry(stat.ppid).or_default().push(stat.pid);
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        if let Some(children) = children_of.get(&pid) {
            for &child in children {
                if child != root && !found.contains(&child) {
                    found.push(child);
                    frontier.push(child);
                }
            }
        }
    }
    found
}

/// SIGKILLs `root`, its process group and every descendant. Errors are ignored
/// on purpose: a process that is already gone is exactly what we want.
pub fn kill_tree(root: i32) {
    if root <= 0 {
        return;
    }
    let tree = descendants(root);
    let _ = killpg(Pid::from_raw(root), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(root), Signal::SIGKILL);
    for pid in tree {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// SIGKILLs every descendant of `root` but not `root` itself: a retiring
/// worker uses this so that nothing a task left running outlives the worker.
pub fn kill_descendants(root: i32) -> usize {
    let tree = descendants(root);
    for &pid in &tree {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    tree.len()
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
        let status = child.wait().expect("wait");
        assert!(!status.success());
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
    fn rss_of_self_is_positive_and_of_nonexistent_is_none() {
        assert!(rss_bytes(std::process::id() as i32).unwrap_or(0) > 0);
        assert_eq!(rss_bytes(i32::MAX), None);
    }
}

//! The resident memory of a process tree, read often and cheaply: what a
//! memory-limited task's worker and everything it started hold.
//!
//! This kernel has no `/proc/<pid>/task/<tid>/children`, so finding a tree
//! means reading every process's parent, which costs about a millisecond.
//! A watch therefore keeps the tree it knows, reads only the `statm` of its
//! members on each look, and finds new members by reading only processes
//! above the highest pid it has seen (pids grow, so a new child is there; a
//! full scan every [`FULL_SCAN_EVERY`] looks catches pids that wrapped
//! around). Workers are subreapers, so orphans stay in the tree.
//!
//! RSS is summed per process: pages a forked child shares with its parent
//! count once per process, which overstates a fork's use but never hides it.

use super::process_tree::{absorb, live_processes};
use std::collections::HashSet;
use std::io::Read;

/// Every this many looks, all of `/proc` is scanned again.
const FULL_SCAN_EVERY: u32 = 16;

pub struct TreeWatch {
    root: i32,
    members: HashSet<i32>,
    highest_seen: i32,
    looks: u32,
}

/// What one look found.
pub struct TreeMemory {
    /// Resident bytes of every live member, summed.
    pub rss: u64,
    pub members: Vec<i32>,
}

impl TreeWatch {
    /// Starts watching `root` (a worker about to run a task: its tree is, as
    /// a rule, itself; a leftover child of an earlier task is found by the
    /// first full scan). Lists `/proc` without reading any process.
    pub fn new(root: i32) -> TreeWatch {
        TreeWatch {
            root,
            members: HashSet::from([root]),
            highest_seen: highest_pid().max(root),
            looks: 1,
        }
    }

    /// The tree's resident memory now; `None` once the root is gone.
    pub fn look(&mut self) -> Option<TreeMemory> {
        let full = self.looks % FULL_SCAN_EVERY == 0;
        self.looks = self.looks.wrapping_add(1);
        let processes = live_processes(if full { 0 } else { self.highest_seen });
        self.highest_seen = processes
            .iter()
            .map(|(pid, _)| *pid)
            .fold(self.highest_seen, i32::max);
        absorb(&mut self.members, &processes);
        let mut rss = 0;
        let mut members = Vec::with_capacity(self.members.len());
        self.members.retain(|&pid| match resident_bytes(pid) {
            Some(bytes) => {
                rss += bytes;
                members.push(pid);
                true
            }
            None => false,
        });
        self.members
            .contains(&self.root)
            .then_some(TreeMemory { rss, members })
    }
}

/// The highest pid listed in `/proc` (0 if none can be read).
fn highest_pid() -> i32 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .max()
        .unwrap_or(0)
}

/// Resident bytes of one process from `/proc/<pid>/statm` (its second field,
/// in pages), read into the stack; `None` once it is gone (or a zombie,
/// whose memory is already freed and whose statm reads as zeros).
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let mut file = std::fs::File::open(format!("/proc/{pid}/statm")).ok()?;
    let mut buffer = [0u8; 128];
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    let pages = parse_resident_pages(&buffer[..filled])?;
    Some(pages * page_size())
}

fn parse_resident_pages(statm: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(statm).ok()?;
    let mut fields = text.split_ascii_whitespace();
    let size: u64 = fields.next()?.parse().ok()?;
    let resident = fields.next()?.parse().ok()?;
    (size > 0).then_some(resident)
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn statm_parses_the_resident_field_and_rejects_zombies() {
        assert_eq!(parse_resident_pages(b"1000 250 40 1 0 300 0\n"), Some(250));
        assert_eq!(parse_resident_pages(b"0 0 0 0 0 0 0\n"), None);
        assert_eq!(parse_resident_pages(b"garbage"), None);
    }

    #[test]
    fn own_memory_is_positive_and_a_gone_process_has_none() {
        assert!(resident_bytes(std::process::id() as i32).unwrap_or(0) > 0);
        assert_eq!(resident_bytes(i32::MAX), None);
        assert!(TreeWatch::new(i32::MAX).look().is_none());
    }

    #[test]
    fn the_tree_takes_in_a_grandchild() {
        // sh -> sleep; the sleep may be forked before the watch starts, and
        // is then found by the next full scan.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .expect("spawn sh");
        let mut watch = TreeWatch::new(child.id() as i32);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = 0;
        while seen < 2 && Instant::now() < deadline {
            seen = watch.look().map_or(0, |tree| tree.members.len());
            std::thread::sleep(Duration::from_millis(5));
        }
        crate::os::process_tree::kill_tree(child.id() as i32);
        let _ = child.wait();
        assert_eq!(seen, 2, "sh and its sleep");
    }
}

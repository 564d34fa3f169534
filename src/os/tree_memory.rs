//! The resident memory of a process tree, read often and cheaply: what a
//! memory-limited task's worker and everything it started hold.
//!
//! This kernel has no `/proc/<pid>/task/<tid>/children`, so finding a tree
//! means reading every process's parent, which costs about a millisecond.
//! A watch therefore keeps the tree it knows, reads only the `statm` of its
//! members on each look, and finds new members by listing `/proc` (cheap)
//! and reading the parent of only the pids it has not seen before. (Not
//! "the pids above the highest seen": with the default `pid_max` of 32768,
//! pids wrap around within minutes on a busy host, and a new child then
//! gets a pid below long-lived processes.) A full scan every
//! [`FULL_SCAN_EVERY`] looks catches a pid reused since it was seen.
//! Workers are subreapers, so orphans stay in the tree.
//!
//! RSS is summed per process: pages a forked child shares with its parent
//! count once per process, which overstates a fork's use but never hides it.

use super::process_tree::{absorb, read_start_of, state_and_parent};
use std::collections::HashSet;

/// Every this many looks, all of `/proc` is scanned again.
const FULL_SCAN_EVERY: u32 = 16;

pub struct TreeWatch {
    root: i32,
    members: HashSet<i32>,
    /// Every pid listed in `/proc` at the last look.
    seen: HashSet<i32>,
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
            seen: listed_pids().collect(),
            looks: 1,
        }
    }

    /// The tree's resident memory now; `None` once the root is gone.
    pub fn look(&mut self) -> Option<TreeMemory> {
        let full = self.looks % FULL_SCAN_EVERY == 0;
        self.looks = self.looks.wrapping_add(1);
        let listed: HashSet<i32> = listed_pids().collect();
        let processes: Vec<(i32, i32)> = listed
            .iter()
            .filter(|pid| full || !self.seen.contains(pid))
            .filter_map(|&pid| match state_and_parent(pid) {
                Some((state, ppid)) if state != b'Z' && state != b'X' => Some((pid, ppid)),
                _ => None,
            })
            .collect();
        self.seen = listed;
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

/// The pids listed in `/proc` (none if it cannot be read).
fn listed_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
}

/// Resident bytes of one process from `/proc/<pid>/statm` (its second field,
/// in pages), read into the stack; `None` once it is gone. A process in the
/// middle of `execve` (or a zombie) has no memory map and reads as zero: it
/// must stay a member, or the child a task just started would be lost from
/// the tree until the next full scan.
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let mut buffer = [0u8; 128];
    let filled = read_start_of(&format!("/proc/{pid}/statm"), &mut buffer)?;
    // An empty read is a process without a memory map: zero bytes.
    let pages = parse_resident_pages(&buffer[..filled]).unwrap_or(0);
    Some(pages * page_size())
}

fn parse_resident_pages(statm: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(statm).ok()?;
    let mut fields = text.split_ascii_whitespace().skip(1);
    fields.next()?.parse().ok()
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
    fn statm_parses_the_resident_field() {
        assert_eq!(parse_resident_pages(b"1000 250 40 1 0 300 0\n"), Some(250));
        assert_eq!(parse_resident_pages(b"0 0 0 0 0 0 0\n"), Some(0));
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

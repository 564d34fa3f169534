//! Kills process trees off the supervisor's thread.
//!
//! Finding a worker's descendants means reading every process's status under
//! `/proc`, which takes milliseconds on a busy host. The supervisor must not
//! spend that time: a timed-out future should resolve at its deadline, and the
//! other workers keep being served. So the supervisor only stops the worker
//! (one cheap `kill(SIGSTOP)`, after which the task runs no more) and hands the
//! rest to this thread.

use crate::os::{process_tree, thread};
use crossbeam_channel::Sender;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io;
use std::thread::JoinHandle;

pub struct Killer {
    requests: Option<Sender<(i32, Signal)>>,
    thread: Option<JoinHandle<()>>,
}

impl Killer {
    pub fn start() -> io::Result<Killer> {
        let (requests, pending) = crossbeam_channel::unbounded::<(i32, Signal)>();
        let thread = thread::spawn("deadpool-killer", move || {
            for (pid, signal) in pending {
                deliver(pid, signal);
            }
        })?;
        Ok(Killer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Stops `pid` at once and has its whole tree killed shortly after.
    pub fn kill_tree(&self, pid: i32) {
        if pid <= 0 {
            return;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        self.queue(pid, Signal::SIGKILL);
    }

    /// Sends `signal` to `pid`'s whole tree shortly (SIGKILL: as `kill_tree`).
    pub fn signal_tree(&self, pid: i32, signal: Signal) {
        if signal == Signal::SIGKILL {
            self.kill_tree(pid);
        } else if pid > 0 {
            self.queue(pid, signal);
        }
    }

    fn queue(&self, pid: i32, signal: Signal) {
        let queued = self
            .requests
            .as_ref()
            .is_some_and(|r| r.send((pid, signal)).is_ok());
        if !queued {
            deliver(pid, signal);
        }
    }
}

fn deliver(pid: i32, signal: Signal) {
    match signal {
        Signal::SIGKILL => process_tree::kill_tree(pid),
        other => process_tree::signal_tree(pid, other),
    }
}

impl Drop for Killer {
    /// Finishes every queued kill before the pool is declared done.
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_queued_kill_is_carried_out_before_drop_returns() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let killer = Killer::start().expect("thread");
        killer.kill_tree(child.id() as i32);
        drop(killer);
        let status = child.wait().expect("wait");
        assert!(!status.success(), "sleep was killed, not left to finish");
    }
}

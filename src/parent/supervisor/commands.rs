//! Requests from the Python-facing side and the completion thread.

use super::worker::{Cause, State};
use super::Supervisor;
use crate::parent::messages::{Command, Outcome};
use crossbeam_channel::TryRecvError;
use nix::sys::signal::Signal;

impl Supervisor {
    pub(super) fn take_commands(&mut self) {
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
            Command::Shutdown {
                kill_running,
                signal,
            } => {
                self.closing = true;
                if kill_running {
                    self.kill_all_busy();
                }
                if let Some(signal) = signal {
                    self.signal_all(signal);
                }
            }
            Command::ClearWorkers => self.retire_idle_workers(),
            Command::WorkerConfig { worker_id, config } => self.deliver_config(worker_id, config),
            Command::Forked { zygote } => self.adopt_pool_zygote(zygote),
        }
    }

    fn cancel_running(&mut self, task_id: u64) -> bool {
        let found = self.workers.values_mut().find(|w| w.is_busy_with(task_id));
        let Some(worker) = found else { return false };
        worker.kill_and_forget_task();
        self.finish_task(task_id, Outcome::Cancelled);
        true
    }

    fn kill_all_busy(&mut self) {
        let killed: Vec<u64> = self
            .workers
            .values_mut()
            .filter(|w| w.running_task().is_some())
            .filter_map(|w| w.kill_and_forget_task())
            .collect();
        for task_id in killed {
            self.finish_task(task_id, Outcome::Cancelled);
        }
    }

    /// `terminate_workers()` / `kill_workers()`: every worker gets `signal`. A
    /// busy one stays busy, so its task fails with the exit status that
    /// follows (or finishes, if the task handles the signal); the others
    /// are taken for killed, so their exits go unremarked.
    fn signal_all(&mut self, signal: Signal) {
        for worker in self.workers.values_mut() {
            worker.signal(signal);
            worker.signalled_by_pool = true;
            if worker.running_task().is_none() {
                worker.state = State::Killed;
            }
        }
    }

    /// `clear_workers()`, and a closing pool with nothing left to run.
    pub(super) fn retire_idle_workers(&mut self) {
        for worker in self.workers.values_mut() {
            worker.retire_when_idle();
        }
    }

    fn deliver_config(&mut self, worker_id: u64, config: Result<Vec<u8>, String>) {
        let config = match config {
            Ok(config) => config,
            Err(message) => {
                self.log(
                    log::Level::Error,
                    format!("could not make a worker's settings: {message}"),
                );
                if let Some(worker) = self.workers.get_mut(&worker_id) {
                    worker.kill();
                    worker.state = State::Lost {
                        task_id: None,
                        cause: Cause::Died,
                    };
                }
                return;
            }
        };
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            // A broken pipe shows up as its end of file, handled there.
            worker.send_config(config);
        }
    }
}

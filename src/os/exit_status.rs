//! Turning a raw wait status (as reported by the zygote's `waitpid`) into the
//! message users see on `ProcessError`.

pub fn describe_death(pid: i32, status: Option<i32>) -> String {
    match status {
        Some(raw) if libc::WIFEXITED(raw) => {
            format!(
                "Subprocess {pid} completed unexpectedly with exitcode {}",
                libc::WEXITSTATUS(raw)
            )
        }
        Some(raw) if libc::WIFSIGNALED(raw) => {
            let signal = libc::WTERMSIG(raw);
            format!(
                "Subprocess {pid} completed unexpectedly with exitcode -{signal} ({})",
                signal_name(signal)
            )
        }
        Some(raw) => format!("Subprocess {pid} completed unexpectedly with wait status {raw}"),
        None => format!(
            "Subprocess {pid} completed unexpectedly; its exit status is unknown (its zygote had died)"
        ),
    }
}

/// The exit code as `multiprocessing` gives it: the code of a process that
/// exited, minus the signal of one that was killed; `None` for anything else.
pub fn exitcode(raw: i32) -> Option<i32> {
    if libc::WIFEXITED(raw) {
        Some(libc::WEXITSTATUS(raw))
    } else if libc::WIFSIGNALED(raw) {
        Some(-libc::WTERMSIG(raw))
    } else {
        None
    }
}

/// The same words `strsignal` uses, without its thread-safety caveats.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "Hangup",
        libc::SIGINT => "Interrupt",
        libc::SIGQUIT => "Quit",
        libc::SIGILL => "Illegal instruction",
        libc::SIGTRAP => "Trace/breakpoint trap",
        libc::SIGABRT => "Aborted",
        libc::SIGBUS => "Bus error",
        libc::SIGFPE => "Floating point exception",
        libc::SIGKILL => "Killed",
        libc::SIGUSR1 => "User defined signal 1",
        libc::SIGSEGV => "Segmentation fault",
        libc::SIGUSR2 => "User defined signal 2",
        libc::SIGPIPE => "Broken pipe",
        libc::SIGALRM => "Alarm clock",
        libc::SIGTERM => "Terminated",
        libc::SIGXCPU => "CPU time limit exceeded",
        libc::SIGXFSZ => "File size limit exceeded",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signalled_status_names_the_signal() {
        // A raw status for "killed by signal 9" is just the signal number.
        assert_eq!(
            describe_death(4242, Some(9)),
            "Subprocess 4242 completed unexpectedly with exitcode -9 (Killed)"
        );
        assert_eq!(
            describe_death(7, Some(libc::SIGSEGV | 0x80)),
            "Subprocess 7 completed unexpectedly with exitcode -11 (Segmentation fault)"
        );
    }

    #[test]
    fn exited_status_gives_the_code() {
        assert_eq!(
            describe_death(5, Some(3 << 8)),
            "Subprocess 5 completed unexpectedly with exitcode 3"
        );
    }

    #[test]
    fn exit_codes_follow_multiprocessing() {
        assert_eq!(exitcode(9), Some(-9));
        assert_eq!(exitcode(3 << 8), Some(3));
        assert_eq!(exitcode(0), Some(0));
        assert_eq!(exitcode(0x137f), None, "stopped, not ended");
    }

    #[test]
    fn unknown_status_says_so() {
        assert!(describe_death(5, None).contains("unknown"));
        assert_eq!(signal_name(64), "signal 64");
    }
}

//! What a freshly forked worker does to itself before running user code, and
//! the blocking frame I/O of the worker side of the pipes.

use crate::protocol::{decode_header, encode_header, Tag, HEADER_LEN, MAX_BODY_LEN};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::{getppid, setpgid, Pid};
use std::io;
use std::os::fd::RawFd;

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
        prctl::set_pdeathsig(Signal::SIGKILL)?;
        if getppid().as_raw() != zygote_pid {
            return Err(io::Error::other(
                "the zygote died while the worker was starting",
            ));
        }
    }
    prctl::set_child_subreaper(true)?;
    Ok(())
}

/// For a zygote forked straight from the parent ("fork" start method): get
/// SIGTERM when the parent thread that forked it ends (it lives as long as its
/// pool, and dies with the parent), and handle it by killing everything below.
pub fn become_forked_zygote(parent_pid: i32) -> io::Result<()> {
    prctl::set_pdeathsig(Signal::SIGTERM)?;
    if getppid().as_raw() != parent_pid {
        return Err(io::Error::other(
            "the parent died while the zygote was starting",
        ));
    }
    prctl::set_child_subreaper(true)?;
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

pub fn read_exact(fd: RawFd, mut buf: &mut [u8]) -> io::Result<bool> {
    // SAFETY: the caller owns the fd for the duration of the call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut first = true;
    while !buf.is_empty() {
        match nix::unistd::read(fd, buf) {
            Ok(0) if first => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                first = false;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Blocks for the next frame header; `None` at a clean end of stream.
pub fn read_header(fd: RawFd) -> io::Result<Option<(Tag, u64, usize)>> {
    let mut header = [0u8; HEADER_LEN];
    if !read_exact(fd, &mut header)? {
        return Ok(None);
    }
    let (tag, len, id) = decode_header(&header, MAX_BODY_LEN)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    Ok(Some((tag, id, len)))
}

/// Writes one whole frame, blocking.
pub fn write_frame(fd: RawFd, tag: Tag, id: u64, body: &[u8]) -> io::Result<()> {
    let header = encode_header(tag, id, body.len());
    let mut written = 0usize;
    let total = HEADER_LEN + body.len();
    while written < total {
        let result = if written < HEADER_LEN {
            let slices = [io::IoSlice::new(&header[written..]), io::IoSlice::new(body)];
            // SAFETY: the fd is borrowed for the duration of the call only.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            nix::sys::uio::writev(fd, &slices)
        } else {
            // SAFETY: as above.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            nix::unistd::write(fd, &body[written - HEADER_LEN..])
        };
        match result {
            Ok(n) => written += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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

    #[test]
    fn frames_cross_a_real_pipe() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        write_frame(w.as_raw_fd(), Tag::Ok, 9, b"payload").expect("write");
        drop(w);
        let (tag, id, len) = read_header(r.as_raw_fd()).expect("read").expect("a frame");
        assert_eq!((tag, id, len), (Tag::Ok, 9, 7));
        let mut body = vec![0u8; len];
        assert!(read_exact(r.as_raw_fd(), &mut body).expect("body"));
        assert_eq!(body, b"payload");
        assert_eq!(read_header(r.as_raw_fd()).expect("eof"), None);
    }

    #[test]
    fn a_truncated_header_is_an_error_not_a_clean_eof() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, &[11, 1, 0]).expect("write");
        drop(w);
        assert!(read_header(r.as_raw_fd()).is_err());
    }
}

//! What the pool sends a zygote on its control socket: once, the
//! preparation data (a little-endian `u64` length, then the pickled
//! `multiprocessing.spawn` preparation); then one worker request per worker,
//! the bytes [`WORKER_REQUEST`] carrying [`WORKER_REQUEST_FDS`] descriptors
//! (the worker's task pipe read end, result pipe write end, status pipe
//! write end and its end of the segment socket) as `SCM_RIGHTS`; and [`RELEASE_SPARE`], without descriptors,
//! when the last pool that could need the zygote's spare child is gone.

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

pub const WORKER_REQUEST: [u8; 8] = *b"WORKER\0\0";
pub const WORKER_REQUEST_FDS: usize = 4;
/// As long as a worker request, so the zygote reads either the same way.
pub const RELEASE_SPARE: [u8; 8] = *b"NOSPARE\0";

pub fn write_preparation<W: Write>(sink: &mut W, preparation: &[u8]) -> io::Result<()> {
    sink.write_all(&(preparation.len() as u64).to_le_bytes())?;
    sink.write_all(preparation)
}

/// The preparation data, or `None` if the stream ends before all of it came
/// (the pool went away before the zygote started).
pub fn read_preparation<R: Read>(source: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 8];
    if !fill(source, &mut length)? {
        return Ok(None);
    }
    let length = usize::try_from(u64::from_le_bytes(length))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "preparation too large"))?;
    let mut body = Vec::new();
    source.take(length as u64).read_to_end(&mut body)?;
    Ok((body.len() == length).then_some(body))
}

/// Reads all of `buf`; false if the stream ended first.
fn fill<R: Read>(source: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    match source.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sends one worker request. The socket stays blocking: a request is a few
/// bytes on a socket whose buffer holds thousands of them, and the zygote
/// takes each at once.
pub fn send_worker_request(
    control: BorrowedFd<'_>,
    fds: [RawFd; WORKER_REQUEST_FDS],
) -> io::Result<()> {
    let iov = [IoSlice::new(&WORKER_REQUEST)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        control.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Tells the zygote to let its spare go (see [`RELEASE_SPARE`]).
pub fn send_release_spare(control: BorrowedFd<'_>) -> io::Result<()> {
    let iov = [IoSlice::new(&RELEASE_SPARE)];
    sendmsg::<()>(control.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn preparation_round_trips() {
        let mut wire = Vec::new();
        write_preparation(&mut wire, b"pickled").expect("write");
        assert_eq!(
            read_preparation(&mut Cursor::new(wire)).expect("read"),
            Some(b"pickled".to_vec())
        );
    }

    #[test]
    fn a_cut_preparation_is_none() {
        let mut wire = Vec::new();
        write_preparation(&mut wire, b"pickled").expect("write");
        for cut in 0..wire.len() {
            let mut source = Cursor::new(wire[..cut].to_vec());
            assert_eq!(read_preparation(&mut source).expect("read"), None);
        }
    }
}

//! The child's side of the pipes: blocking frame I/O (a worker has nothing
//! else to do while it waits) and a blocking reader over a borrowed fd.

use crate::wire::frame::{decode_header, encode_header, Tag, HEADER_LEN, MAX_BODY_LEN};
use crate::wire::status::{self, StatusKind};
use nix::errno::Errno;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;

/// `Read` over a descriptor someone else owns.
pub struct FdReader<'fd>(pub BorrowedFd<'fd>);

impl Read for FdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::read(self.0, buf) {
                Err(Errno::EINTR) => continue,
                other => return Ok(other?),
            }
        }
    }
}

/// Fills `buf`; false if the stream ended before its first byte, an error
/// if it ended part-way.
fn read_all_or_nothing(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<bool> {
    let mut reader = FdReader(fd);
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 if filled == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => filled += n,
        }
    }
    Ok(true)
}

/// Blocks for the next frame header; `None` at a clean end of stream.
pub fn read_header(fd: BorrowedFd<'_>) -> io::Result<Option<(Tag, u64, usize)>> {
    let mut header = [0u8; HEADER_LEN];
    if !read_all_or_nothing(fd, &mut header)? {
        return Ok(None);
    }
    let (tag, len, id) = decode_header(&header, MAX_BODY_LEN)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame too large"))?;
    Ok(Some((tag, id, len)))
}

/// Reads a frame's whole body. Its header promised it, so the stream ending
/// anywhere inside it, even before its first byte, is an error.
pub fn read_body(fd: BorrowedFd<'_>, body: &mut [u8]) -> io::Result<()> {
    if body.is_empty() || read_all_or_nothing(fd, body)? {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the pipe closed between a frame's header and its body",
    ))
}

/// Writes one whole frame, blocking.
pub fn write_frame(fd: BorrowedFd<'_>, tag: Tag, id: u64, body: &[u8]) -> io::Result<()> {
    let header = encode_header(tag, id, body.len());
    let mut written = 0usize;
    let total = HEADER_LEN + body.len();
    while written < total {
        let result = if written < HEADER_LEN {
            let slices = [io::IoSlice::new(&header[written..]), io::IoSlice::new(body)];
            nix::sys::uio::writev(fd, &slices)
        } else {
            nix::unistd::write(fd, &body[written - HEADER_LEN..])
        };
        match result {
            Ok(n) => written += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes one status record (the zygote reporting on a worker).
pub fn write_status(fd: BorrowedFd<'_>, kind: StatusKind, value: i32) -> io::Result<()> {
    let record = status::encode(kind, value);
    let written = loop {
        match nix::unistd::write(fd, &record) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    // A pipe write of at most PIPE_BUF bytes is all or nothing.
    if written != record.len() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_cross_a_real_pipe() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        write_frame(w.as_fd(), Tag::Ok, 9, b"payload").expect("write");
        drop(w);
        let (tag, id, len) = read_header(r.as_fd()).expect("read").expect("a frame");
        assert_eq!((tag, id, len), (Tag::Ok, 9, 7));
        let mut body = vec![0u8; len];
        read_body(r.as_fd(), &mut body).expect("body");
        assert_eq!(body, b"payload");
        assert_eq!(read_header(r.as_fd()).expect("eof"), None);
    }

    #[test]
    fn a_truncated_header_is_an_error_not_a_clean_eof() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, &[11, 1, 0]).expect("write");
        drop(w);
        assert!(read_header(r.as_fd()).is_err());
    }

    #[test]
    fn a_body_missing_after_its_header_is_an_error() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        nix::unistd::write(&w, &encode_header(Tag::Task, 1, 5)).expect("write");
        drop(w);
        let (_, _, len) = read_header(r.as_fd()).expect("read").expect("a header");
        let mut body = vec![0u8; len];
        let error = read_body(r.as_fd(), &mut body).expect_err("no body");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_status_record_crosses_a_pipe() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        write_status(w.as_fd(), StatusKind::Exit, 9).expect("write");
        let mut record = [0u8; status::RECORD_LEN];
        FdReader(r.as_fd()).read_exact(&mut record).expect("read");
        assert_eq!(record, status::encode(StatusKind::Exit, 9));
    }
}

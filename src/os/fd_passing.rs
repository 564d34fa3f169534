//! One descriptor per message over a `SOCK_SEQPACKET` socket, tagged with
//! the task it belongs to: how shared-memory segments travel between the
//! pool and a worker, beside the pipes that carry the frames. The sender
//! sends the descriptor before the frame that refers to it, so whoever has
//! read that frame finds the descriptor already waiting.

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A connected pair; both ends close on exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `fd` for task `id`. Never blocks: each side has at most one
/// descriptor in flight per task, far below any socket buffer.
pub fn send_fd(socket: BorrowedFd<'_>, id: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
    let body = id.to_le_bytes();
    let iov = [IoSlice::new(&body)];
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
    loop {
        match sendmsg::<()>(socket.as_raw_fd(), &iov, &cmsg, flags, None) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The next descriptor and the task it is for. `Ok(None)`: the peer closed
/// the socket, or (`wait` false) nothing is there yet.
pub fn recv_fd(socket: BorrowedFd<'_>, wait: bool) -> io::Result<Option<(u64, OwnedFd)>> {
    let mut body = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if !wait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (len, received) = loop {
        let mut iov = [IoSliceMut::new(&mut body)];
        match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Ok(message) => break (message.bytes, owned_fds(&message)?),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    let mut received = received.into_iter();
    let fd = received.next();
    match (len, fd) {
        (0, None) => Ok(None),
        (8, Some(fd)) => Ok(Some((u64::from_le_bytes(body), fd))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a segment message without its descriptor",
        )),
    }
}

/// Every descriptor the message carried, owned (extras close when dropped).
fn owned_fds(message: &nix::sys::socket::RecvMsg<'_, '_, ()>) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: SCM_RIGHTS just installed it in our table, for us alone.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_crosses_with_its_task_id() {
        let (a, b) = pair().expect("pair");
        let (r, w) = nix::unistd::pipe().expect("pipe");
        send_fd(a.as_fd(), 42, w.as_fd()).expect("send");
        drop(w);
        let (id, received) = recv_fd(b.as_fd(), false).expect("recv").expect("a message");
        assert_eq!(id, 42);
        nix::unistd::write(&received, b"x").expect("the received end writes");
        let mut buf = [0u8; 1];
        assert_eq!(nix::unistd::read(r.as_fd(), &mut buf).expect("read"), 1);
    }

    #[test]
    fn nothing_waiting_and_a_closed_peer_are_both_none() {
        let (a, b) = pair().expect("pair");
        assert!(recv_fd(b.as_fd(), false).expect("empty").is_none());
        drop(a);
        assert!(recv_fd(b.as_fd(), true).expect("closed").is_none());
    }

    #[test]
    fn a_message_without_a_descriptor_is_an_error() {
        let (a, b) = pair().expect("pair");
        nix::unistd::write(&a, &7u64.to_le_bytes()).expect("write");
        assert!(recv_fd(b.as_fd(), false).is_err());
    }
}

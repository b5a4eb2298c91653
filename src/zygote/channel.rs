//! Message I/O on a `SOCK_SEQPACKET` socket with descriptors attached
//! (`SCM_RIGHTS`), non-blocking, through rustix's safe ancillary buffers:
//! received descriptors arrive as [`OwnedFd`]s (close-on-exec), so none can
//! leak, and a truncated message or descriptor list is an error, never a
//! silent loss.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use super::MAX_MSG;

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 4;

/// A connected pair of close-on-exec `SOCK_SEQPACKET` sockets.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends one message with `fds` attached. Never blocks: a full peer queue
/// is `WouldBlock` (the peer is not reading). A closed peer is `BrokenPipe`
/// (no SIGPIPE).
pub fn send(sock: BorrowedFd<'_>, msg: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if msg.len() > MAX_MSG || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message or descriptor list too large",
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(msg)],
        &mut anc,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?;
    if n != msg.len() {
        return Err(io::Error::other("short send on a seqpacket socket"));
    }
    Ok(())
}

/// One received message.
#[derive(Debug)]
pub struct Received {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The descriptors that came with it, in order.
    pub fds: Vec<OwnedFd>,
}

/// Receives one message without blocking: `Ok(None)` at end of stream (the
/// peer closed), `WouldBlock` when nothing is queued.
pub fn recv(sock: impl AsFd) -> io::Result<Option<Received>> {
    recv_with(sock, RecvFlags::DONTWAIT)
}

/// Receives one message, blocking until one arrives (the fork server's loop).
pub fn recv_blocking(sock: impl AsFd) -> io::Result<Option<Received>> {
    recv_with(sock, RecvFlags::empty())
}

fn recv_with(sock: impl AsFd, flags: RecvFlags) -> io::Result<Option<Received>> {
    let mut buf = vec![0u8; MAX_MSG + 1];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let r = loop {
        match rustix::net::recvmsg(
            sock.as_fd(),
            &mut [IoSliceMut::new(&mut buf)],
            &mut anc,
            flags | RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    if r.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors in one message",
        ));
    }
    if r.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if r.bytes > MAX_MSG || r.flags.contains(ReturnFlags::TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {MAX_MSG} bytes"),
        ));
    }
    buf.truncate(r.bytes);
    Ok(Some(Received { bytes: buf, fds }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_boundaries_and_descriptors() {
        let (a, b) = pair().expect("socketpair");
        let (x, _y) = pair().expect("socketpair");
        send(a.as_fd(), b"one", &[x.as_fd()]).expect("send");
        send(a.as_fd(), b"two", &[]).expect("send");
        let m = recv(&b).expect("recv").expect("a message");
        assert_eq!(m.bytes, b"one");
        assert_eq!(m.fds.len(), 1);
        let m = recv(&b).expect("recv").expect("a message");
        assert_eq!((m.bytes.as_slice(), m.fds.len()), (&b"two"[..], 0));
        assert_eq!(
            recv(&b).expect_err("empty").kind(),
            io::ErrorKind::WouldBlock
        );
        drop(a);
        assert!(recv(&b).expect("eof").is_none());
    }

    #[test]
    fn oversized_messages_are_refused_on_both_sides() {
        let (a, b) = pair().expect("socketpair");
        let big = vec![b'x'; MAX_MSG + 1];
        assert!(send(a.as_fd(), &big, &[]).is_err());
        // A peer that ignores the limit is caught on receipt.
        rustix::net::send(&a, &big, SendFlags::empty()).expect("raw send");
        assert_eq!(
            recv(&b).expect_err("too big").kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn a_closed_peer_is_a_broken_pipe_not_a_signal() {
        let (a, b) = pair().expect("socketpair");
        drop(b);
        let e = send(a.as_fd(), b"x", &[]).expect_err("peer gone");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}

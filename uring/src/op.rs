//! The operations the ring layer submits, and what each one owns while it is in
//! flight.
//!
//! An [`Op`] is a request with owned resources. [`crate::Ring::push`] moves those
//! resources into its in-flight table ([`Parked`]), builds the SQE from pointers
//! into them, and returns them as a [`Returned`] value with the op's final
//! completion. Because the resources are heap allocations owned by the table,
//! their addresses stay valid however the table itself is moved or grown.

pub use socket2::SockAddr;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::types::Timespec;

use crate::bufring::{BufRef, BufRing};
use crate::ring::OpId;

/// One piece of data to send: an owned vector (with a read position) or a view
/// of a received buffer, forwarded without copying.
pub enum Seg {
    /// Bytes the caller built (a rewritten head, an error response).
    Owned {
        /// The bytes.
        data: Vec<u8>,
        /// How many leading bytes were already sent.
        pos: usize,
    },
    /// Bytes as they arrived in a provided buffer.
    Buf(BufRef),
}

impl Seg {
    /// An owned segment with nothing sent yet.
    pub fn owned(data: Vec<u8>) -> Seg {
        Seg::Owned { data, pos: 0 }
    }

    /// The bytes not yet sent.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Seg::Owned { data, pos } => &data[(*pos).min(data.len())..],
            Seg::Buf(b) => b.as_slice(),
        }
    }

    /// Number of bytes not yet sent.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks `n` leading bytes as sent.
    pub fn advance(&mut self, n: usize) {
        match self {
            Seg::Owned { data, pos } => *pos = (*pos + n).min(data.len()),
            Seg::Buf(b) => b.advance(n),
        }
    }
}

/// Most ring buffers one queue may keep pinned; beyond it, the queue's bytes are
/// copied into one owned segment (see [`compact_segs`]).
pub const MAX_PINNED_SEGS: usize = 8;

/// Whether `segs` pins more ring buffers than a queue should.
pub fn pins_too_many(segs: &[Seg]) -> bool {
    segs.iter()
        .filter(|s| matches!(s, Seg::Buf(b) if b.pins_ring()))
        .count()
        > MAX_PINNED_SEGS
}

/// Copies every queued byte into one owned segment, releasing the ring buffers
/// the queue held. Used when a consumer is slow: its backlog must not keep the
/// receive ring (shared by every connection of a worker) empty.
pub fn compact_segs(segs: &mut Vec<Seg>) {
    if segs.len() <= 1
        && !segs
            .iter()
            .any(|s| matches!(s, Seg::Buf(b) if b.pins_ring()))
    {
        return;
    }
    let total = segs.iter().map(Seg::len).sum();
    let mut data = Vec::with_capacity(total);
    for s in segs.iter() {
        data.extend_from_slice(s.as_slice());
    }
    segs.clear();
    if !data.is_empty() {
        segs.push(Seg::owned(data));
    }
}

/// Drops the first `n` bytes from a queue of segments (after a short write).
pub fn advance_segs(segs: &mut Vec<Seg>, n: usize) {
    advance_segs_reclaim(segs, n, drop);
}

/// [`advance_segs`], handing the storage of every owned segment sent whole
/// to `reclaim` (for reuse) instead of freeing it.
pub fn advance_segs_reclaim(segs: &mut Vec<Seg>, mut n: usize, mut reclaim: impl FnMut(Vec<u8>)) {
    let mut drop_front = 0;
    for seg in segs.iter_mut() {
        if n == 0 {
            break;
        }
        let l = seg.len();
        if n >= l {
            n -= l;
            drop_front += 1;
        } else {
            seg.advance(n);
            n = 0;
        }
    }
    for s in segs.drain(..drop_front) {
        if let Seg::Owned { data, .. } = s {
            reclaim(data);
        }
    }
}

/// An operation to submit, with the resources it owns.
pub enum Op {
    /// Multishot accept on a listening socket: one completion per connection
    /// (result = new fd), until a completion without `more`.
    AcceptMulti {
        /// The listening socket.
        fd: RawFd,
    },
    /// Multishot receive into buffers picked from `bufs`: one completion per
    /// received chunk (with a [`Returned::Buf`]); result 0 is end of stream;
    /// `-ENOBUFS` ends the multishot when the ring ran dry.
    RecvMulti {
        /// The socket.
        fd: RawFd,
        /// The buffer ring to pick from.
        bufs: BufRing,
    },
    /// Gathered send of `segs` (a `writev`); the segments come back with the
    /// completion so a short write can be resumed.
    Writev {
        /// The socket.
        fd: RawFd,
        /// What to send, in order.
        segs: Vec<Seg>,
    },
    /// `connect(2)` of a non-blocking or blocking socket.
    Connect {
        /// The socket.
        fd: RawFd,
        /// Where to connect: any family (`SockAddr::from(SocketAddr)`, or
        /// `SockAddr::unix` for a Unix-domain or abstract socket).
        addr: SockAddr,
    },
    /// `close(2)` of a descriptor the caller gives up: it is the op's from
    /// here (closed by the kernel, or here if the op cannot be queued), so
    /// no safe code can close it twice or close one it does not own.
    Close {
        /// The descriptor.
        fd: std::os::fd::OwnedFd,
    },
    /// A relative timer; completes with `-ETIME` when it fires.
    Timeout {
        /// How long.
        after: Duration,
    },
    /// Cancels an in-flight op (its own completion says whether it was found).
    Cancel {
        /// The op to cancel.
        target: OpId,
    },
    /// `waitid(P_PIDFD, pidfd, WEXITED | WNOWAIT)`: completes when the
    /// process exits and leaves it a zombie, so that its pid
    /// and its process group id cannot be reused before the caller has
    /// killed what is left of the group; the caller then reaps it
    /// (`waitid(P_PID, ExitInfo::pid, WEXITED | WNOHANG)`). `IORING_OP_WAITID`
    /// needs Linux ≥ 6.7; before that (see [`crate::Ring::native_waitid`])
    /// the ring polls a duplicate of the pidfd and reads the exit with a
    /// non-blocking `waitid` when the poll completes: the same completion.
    WaitId {
        /// The pidfd.
        pidfd: RawFd,
    },
    /// `poll(2)` for `events` on `fd` (one shot).
    PollAdd {
        /// The descriptor.
        fd: RawFd,
        /// `POLLIN` and friends.
        events: u32,
    },
    /// `unlinkat(2)` relative to `dirfd`; `dir` adds `AT_REMOVEDIR`.
    UnlinkAt {
        /// Directory the path is relative to.
        dirfd: RawFd,
        /// The entry name.
        path: CString,
        /// Remove a directory instead of a file.
        dir: bool,
    },
    /// `read(2)` into `buf` (its full length).
    Read {
        /// The descriptor.
        fd: RawFd,
        /// Destination; returned with the completion.
        buf: Vec<u8>,
    },
    /// `shutdown(2)`.
    Shutdown {
        /// The socket.
        fd: RawFd,
        /// `libc::SHUT_WR` and friends.
        how: i32,
    },
}

/// Resources handed back with an op's completion.
pub enum Returned {
    /// The op owned nothing worth returning.
    Nothing,
    /// A received buffer (multishot receive).
    Buf(BufRef),
    /// The segments of a `Writev`, unchanged (the caller advances them by the
    /// result for a short write).
    Segs(Vec<Seg>),
    /// The buffer of a `Read`.
    Read(Vec<u8>),
    /// How a waited-for process ended.
    Exit(ExitInfo),
    /// A descriptor the kernel created for us (an accepted connection).
    Fd(std::os::fd::OwnedFd),
    /// The path of an `UnlinkAt`.
    Path(CString),
}

/// How a child ended, from `waitid`'s `siginfo_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// `CLD_EXITED`, `CLD_KILLED` or `CLD_DUMPED`.
    pub code: i32,
    /// The exit status or the signal number.
    pub status: i32,
    /// The process, still a zombie (see [`Op::WaitId`]): reap it by this pid.
    pub pid: i32,
}

/// Reads a `siginfo_t` that `waitid` filled (or left all zero: no exit,
/// `pid` 0).
pub(crate) fn exit_info(info: &libc::siginfo_t) -> ExitInfo {
    // SAFETY: `waitid` fills `info` for a child-state change (CLD_*), where
    // the `si_status` union member is the one written; an all-zero
    // siginfo_t reads as 0 in every member.
    let status = unsafe { info.si_status() };
    // SAFETY: as above: for CLD_* the `si_pid` member is written.
    let pid = unsafe { info.si_pid() };
    ExitInfo {
        code: info.si_code,
        status,
        pid,
    }
}

/// Resources parked in the in-flight table while the kernel may use them.
pub(crate) enum Parked {
    Nothing,
    Accept,
    Recv(BufRing),
    Writev {
        segs: Vec<Seg>,
        /// Read by the kernel until the op finishes; then recycled by the
        /// ring (never read here).
        iov: Vec<libc::iovec>,
    },
    Addr(#[allow(dead_code)] Box<SockAddr>),
    Time(#[allow(dead_code)] Box<Timespec>),
    Wait(Box<libc::siginfo_t>),
    /// A `WaitId` done as a `POLL_ADD` (kernels without `IORING_OP_WAITID`):
    /// the ring's own duplicate of the pidfd, for the `waitid` that reads the
    /// exit once the poll completes.
    PollWait(std::os::fd::OwnedFd),
    Path(CString),
    Read(Vec<u8>),
    /// The descriptor of a `Close`: the kernel closes it; only if the op is
    /// never queued is it closed here (never both).
    Close(RawFd),
}

impl Parked {
    /// Converts parked resources into what the caller gets back.
    pub(crate) fn into_returned(self) -> Returned {
        match self {
            Parked::Writev { segs, .. } => Returned::Segs(segs),
            Parked::Read(buf) => Returned::Read(buf),
            Parked::Path(p) => Returned::Path(p),
            Parked::Wait(info) => Returned::Exit(exit_info(&info)),
            Parked::Nothing
            | Parked::PollWait(_)
            | Parked::Accept
            | Parked::Recv(_)
            | Parked::Addr(_)
            | Parked::Time(_)
            | Parked::Close(_) => Returned::Nothing,
        }
    }
}

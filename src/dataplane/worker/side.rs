//! What both sides of an exchange do alike, written once for the client
//! ([`Side::Client`]) and the child ([`Side::Up`]): arming, pausing and
//! resuming a connection's multishot receive (backpressure), taking its
//! receive completions, flushing its send queue and taking a send's
//! completion. What differs — what the bytes mean, what EOF means, how a
//! broken connection is ended — is dispatched on the side.

use std::os::fd::RawFd;

use super::*;
use crate::dataplane::conn::{RecvArm, SendQ};

/// Which side of the proxy a connection is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// A client connection (slab `clients`).
    Client,
    /// A connection to a child (slab `ups`).
    Up,
}

impl Side {
    /// The side at the other end of an exchange.
    fn peer(self) -> Side {
        match self {
            Side::Client => Side::Up,
            Side::Up => Side::Client,
        }
    }

    fn recv_kind(self) -> u64 {
        match self {
            Side::Client => K_CRECV,
            Side::Up => K_URECV,
        }
    }

    fn send_kind(self) -> u64 {
        match self {
            Side::Client => K_CSEND,
            Side::Up => K_USEND,
        }
    }

    /// For logs.
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Up => "child",
        }
    }
}

/// The I/O state of one live connection, whichever side it is on.
struct Io<'a> {
    fd: RawFd,
    recv: &'a mut RecvArm,
    out: &'a mut SendQ,
    /// Receiving makes sense: a client has not sent EOF; a child connection
    /// is connected.
    can_recv: bool,
    /// Sending makes sense: a child connection is connected.
    can_send: bool,
}

/// The connection `r` of `side` if it is still the one `r` names. Takes the
/// slabs, not the worker, so the ring stays borrowable beside it.
fn io_of<'a>(
    clients: &'a mut Slab<Client>,
    ups: &'a mut Slab<Upstream>,
    side: Side,
    r: Ref,
) -> Option<Io<'a>> {
    match side {
        Side::Client => clients.get_mut(r.0).filter(|c| c.gen == r.1).map(|c| Io {
            fd: c.fd.as_raw_fd(),
            recv: &mut c.recv,
            out: &mut c.out,
            can_recv: !c.eof,
            can_send: true,
        }),
        Side::Up => ups.get_mut(r.0).filter(|u| u.gen == r.1).map(|u| Io {
            fd: u.fd.as_raw_fd(),
            recv: &mut u.recv,
            out: &mut u.out,
            can_recv: u.connected,
            can_send: u.connected,
        }),
    }
}

impl Worker {
    /// Arms the multishot receive of `r` unless one is in flight.
    pub(super) fn arm_recv(&mut self, side: Side, r: Ref) {
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        if io.recv.op.is_some() || !io.can_recv {
            return;
        }
        let op = Op::RecvMulti {
            fd: io.fd,
            bufs: self.bufs.clone(),
        };
        match self.ring.push(op, tag(side.recv_kind(), r)) {
            Ok(id) => {
                io.recv.op = Some(id);
                io.recv.cancel_sent = false;
                io.recv.starved = false;
            }
            Err(e) => {
                tracing::warn!(worker = self.id, side = side.name(), error = %e, "cannot arm a receive");
                self.broken(side, r, ChildIo::from_io(ChildOp::Receive, &e));
            }
        }
    }

    /// Stops reading from `r` (its peer is not keeping up).
    pub(super) fn pause_recv(&mut self, side: Side, r: Ref) {
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        io.recv.paused = true;
        if let (Some(op), false) = (io.recv.op, io.recv.cancel_sent) {
            // If the cancel cannot be queued, the next pause tries again.
            io.recv.cancel_sent = self
                .ring
                .push(Op::Cancel { target: op }, tag(K_IGNORE, r))
                .is_ok();
        }
    }

    /// Reads from `r` again after [`Worker::pause_recv`].
    pub(super) fn resume_recv(&mut self, side: Side, r: Ref) {
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        if !io.recv.paused {
            return;
        }
        io.recv.paused = false;
        if io.recv.op.is_none() && !io.recv.starved && io.can_recv {
            self.arm_recv(side, r);
        }
    }

    /// A receive completion of `r`: data, EOF, out of buffers, or an error.
    pub(super) fn on_recv(&mut self, side: Side, r: Ref, c: Completion) {
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        if !c.more {
            io.recv.op = None;
        }
        match (c.result, c.data) {
            (n, Returned::Buf(buf)) if n > 0 => match side {
                Side::Client => self.on_client_data(r, buf),
                Side::Up => self.on_up_data(r, buf),
            },
            (0, _) => {
                match side {
                    Side::Client => self.on_client_eof(r),
                    Side::Up => self.on_up_eof(r),
                }
                return;
            }
            (e, _) if e == -libc::ENOBUFS => {
                io.recv.starved = true;
                self.starved.push((side, r));
                return;
            }
            (e, _) if e == -libc::ECANCELED => {}
            (e, _) if e < 0 => {
                tracing::debug!(
                    worker = self.id,
                    side = side.name(),
                    errno = -e,
                    "receive failed"
                );
                match side {
                    Side::Client => self.abort_client(r),
                    // What it had sent may still be a whole response.
                    Side::Up => self.on_up_eof(r),
                }
                return;
            }
            _ => {}
        }
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        if io.recv.op.is_none() && !io.recv.paused && !io.recv.starved && io.can_recv {
            self.arm_recv(side, r);
        }
    }

    /// Hands what is queued for `r` to the kernel, unless a send is in flight.
    pub(super) fn flush(&mut self, side: Side, r: Ref) {
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        if !io.can_send || io.out.in_flight || io.out.q.is_empty() {
            return;
        }
        if io.out.slow || pins_too_many(&io.out.q) {
            compact_segs(&mut io.out.q);
        }
        let spare = std::mem::take(&mut io.out.spare);
        let segs = std::mem::replace(&mut io.out.q, spare);
        match self
            .ring
            .push(Op::Writev { fd: io.fd, segs }, tag(side.send_kind(), r))
        {
            Ok(_) => {
                io.out.in_flight = true;
                io.out.started = Some(self.now);
            }
            Err(e) => {
                tracing::warn!(worker = self.id, side = side.name(), error = %e, "cannot queue a send");
                self.broken(side, r, ChildIo::from_io(ChildOp::Send, &e));
            }
        }
    }

    /// A send completion of `r`: requeues what was not sent, sends on, and
    /// lets the peer read again once this side's queue ran low.
    pub(super) fn on_sent(&mut self, side: Side, r: Ref, c: Completion) {
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        io.out.in_flight = false;
        io.out.started = None;
        if c.result < 0 {
            tracing::debug!(
                worker = self.id,
                side = side.name(),
                errno = -c.result,
                "send failed"
            );
            self.broken(side, r, ChildIo::new(ChildOp::Send, c.result));
            return;
        }
        let n = c.result as usize;
        io.out.bytes = io.out.bytes.saturating_sub(n);
        if let Returned::Segs(mut segs) = c.data {
            let heads = &mut self.head_bufs;
            advance_segs_reclaim(&mut segs, n, |b| heads.put(b));
            io.out.slow = !segs.is_empty();
            if !segs.is_empty() {
                // What was not sent goes first, then what was queued since.
                segs.append(&mut io.out.q);
                segs = std::mem::replace(&mut io.out.q, segs);
            }
            // `segs` is empty now either way: the next spare.
            io.out.spare = segs;
        }
        let low = io.out.bytes < LOW_WATER;
        let peer = match side {
            Side::Client => {
                let cl = &mut self.clients[r.0];
                cl.last_io = self.now;
                if cl.out.is_idle() && cl.close_after_flush {
                    self.close_client(r);
                    return;
                }
                match cl.phase {
                    Phase::Proxy { up, .. } => Some(up),
                    _ => None,
                }
            }
            Side::Up => self.ups[r.0].client,
        };
        self.flush(side, r);
        if let (true, Some(p)) = (low, peer) {
            self.resume_recv(side.peer(), p);
        }
    }

    /// Buffers are back: `r`, whose receive ended for want of them, reads
    /// again (unless paused meanwhile).
    pub(super) fn unstarve(&mut self, side: Side, r: Ref) {
        let Some(io) = io_of(&mut self.clients, &mut self.ups, side, r) else {
            return;
        };
        io.recv.starved = false;
        if !io.recv.paused {
            self.arm_recv(side, r);
        }
    }

    /// `r` cannot go on (a receive or send could not be queued, or a send
    /// failed): a client is dropped with its exchange, a child connection
    /// fails its exchange (which answers or retries the client) with `io`.
    fn broken(&mut self, side: Side, r: Ref, io: ChildIo) {
        match side {
            Side::Client => self.abort_client(r),
            Side::Up => self.upstream_failed(r, ProxyError::ChildUnreachable(io)),
        }
    }
}

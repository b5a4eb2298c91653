//! Closing connections and releasing what they hold; re-arming receives the buffer ring starved.

use super::*;

impl Worker {
    /// Client gone or broken: drop it and whatever upstream it was using.
    pub(super) fn abort_client(&mut self, r: Ref) {
        if !self.client_ok(r) {
            return;
        }
        if let Phase::Proxy { up, .. } = self.clients[r.0].phase {
            self.close_up(up);
        }
        self.close_client(r);
    }

    pub(super) fn close_client(&mut self, r: Ref) {
        if !self.client_ok(r) {
            return;
        }
        let cl = self.clients.remove(r.0);
        self.metrics.workers[self.id]
            .connections
            .fetch_sub(1, Relaxed);
        if let Phase::Proxy { up, .. } = cl.phase {
            if self.up_ok(up) && self.ups[up.0].client == Some(r) {
                self.close_up(up);
            }
        }
        self.release_fd(cl.fd);
    }

    pub(super) fn close_up(&mut self, up: Ref) {
        if !self.up_ok(up) {
            return;
        }
        let u = self.ups.remove(up.0);
        if u.client.is_none() {
            if let Some(list) = self.pool.get_mut(&u.child.id) {
                list.retain(|r| *r != up);
                if list.is_empty() {
                    self.pool.remove(&u.child.id);
                }
            }
        }
        self.release_fd(u.fd);
    }

    /// Closes a connection's socket. SQEs naming it may still be queued and
    /// unsubmitted (the kernel resolves a plain fd when it issues the SQE), so
    /// they are submitted first: otherwise the number could be reused by a new
    /// socket before they run and they would act on the wrong connection.
    /// `shutdown` then ends the multishot receive still in flight on it.
    pub(super) fn release_fd(&mut self, fd: OwnedFd) {
        let _ = self.ring.submit();
        let _ = rustix::net::shutdown(fd.as_fd(), rustix::net::Shutdown::Both);
        drop(fd);
    }

    pub(super) fn rearm_starved(&mut self) {
        if self.starved.is_empty() {
            return;
        }
        if self.bufs.available() < REARM_FREE {
            self.unpin_all();
            if self.bufs.available() < REARM_FREE {
                return;
            }
        }
        for (side, r) in std::mem::take(&mut self.starved) {
            self.unstarve(side, r);
        }
    }

    /// The receive ring ran dry: copy every byte held for later (queued
    /// sends, unconsumed input) out of ring buffers so the ring refills. Only
    /// buffers inside in-flight sends stay pinned, and those drain.
    pub(super) fn unpin_all(&mut self) {
        for (_, c) in self.clients.iter_mut() {
            for b in c.pending.iter_mut() {
                b.detach();
            }
            compact_segs(&mut c.out.q);
        }
        for (_, u) in self.ups.iter_mut() {
            compact_segs(&mut u.out.q);
        }
        tracing::debug!(
            worker = self.id,
            free = self.bufs.available(),
            "receive buffers ran out: held data copied out of the ring"
        );
    }
}

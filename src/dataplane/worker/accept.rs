//! Accepting client connections: the multishot accept, its re-arm and back-off.

use super::*;

impl Worker {
    pub(super) fn on_accept(&mut self, c: Completion) {
        if let Returned::Fd(fd) = c.data {
            // No setsockopt here: the accepted socket inherits TCP_NODELAY
            // from the listener (server::bind_one, and its test).
            let gen = self.gen();
            let idx = self.clients.insert(Client::new(fd, gen, self.now));
            self.metrics.workers[self.id]
                .connections
                .fetch_add(1, Relaxed);
            self.arm_recv(Side::Client, (idx, gen));
        } else if c.result != -libc::ECANCELED {
            self.accept_errors += 1;
            if self.accept_errors.is_power_of_two() {
                tracing::warn!(
                    worker = self.id,
                    errno = -c.result,
                    count = self.accept_errors,
                    "accept failed (out of fds? raise the limit or lower --max-children)"
                );
            }
            if !c.more && !self.stopping {
                // Back off instead of spinning on a persistent error (EMFILE):
                // the heartbeat re-arms accept.
                self.accept_retry_at = Some(self.now + ACCEPT_BACKOFF);
            }
            return;
        }
        if !c.more && !self.stopping {
            self.arm_accept();
        }
    }

    /// Arms the multishot accept; if that fails, the heartbeat retries
    /// after [`ACCEPT_BACKOFF`] (a worker must never stop accepting for good).
    pub(super) fn arm_accept(&mut self) {
        let lfd = self.listener.as_raw_fd();
        if let Err(e) = self
            .ring
            .push(Op::AcceptMulti { fd: lfd }, tag(K_ACCEPT, (0, 0)))
        {
            tracing::error!(worker = self.id, error = %e, "cannot re-arm accept; retrying shortly");
            self.accept_retry_at = Some(self.now + ACCEPT_BACKOFF);
        }
    }
}

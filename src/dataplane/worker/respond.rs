//! The client side, writing: error answers, flushing the send queue, closing after the last byte.

use super::*;

impl Worker {
    /// Answers the current request of `r` with `err` (and says so in the
    /// log: at debug level for what the client did wrong, info otherwise).
    pub(super) fn respond_error(&mut self, r: Ref, err: &ProxyError) {
        let (status, side) = (err.status(), err.side().name());
        if err.side() == FailedSide::Client {
            tracing::debug!(worker = self.id, status, side, error = %err, "request answered with an error");
        } else {
            tracing::info!(worker = self.id, status, side, error = %err, "request answered with an error");
        }
        self.metrics.workers[self.id]
            .proxy_errors
            .fetch_add(1, Relaxed);
        let bad = matches!(err, ProxyError::BadRequest(_));
        self.answer_now(r, bad, |close| err.response(close));
    }

    /// Answers the current request of `r` with what `build(close)` makes,
    /// closing after it if the client asked, if a request body is left
    /// unread, or if `force_close`.
    pub(super) fn answer_now(
        &mut self,
        r: Ref,
        force_close: bool,
        build: impl FnOnce(bool) -> Vec<u8>,
    ) {
        let Some(cl) = self.clients.get_mut(r.0) else {
            return;
        };
        let unread_body = match &cl.phase {
            Phase::Waiting { head, .. } => has_body(head),
            Phase::Proxy { body, .. } | Phase::Closing { body, .. } => !body.is_done(),
            Phase::Head => false,
        };
        let close = !cl.keep_alive || unread_body || force_close;
        cl.phase = Phase::Head;
        cl.out.push(Seg::owned(build(close)));
        if close {
            cl.close_after_flush = true;
            cl.pending.clear();
            cl.pending_bytes = 0;
        }
        self.flush(Side::Client, r);
        if !close {
            self.process_client(r);
        }
    }

    /// Ends a client connection once what is queued for it is sent (at once
    /// if nothing is): used when a response cannot be completed.
    pub(super) fn close_when_flushed(&mut self, r: Ref) {
        let Some(cl) = self.clients.get_mut(r.0).filter(|c| c.gen == r.1) else {
            return;
        };
        cl.close_after_flush = true;
        cl.keep_alive = false;
        cl.phase = Phase::Head;
        cl.pending.clear();
        cl.pending_bytes = 0;
        if cl.out.is_idle() {
            self.close_client(r);
        } else {
            self.flush(Side::Client, r);
        }
    }
}

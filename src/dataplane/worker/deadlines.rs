//! Client deadlines (see `guard`), checked on the heartbeat, and the in-progress count the cleanup pacing reads.

use super::*;

impl Worker {
    /// Ends what ran out of a limit (see [`super::guard`]); also counts the
    /// requests in progress (waiting for a child or being proxied), which
    /// the cleanup pacing reads: a long tool call keeps the workers "serving"
    /// even when no new request arrives.
    pub(super) fn check_deadlines(&mut self) {
        let now = Instant::now();
        let mut busy = 0u64;
        let expired_clients: Vec<(Ref, Expiry)> = self
            .clients
            .iter()
            .filter_map(|(i, c)| {
                if matches!(c.phase, Phase::Waiting { .. } | Phase::Proxy { .. }) {
                    busy += 1;
                }
                expired(c, &self.limits, now).map(|e| ((i, c.gen), e))
            })
            .collect();
        self.metrics.workers[self.id]
            .in_progress
            .store(busy, Relaxed);
        for (r, why) in expired_clients {
            self.client_expired(r, why);
        }
        if let Some(limit) = self.limits.response {
            let late: Vec<Ref> = self
                .ups
                .iter()
                .filter(|(_, u)| {
                    u.client.is_some()
                        && u.asked_at
                            .is_some_and(|t| now.saturating_duration_since(t) > limit)
                })
                .map(|(i, u)| (i, u.gen))
                .collect();
            for up in late {
                tracing::debug!(
                    worker = self.id,
                    child = self.ups[up.0].child.id,
                    "child sent no response head within --response-timeout"
                );
                self.metrics.workers[self.id]
                    .response_timeouts
                    .fetch_add(1, Relaxed);
                // Never replayed: the child has the request and may be working on it.
                self.ups[up.0].replay = None;
                self.upstream_failed(up, ProxyError::ResponseTimeout);
            }
        }
    }

    pub(super) fn client_expired(&mut self, r: Ref, why: Expiry) {
        if !self.client_ok(r) {
            return;
        }
        let m = &self.metrics.workers[self.id];
        match why {
            Expiry::Idle => {
                m.idle_timeouts.fetch_add(1, Relaxed);
                self.close_when_flushed(r);
            }
            Expiry::Head => {
                m.head_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(
                    worker = self.id,
                    "no complete request head within --head-timeout"
                );
                let cl = &mut self.clients[r.0];
                cl.keep_alive = false;
                cl.head_acc.clear();
                cl.head_started = None;
                self.respond_error(r, &ProxyError::RequestTimeout);
            }
            Expiry::Send => {
                m.send_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(
                    worker = self.id,
                    "client stopped reading past --send-timeout"
                );
                self.abort_client(r);
            }
            Expiry::Body => {
                m.body_timeouts.fetch_add(1, Relaxed);
                tracing::debug!(worker = self.id, "request body stalled past --body-timeout");
                self.fail_request_body(r, &ProxyError::RequestTimeout);
            }
        }
    }

    /// A request whose body cannot be read to its end (broken framing, over
    /// `--max-body`, stalled): its upstream exchange is dropped and the client
    /// gets `err` and a close — or, if the child's response has begun (an
    /// error cannot follow it), just the close.
    pub(super) fn fail_request_body(&mut self, r: Ref, err: &ProxyError) {
        if let Phase::Proxy { up, .. } = self.clients[r.0].phase {
            if self.up_ok(up) && self.ups[up.0].got_bytes {
                self.abort_client(r);
                return;
            }
            self.close_up(up);
        }
        self.clients[r.0].keep_alive = false;
        self.respond_error(r, err);
    }
}

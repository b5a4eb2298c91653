//! The client side, reading: receive arming and backpressure, request heads, routing a request to its child.

use super::*;

impl Worker {
    /// Bytes from the client: queue them and consume what the phase allows.
    pub(super) fn on_client_data(&mut self, r: Ref, buf: BufRef) {
        let cl = &mut self.clients[r.0];
        cl.last_io = self.now;
        cl.last_recv = self.now;
        cl.pending_bytes += buf.len();
        cl.pending.push_back(buf);
        self.process_client(r);
        if self.client_ok(r) && self.clients[r.0].pending_bytes > HIGH_WATER {
            self.pause_recv(Side::Client, r);
        }
    }

    pub(super) fn on_client_eof(&mut self, r: Ref) {
        let cl = &mut self.clients[r.0];
        cl.eof = true;
        let idle = matches!(cl.phase, Phase::Head) && cl.pending.is_empty();
        if idle {
            self.close_when_flushed(r);
        } else {
            // The client went away mid-exchange (for SSE: cancellation). Drop
            // the upstream side at once so the child sees the disconnect.
            self.abort_client(r);
        }
    }

    /// Consumes as much of the client's pending input as the current phase allows.
    pub(super) fn process_client(&mut self, r: Ref) {
        loop {
            if !self.client_ok(r) {
                return;
            }
            let cl = &mut self.clients[r.0];
            match &mut cl.phase {
                Phase::Head => {
                    if cl.close_after_flush {
                        return;
                    }
                    let Some(buf) = cl.pending.pop_front() else {
                        if cl.eof {
                            self.on_client_eof(r);
                        } else if cl.recv.paused {
                            self.resume_recv(Side::Client, r);
                        }
                        return;
                    };
                    cl.pending_bytes -= buf.len();
                    cl.head_started.get_or_insert(self.now);
                    let prev = cl.head_acc.held();
                    let store = &mut self.req_store;
                    let parsed = cl
                        .head_acc
                        .feed(buf.as_slice(), |b| parse_request_into(b, store));
                    match parsed {
                        Ok(Parsed::Complete { head, head_len }) => {
                            let used = head_len - prev;
                            let rest = buf.slice(used, buf.len());
                            cl.head_acc.clear();
                            cl.head_started = None;
                            cl.served += 1;
                            if !rest.is_empty() {
                                cl.pending_bytes += rest.len();
                                cl.pending.push_front(rest);
                            }
                            self.on_request_head(r, head);
                        }
                        Ok(Parsed::Partial) => {}
                        Err(e) => {
                            tracing::debug!(worker = self.id, error = %e, "bad request");
                            let cl = &mut self.clients[r.0];
                            cl.pending.clear();
                            cl.pending_bytes = 0;
                            cl.head_acc.clear();
                            self.respond_error(r, &ProxyError::BadRequest(e));
                            return;
                        }
                    }
                }
                Phase::Waiting { .. } => {
                    for b in cl.pending.iter_mut() {
                        b.detach();
                    }
                    if cl.pending_bytes > HIGH_WATER {
                        self.pause_recv(Side::Client, r);
                    }
                    return;
                }
                Phase::Closing { body, answered } => {
                    while !body.is_done() {
                        let Some(mut buf) = cl.pending.pop_front() else {
                            break;
                        };
                        cl.pending_bytes -= buf.len();
                        match body.feed(buf.as_slice()) {
                            Ok(n) => {
                                buf.advance(n);
                                if !buf.is_empty() {
                                    cl.pending_bytes += buf.len();
                                    cl.pending.push_front(buf);
                                }
                            }
                            Err(e) => {
                                let e = ProxyError::BadRequest(e);
                                cl.pending.clear();
                                cl.pending_bytes = 0;
                                self.respond_error(r, &e);
                                return;
                            }
                        }
                    }
                    if !(body.is_done() && *answered) {
                        return;
                    }
                    let close = !cl.keep_alive;
                    cl.phase = Phase::Head;
                    cl.out
                        .push(Seg::owned(simple_response(200, "closed", &[], close)));
                    if close {
                        cl.close_after_flush = true;
                    }
                    self.flush(Side::Client, r);
                }
                Phase::Proxy { up, body } => {
                    let up = *up;
                    if body.is_done() {
                        return;
                    }
                    let mut segs = std::mem::take(&mut self.body_segs);
                    let mut err = None;
                    while !body.is_done() {
                        let Some(buf) = cl.pending.pop_front() else {
                            break;
                        };
                        cl.pending_bytes -= buf.len();
                        match body.feed(buf.as_slice()) {
                            Ok(n) => {
                                if n < buf.len() {
                                    let rest = buf.slice(n, buf.len());
                                    cl.pending_bytes += rest.len();
                                    cl.pending.push_front(rest);
                                }
                                if n > 0 {
                                    segs.push(buf.slice(0, n));
                                }
                            }
                            Err(e) => {
                                err = Some(e);
                                break;
                            }
                        }
                    }
                    let done = body.is_done();
                    if let Some(e) = err {
                        // A broken request body cannot be forwarded meaningfully.
                        tracing::debug!(worker = self.id, error = %e, "bad request body");
                        if e == HttpError::BodyTooLarge {
                            self.metrics.workers[self.id]
                                .too_large
                                .fetch_add(1, Relaxed);
                        }
                        self.fail_request_body(r, &ProxyError::BadRequest(e));
                        return;
                    }
                    self.send_upstream(up, &mut segs, done);
                    segs.clear();
                    self.body_segs = segs;
                    return;
                }
            }
        }
    }

    pub(super) fn on_request_head(&mut self, r: Ref, head: RequestHead) {
        self.metrics.workers[self.id].requests.fetch_add(1, Relaxed);
        let key_val = head.query_param(&self.key_param);
        // A balancer's health checks (`/healthz`, `/readyz` without a key)
        // are ringmux's own, and answer whatever Host they carry; with a key
        // the path is the rollout's and goes to its child.
        if key_val.is_none() {
            let (method, path) = (head.method(), head.path());
            if crate::admin::is_health_path(path) {
                // A body is not worth reading: answer and close.
                self.clients[r.0].keep_alive = head.keep_alive && !has_body(&head);
                let m = Arc::clone(&self.metrics);
                self.answer_now(r, false, |close| {
                    crate::admin::health_response(method, path, &m, close).unwrap_or_default()
                });
                return;
            }
        }
        // DNS-rebinding protection comes first: a refused request neither
        // starts a child nor closes a rollout.
        if let Err(why) = self.origin.check(&head.origin_headers()) {
            tracing::debug!(worker = self.id, "refused a request: {why}");
            self.metrics.workers[self.id].refused.fetch_add(1, Relaxed);
            self.clients[r.0].keep_alive = false;
            self.respond_error(r, &ProxyError::Forbidden(why));
            return;
        }
        if let BodyKind::Length(n) = head.body {
            if n > self.limits.max_body {
                // Refused before a child is asked for or sees a byte of it.
                tracing::debug!(worker = self.id, length = n, "request body over --max-body");
                self.metrics.workers[self.id]
                    .too_large
                    .fetch_add(1, Relaxed);
                self.clients[r.0].keep_alive = false;
                self.respond_error(r, &ProxyError::BadRequest(HttpError::BodyTooLarge));
                return;
            }
        }
        let key = RouteKey::from_key(key_val.as_deref());
        let cl = &mut self.clients[r.0];
        cl.keep_alive = head.keep_alive;
        if head.path() == self.close_path {
            self.metrics.workers[self.id].closes.fetch_add(1, Relaxed);
            cl.phase = Phase::Closing {
                body: BodyTracker::new(head.body).with_limit(self.limits.max_body),
                answered: false,
            };
            let token = (u64::from(r.1) << 32) | r.0 as u64;
            if self
                .control
                .send(ToControl::Close {
                    key,
                    worker: self.id,
                    token,
                })
                .is_err()
            {
                self.respond_error(r, &ProxyError::ShuttingDown);
            }
            return;
        }
        if let Some(child) = self.cache.get(&key) {
            // Not when it was retired as idle: then a new child is asked for.
            if let Some(busy) = child.is_alive().then(|| child.begin()).flatten() {
                let child = Arc::clone(child);
                self.start_proxy(r, child, head, busy);
                return;
            }
            self.cache.remove(&key);
        }
        self.wait_for_child(r, key, head, 0);
    }

    /// Parks a request until the control plane answers for `key`.
    pub(super) fn wait_for_child(&mut self, r: Ref, key: RouteKey, head: RequestHead, missed: u8) {
        let cl = &mut self.clients[r.0];
        // Its body (if any) may wait for a slow child start: hold it outside
        // the receive ring.
        for b in cl.pending.iter_mut() {
            b.detach();
        }
        // Only the first waiter asks; only its query is needed (a forked
        // child's hook gets it), so only it is copied.
        let list = self.waiting.entry(key).or_default();
        list.push(r);
        let query = (list.len() == 1).then(|| head.query().unwrap_or("").to_string());
        cl.phase = Phase::Waiting {
            key,
            head: Box::new(head),
            missed,
        };
        let Some(query) = query else {
            return;
        };
        if self
            .control
            .send(ToControl::Acquire {
                key,
                worker: self.id,
                query,
            })
            .is_err()
        {
            self.waiting.remove(&key);
            self.respond_error(r, &ProxyError::ShuttingDown);
        }
    }
}

//! The child side: connecting, forwarding the request, reading and forwarding the response, failures and retries.

use super::*;

impl Worker {
    /// Sends `head` (and then the body) to `child`, on a pooled connection
    /// or a new one; `busy` is the request's hold on the child.
    pub(super) fn start_proxy(
        &mut self,
        r: Ref,
        child: Arc<ChildInfo>,
        head: RequestHead,
        busy: crate::activity::Busy,
    ) {
        let up = match self.take_pooled(&child) {
            Some(u) => u,
            None => match self.new_upstream(&child) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "cannot open upstream socket");
                    if has_body(&head) {
                        self.clients[r.0].keep_alive = false;
                    }
                    let io = ChildIo::from_io(ChildOp::Socket, &e);
                    self.respond_error(r, &ProxyError::ChildUnreachable(io));
                    return;
                }
            },
        };
        let mut h = self.head_bufs.take();
        head.write_upstream(&child.host, &mut h);
        let u = &mut self.ups[up.0];
        u.client = Some(r);
        u.busy = Some(busy);
        u.req_is_head = head.is_head();
        if u.reused && idempotent(head.method()) {
            u.replay = Some(Vec::new());
        }
        self.clients[r.0].phase = Phase::Proxy {
            up,
            body: BodyTracker::new(head.body).with_limit(self.limits.max_body),
        };
        let body_done = matches!(head.body, BodyKind::None | BodyKind::Length(0));
        self.req_store = head.into_store();
        self.queue_upstream(up, Seg::owned(h));
        if body_done {
            self.ups[up.0].req_done = true;
            self.ups[up.0].asked_at = Some(self.now);
            self.flush(Side::Up, up);
        } else {
            self.process_client(r);
        }
    }

    pub(super) fn queue_upstream(&mut self, up: Ref, seg: Seg) {
        let u = &mut self.ups[up.0];
        if let Some(rep) = &mut u.replay {
            u.replay_bytes += seg.len();
            if u.replay_bytes > REPLAY_MAX {
                u.replay = None;
            } else {
                // An owned copy: a request waiting for its answer must not pin
                // a ring buffer.
                rep.push(Seg::owned(seg.as_slice().to_vec()));
            }
        }
        u.out.push(seg);
    }

    /// Queues the body pieces in `segs` (drained) for the child.
    pub(super) fn send_upstream(&mut self, up: Ref, segs: &mut Vec<BufRef>, done: bool) {
        if !self.up_ok(up) {
            return;
        }
        for s in segs.drain(..) {
            self.queue_upstream(up, Seg::Buf(s));
        }
        if done {
            self.ups[up.0].req_done = true;
            self.ups[up.0].asked_at = Some(self.now);
        }
        self.flush(Side::Up, up);
        let u = &self.ups[up.0];
        if u.out.bytes > HIGH_WATER {
            if let Some(c) = u.client {
                self.pause_recv(Side::Client, c);
            }
        }
    }

    pub(super) fn new_upstream(&mut self, child: &Arc<ChildInfo>) -> std::io::Result<Ref> {
        let addr = child.addr.sock_addr()?;
        let fd = child.addr.client_socket()?;
        let raw = fd.as_raw_fd();
        let gen = self.gen();
        let idx = self.ups.insert(Upstream::new(fd, gen, Arc::clone(child)));
        let r = (idx, gen);
        if let Err(e) = self
            .ring
            .push(Op::Connect { fd: raw, addr }, tag(K_UCONN, r))
        {
            self.ups.remove(idx);
            return Err(e);
        }
        Ok(r)
    }

    pub(super) fn on_up_connected(&mut self, up: Ref, result: i32) {
        if !self.up_ok(up) {
            return;
        }
        if result < 0 {
            let io = ChildIo::new(ChildOp::Connect, result);
            self.upstream_failed(up, ProxyError::ChildUnreachable(io));
            return;
        }
        self.ups[up.0].connected = true;
        self.arm_recv(Side::Up, up);
        self.flush(Side::Up, up);
    }

    pub(super) fn on_up_data(&mut self, up: Ref, mut buf: BufRef) {
        let u = &mut self.ups[up.0];
        u.got_bytes = true;
        u.replay = None;
        let Some(cr) = u.client else {
            // Bytes from an idle pooled connection: the child is not speaking
            // HTTP as we understand it; drop the connection.
            self.close_up(up);
            return;
        };
        if !self.client_ok(cr) {
            self.close_up(up);
            return;
        }
        // Response head(s).
        while self.ups[up.0].body.is_none() {
            let u = &mut self.ups[up.0];
            let prev = u.head_acc.held();
            let req_is_head = u.req_is_head;
            let store = &mut self.resp_store;
            let parsed = u.head_acc.feed(buf.as_slice(), |b| {
                parse_response_into(b, req_is_head, store)
            });
            match parsed {
                Ok(Parsed::Partial) => return,
                Ok(Parsed::Complete { head, head_len }) => {
                    u.head_acc.clear();
                    buf.advance(head_len - prev);
                    let child = Arc::clone(&u.child);
                    if child.mark_ready() {
                        tracing::debug!(
                            worker = self.id,
                            child = child.id,
                            ms = child.spawned.elapsed().as_secs_f64() * 1000.0,
                            "child answered its first request"
                        );
                    }
                    let cl = &mut self.clients[cr.0];
                    let mut h = self.head_bufs.take();
                    if head.is_informational() {
                        head.write_downstream(true, &mut h);
                        cl.out.push(Seg::owned(h));
                        self.resp_store = head.into_store();
                        self.flush(Side::Client, cr);
                        continue;
                    }
                    if head.body == BodyKind::CloseDelimited {
                        cl.keep_alive = false;
                    }
                    head.write_downstream(cl.keep_alive, &mut h);
                    cl.out.push(Seg::owned(h));
                    let u = &mut self.ups[up.0];
                    u.asked_at = None;
                    u.reusable = head.keep_alive;
                    u.body = Some(BodyTracker::new(head.body));
                    self.resp_store = head.into_store();
                }
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "invalid response from child");
                    self.upstream_failed(up, ProxyError::BadResponse(e));
                    return;
                }
            }
        }
        // Response body.
        let u = &mut self.ups[up.0];
        let Some(body) = u.body.as_mut() else {
            return;
        };
        let mut finished = body.is_done();
        if !buf.is_empty() && !finished {
            match body.feed(buf.as_slice()) {
                Ok(n) => {
                    if n < buf.len() {
                        // Bytes past the end of the response: never reuse.
                        u.reusable = false;
                    }
                    let part = buf.slice(0, n);
                    self.clients[cr.0].out.push(Seg::Buf(part));
                    finished = self.ups[up.0].body.as_ref().is_some_and(|b| b.is_done());
                }
                Err(e) => {
                    tracing::warn!(worker = self.id, error = %e, "bad response body framing");
                    self.close_up(up);
                    self.close_when_flushed(cr);
                    return;
                }
            }
        } else if !buf.is_empty() {
            u.reusable = false;
        }
        self.flush(Side::Client, cr);
        if finished {
            self.finish_exchange(up, cr);
        } else if self.client_ok(cr) && self.clients[cr.0].out.bytes > HIGH_WATER {
            self.pause_recv(Side::Up, up);
        }
    }

    pub(super) fn on_up_eof(&mut self, up: Ref) {
        let u = &self.ups[up.0];
        let Some(cr) = u.client else {
            self.close_up(up);
            return;
        };
        if let Some(body) = &u.body {
            if body.is_close_delimited() {
                self.ups[up.0].reusable = false;
                self.finish_exchange(up, cr);
            } else {
                // Truncated response: end the client connection once what we
                // have is sent, so it does not wait forever.
                self.close_up(up);
                self.close_when_flushed(cr);
            }
            return;
        }
        self.upstream_failed(up, ProxyError::ChildClosed);
    }

    /// The upstream connection failed before a response head reached the
    /// client: retry once on a fresh connection if the failed one was reused
    /// and we still hold the request; else answer the client with an error.
    pub(super) fn upstream_failed(&mut self, up: Ref, err: ProxyError) {
        let u = &mut self.ups[up.0];
        let cr = u.client;
        let child = Arc::clone(&u.child);
        let can_retry = u.reused && !u.got_bytes && u.req_done && u.replay.is_some();
        let req_is_head = u.req_is_head;
        let replay = u.replay.take();
        // A retry keeps the request's hold on the child across connections.
        let busy = u.busy.take();
        self.close_up(up);
        let Some(cr) = cr else {
            return;
        };
        if !self.client_ok(cr) {
            return;
        }
        if can_retry && child.is_alive() {
            if let (Some(segs), Ok(nu)) = (replay, self.new_upstream(&child)) {
                tracing::debug!(
                    worker = self.id,
                    "retrying on a fresh connection to the child"
                );
                let u = &mut self.ups[nu.0];
                u.client = Some(cr);
                u.busy = busy;
                u.req_done = true;
                u.asked_at = Some(self.now);
                u.req_is_head = req_is_head;
                for s in segs {
                    u.out.push(s);
                }
                if let Phase::Proxy { up: p, .. } = &mut self.clients[cr.0].phase {
                    *p = nu;
                }
                return;
            }
        }
        let err = if child.failure() == Failure::ReadyTimeout {
            ProxyError::ReadyTimeout
        } else {
            err
        };
        let body_done = match &self.clients[cr.0].phase {
            Phase::Proxy { body, .. } => body.is_done(),
            _ => true,
        };
        let cl = &mut self.clients[cr.0];
        cl.phase = Phase::Head;
        if !body_done {
            cl.keep_alive = false;
        }
        if cl.out.bytes > 0 {
            // A 1xx was already forwarded; an error now would be confusing.
            self.close_when_flushed(cr);
            return;
        }
        self.respond_error(cr, &err);
    }

    pub(super) fn finish_exchange(&mut self, up: Ref, cr: Ref) {
        let u = &mut self.ups[up.0];
        let req_done = match self.clients.get(cr.0).map(|c| &c.phase) {
            Some(Phase::Proxy { body, .. }) => body.is_done(),
            _ => true,
        };
        let reusable = u.reusable && req_done && u.out.is_idle() && u.child.is_alive();
        let child_id = u.child.id;
        u.reset_exchange();
        if reusable {
            self.ups[up.0].idle_since = Some(Instant::now());
            self.pool.entry(child_id).or_default().push(up);
            if self.ups[up.0].recv.paused {
                self.resume_recv(Side::Up, up);
            }
        } else {
            self.close_up(up);
        }
        if !self.client_ok(cr) {
            return;
        }
        let cl = &mut self.clients[cr.0];
        cl.phase = Phase::Head;
        if !req_done || !cl.keep_alive {
            self.close_when_flushed(cr);
            return;
        }
        if cl.recv.paused {
            self.resume_recv(Side::Client, cr);
        }
        self.process_client(cr);
    }
}

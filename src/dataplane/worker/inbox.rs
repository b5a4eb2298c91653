//! Messages from the control plane: children ready or failed, closes answered, shutdown.

use super::*;

impl Worker {
    pub(super) fn on_inbox(&mut self) {
        let msgs: Vec<ToWorker> = self.inbox.drain().collect();
        for m in msgs {
            match m {
                ToWorker::Ready { key, child } => {
                    self.cache.insert(key, Arc::clone(&child));
                    for r in self.waiting.remove(&key).unwrap_or_default() {
                        self.resume_waiter(r, &child);
                    }
                }
                ToWorker::Failed { key, error } => {
                    for r in self.waiting.remove(&key).unwrap_or_default() {
                        if !self.client_ok(r) {
                            continue;
                        }
                        let cl = &mut self.clients[r.0];
                        if let Phase::Waiting { head, .. } = &cl.phase {
                            // Its body was never read: the connection cannot
                            // carry another request after the error.
                            if !matches!(head.body, BodyKind::None | BodyKind::Length(0)) {
                                cl.keep_alive = false;
                            }
                            self.respond_error(r, &error);
                        }
                    }
                }
                ToWorker::Gone { key, child_id } => {
                    if self.cache.get(&key).is_some_and(|c| c.id == child_id) {
                        self.cache.remove(&key);
                    }
                    for r in self.pool.remove(&child_id).unwrap_or_default() {
                        if self.up_ok(r) && self.ups[r.0].client.is_none() {
                            self.close_up(r);
                        }
                    }
                }
                ToWorker::Closed { token } => {
                    let r = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
                    if self.client_ok(r) {
                        if let Phase::Closing { answered, .. } = &mut self.clients[r.0].phase {
                            *answered = true;
                        }
                        self.process_client(r);
                    }
                }
                ToWorker::Shutdown => {
                    self.stopping = true;
                    // Requests parked for a child will not get one: say so.
                    let parked: Vec<Ref> = self.waiting.drain().flat_map(|(_, v)| v).collect();
                    for r in parked {
                        if self.client_ok(r) {
                            self.clients[r.0].keep_alive = false;
                            self.respond_error(r, &ProxyError::ShuttingDown);
                        }
                    }
                }
            }
        }
    }

    pub(super) fn resume_waiter(&mut self, r: Ref, child: &Arc<ChildInfo>) {
        if !self.client_ok(r) {
            return;
        }
        let phase = std::mem::replace(&mut self.clients[r.0].phase, Phase::Head);
        match phase {
            Phase::Waiting { key, head, missed } if !child.is_alive() => {
                // Died between the answer and now: ask again, once.
                self.cache.remove(&key);
                if missed == 0 {
                    self.wait_for_child(r, key, *head, 1);
                } else {
                    if has_body(&head) {
                        self.clients[r.0].keep_alive = false;
                    }
                    self.respond_error(r, &ProxyError::ChildClosed);
                }
            }
            Phase::Waiting { key, head, missed } => match child.begin() {
                Some(busy) => {
                    self.start_proxy(r, Arc::clone(child), *head, busy);
                    self.resume_recv(Side::Client, r);
                }
                // Retired as idle since the answer (it is being torn down):
                // ask again; that is no failure of the child's.
                None => {
                    self.cache.remove(&key);
                    self.wait_for_child(r, key, *head, missed);
                }
            },
            other => self.clients[r.0].phase = other,
        }
    }
}

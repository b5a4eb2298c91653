//! Idle keep-alive connections to children, per child: taking one, expiring old ones.

use super::*;

impl Worker {
    pub(super) fn take_pooled(&mut self, child: &Arc<ChildInfo>) -> Option<Ref> {
        loop {
            let list = self.pool.get_mut(&child.id)?;
            // An empty list stays (with its capacity) for the connection's
            // return; it goes when the child does (`ChildGone`).
            let r = list.pop()?;
            if !self.up_ok(r) {
                continue;
            }
            let u = &mut self.ups[r.0];
            let fresh = u.idle_since.is_some_and(|t| t.elapsed() < POOL_IDLE_MAX);
            if u.client.is_none() && u.recv.op.is_some() && fresh {
                u.reused = true;
                u.idle_since = None;
                return Some(r);
            }
            if u.client.is_none() {
                self.close_up(r);
            }
        }
    }

    /// Closes pooled connections idle for longer than [`POOL_IDLE_MAX`].
    pub(super) fn expire_pool(&mut self) {
        let expired: Vec<Ref> = self
            .pool
            .values()
            .flatten()
            .copied()
            .filter(|r| {
                self.ups.get(r.0).is_some_and(|u| {
                    u.gen == r.1
                        && u.client.is_none()
                        && u.idle_since.is_none_or(|t| t.elapsed() >= POOL_IDLE_MAX)
                })
            })
            .collect();
        for r in expired {
            self.close_up(r);
        }
    }
}

//! `--child-idle-timeout`: once a second, close every keyed child that has
//! had no request in flight and none started or ended for the timeout, with
//! the teardown of a close (kill, reap, directory into the trash). The
//! retirement itself is one atomic step shared with the workers
//! ([`crate::activity`]), so a request that starts meanwhile either keeps
//! the child or asks for a new one; it never runs on a child being killed.

use crate::metrics::ExitCause;
use crate::route::RouteKey;

use super::keys::KeyState;
use super::Control;

impl Control {
    pub(super) fn retire_idle_children(&mut self) {
        let Some(timeout) = self.cfg.child_idle_timeout else {
            return;
        };
        for (key, state) in self.keys.iter_mut() {
            // The default child is shared by every keyless client: never
            // idle in the sense of an abandoned rollout.
            if *key == RouteKey::Default {
                continue;
            }
            let KeyState::Running { live, .. } = state else {
                continue;
            };
            // A child that has not answered yet is under --ready-timeout.
            if live.killed.is_some() || !live.child.is_ready() {
                continue;
            }
            if let Some(idle) = live.child.activity.retire_if_idle(timeout) {
                tracing::info!(key = %key.label(), pid = live.pid, idle_s = idle.as_secs(),
                    "closing a child idle past --child-idle-timeout");
                super::exit::kill(live, ExitCause::Idle);
            }
        }
    }
}

//! A finished child's cgroup: after the child itself is reaped, everything
//! else that ran in its cgroup (setsid daemons, double forks) is killed with
//! `cgroup.kill`, and the key waits in `Draining` until `cgroup.events` says
//! `populated 0` (polled on the control ring with `POLLPRI`, re-checked on
//! every heartbeat), then the cgroup is removed and the directory teardown
//! starts. Also: dead instances' cgroups, killed at start-up and removed once
//! empty.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;

use ringmux_uring::Op;

use crate::cgroup::{self, ChildCgroup};
use crate::route::RouteKey;

use super::keys::{Ended, KeyState};
use super::{tag, Control, K_CG_EVENTS};

impl Control {
    /// Kills what is left in `cg` and tears the key down once it is empty.
    pub(super) fn drain(&mut self, cg: ChildCgroup, end: Ended) {
        let label = end.key.label();
        if let Err(e) = cg.kill() {
            tracing::warn!(key = %label, cgroup = %cg.name, error = %e, "cgroup.kill failed");
        }
        let events = match cg.events() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(key = %label, cgroup = %cg.name, error = %e,
                    "cannot read cgroup.events; removing the cgroup as it is");
                self.cgroup_empty(cg, end);
                return;
            }
        };
        if !cgroup::populated_events(events.as_fd()).unwrap_or(false) {
            self.cgroup_empty(cg, end);
            return;
        }
        tracing::debug!(key = %label, cgroup = %cg.name, "waiting for the rollout's processes to die");
        self.arm_cgroup_events(end.child_id, events.as_raw_fd());
        self.by_child.insert(end.child_id, end.key);
        self.draining.insert(end.key);
        let key = end.key;
        self.keys.insert(
            key,
            KeyState::Draining {
                cgroup: cg,
                events,
                end,
            },
        );
    }

    fn arm_cgroup_events(&mut self, child_id: u64, events: RawFd) {
        let pushed = self.ring.push(
            Op::PollAdd {
                fd: events,
                events: (libc::POLLPRI | libc::POLLERR) as u32,
            },
            tag(K_CG_EVENTS, child_id),
        );
        if let Err(e) = pushed {
            // The heartbeat re-checks every draining cgroup anyway.
            tracing::debug!(error = %e, "cannot poll cgroup.events");
        }
    }

    /// Whether `key` is draining child `child_id`'s cgroup and it is empty
    /// (`None`: not draining that child); reading re-arms the notification.
    fn drained(&self, key: RouteKey, child_id: Option<u64>) -> Option<(bool, RawFd)> {
        match self.keys.get(&key) {
            Some(KeyState::Draining { events, end, .. })
                if child_id.is_none_or(|id| id == end.child_id) =>
            {
                let busy = cgroup::populated_events(events.as_fd()).unwrap_or(false);
                Some((!busy, events.as_raw_fd()))
            }
            _ => None,
        }
    }

    /// `cgroup.events` of child `child_id`'s cgroup changed.
    pub(super) fn on_cgroup_event(&mut self, child_id: u64) {
        let Some(key) = self.by_child.get(&child_id).copied() else {
            return;
        };
        match self.drained(key, Some(child_id)) {
            Some((true, _)) => self.finish_drain(key),
            Some((false, fd)) => self.arm_cgroup_events(child_id, fd),
            None => {}
        }
    }

    /// On every heartbeat: draining cgroups that emptied without an event,
    /// and killed cgroups waiting to be removed.
    pub(super) fn check_draining_cgroups(&mut self) {
        let empty: Vec<RouteKey> = self
            .draining
            .iter()
            .copied()
            .filter(|k| matches!(self.drained(*k, None), Some((true, _))))
            .collect();
        for k in empty {
            self.finish_drain(k);
        }
        self.stale_cgroups.retain(|(path, fd)| {
            if cgroup::populated(fd.as_fd()).unwrap_or(false) {
                return true;
            }
            match cgroup::remove_tree(path) {
                Ok(()) => tracing::info!(cgroup = %path.display(), "removed a killed cgroup"),
                Err(e) => tracing::warn!(cgroup = %path.display(), error = %e,
                    "could not remove a killed cgroup"),
            }
            false
        });
    }

    fn finish_drain(&mut self, key: RouteKey) {
        self.draining.remove(&key);
        let Some(KeyState::Draining {
            cgroup: cg, end, ..
        }) = self.keys.remove(&key)
        else {
            return;
        };
        self.by_child.remove(&end.child_id);
        self.cgroup_empty(cg, end);
    }

    fn cgroup_empty(&mut self, cg: ChildCgroup, end: Ended) {
        let name = cg.name.clone();
        if let Some(cpu) = cg.cpu_seconds() {
            self.metrics.rollout_cpu.observe(cpu);
            tracing::debug!(key = %end.key.label(), cgroup = %name, cpu_s = cpu, "rollout accounted");
        }
        if let Some(peak) = cg.memory_peak() {
            self.metrics.rollout_memory_peak.observe(peak);
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(key = %end.key.label(), cgroup = %name, error = %e,
                "could not remove a child's cgroup");
        }
        self.metrics.live_cgroups.fetch_sub(1, Relaxed);
        self.child_gone(end);
    }

    /// At start-up: kills what runs in dead instances' cgroups; they are
    /// removed once empty.
    pub(super) fn sweep_stale_cgroups(&mut self) {
        let Some(tree) = &self.cfg.cgroups else {
            return;
        };
        tree.remove_dead_leaves();
        for (path, fd) in tree.stale() {
            tracing::warn!(cgroup = %path.display(),
                "killing what runs in the cgroup of a dead ringmux instance");
            if let Err(e) = cgroup::kill(fd.as_fd()) {
                tracing::warn!(cgroup = %path.display(), error = %e, "cgroup.kill failed");
            }
            self.stale_cgroups.push((path, fd));
        }
    }
}

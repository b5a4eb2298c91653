//! A finished child's cgroup: after the child itself is reaped, everything
//! else that ran in its cgroup (setsid daemons, double forks) is killed with
//! `cgroup.kill`, and the key waits in `Draining` until `cgroup.events` says
//! `populated 0` (polled on the control ring with `POLLPRI`, re-checked on
//! every heartbeat), then the cgroup is removed and the directory teardown
//! starts. Also: dead instances' cgroups, killed at start-up and removed once
//! empty.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;

use ringmux_uring::Op;

use crate::cgroup::{self, ChildCgroup};
use crate::route::RouteKey;

use super::keys::{KeyState, Waiting};
use super::{tag, Control, K_CG_EVENTS};

impl Control {
    /// Kills what is left in `cg` and tears the key down once it is empty.
    pub(super) fn drain(
        &mut self,
        key: RouteKey,
        child_id: u64,
        cg: ChildCgroup,
        post_mortem: bool,
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
    ) {
        if let Err(e) = cg.kill() {
            tracing::warn!(key = %key.label(), cgroup = %cg.name, error = %e, "cgroup.kill failed");
        }
        let events = match cg.events() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(key = %key.label(), cgroup = %cg.name, error = %e,
                    "cannot read cgroup.events; removing the cgroup as it is");
                self.cgroup_empty(key, child_id, cg, post_mortem, closers, acquirers);
                return;
            }
        };
        if !cgroup::populated_events(events.as_fd()).unwrap_or(false) {
            self.cgroup_empty(key, child_id, cg, post_mortem, closers, acquirers);
            return;
        }
        tracing::debug!(key = %key.label(), cgroup = %cg.name, "waiting for the rollout's processes to die");
        self.arm_cgroup_events(child_id, &events);
        self.by_child.insert(child_id, key);
        self.keys.insert(
            key,
            KeyState::Draining {
                child_id,
                cgroup: cg,
                events,
                post_mortem,
                closers,
                acquirers,
            },
        );
    }

    fn arm_cgroup_events(&mut self, child_id: u64, events: &OwnedFd) {
        let pushed = self.ring.push(
            Op::PollAdd {
                fd: events.as_raw_fd(),
                events: (libc::POLLPRI | libc::POLLERR) as u32,
            },
            tag(K_CG_EVENTS, child_id),
        );
        if let Err(e) = pushed {
            // The heartbeat re-checks every draining cgroup anyway.
            tracing::debug!(error = %e, "cannot poll cgroup.events");
        }
    }

    /// `cgroup.events` of child `child_id`'s cgroup changed.
    pub(super) fn on_cgroup_event(&mut self, child_id: u64) {
        let Some(key) = self.by_child.get(&child_id).copied() else {
            return;
        };
        let still = match self.keys.get(&key) {
            Some(KeyState::Draining {
                child_id: id,
                events,
                ..
            }) if *id == child_id => cgroup::populated_events(events.as_fd()).unwrap_or(false),
            _ => return,
        };
        if still {
            if let Some(KeyState::Draining { events, .. }) = self.keys.get(&key) {
                let fd = events.as_raw_fd();
                let _ = self.ring.push(
                    Op::PollAdd {
                        fd,
                        events: (libc::POLLPRI | libc::POLLERR) as u32,
                    },
                    tag(K_CG_EVENTS, child_id),
                );
            }
            return;
        }
        self.finish_drain(key);
    }

    /// On every heartbeat: draining cgroups that emptied without an event,
    /// and dead instances' cgroups.
    pub(super) fn check_draining_cgroups(&mut self) {
        let empty: Vec<RouteKey> = self
            .keys
            .iter()
            .filter_map(|(k, st)| match st {
                KeyState::Draining { events, .. }
                    if !cgroup::populated_events(events.as_fd()).unwrap_or(false) =>
                {
                    Some(*k)
                }
                _ => None,
            })
            .collect();
        for k in empty {
            self.finish_drain(k);
        }
        self.stale_cgroups.retain(|(path, fd)| {
            if cgroup::populated(fd.as_fd()).unwrap_or(false) {
                return true;
            }
            match cgroup::remove_tree(path) {
                Ok(()) => tracing::info!(cgroup = %path.display(),
                    "removed the cgroup of a dead ringmux instance"),
                Err(e) => tracing::warn!(cgroup = %path.display(), error = %e,
                    "could not remove a dead instance's cgroup"),
            }
            false
        });
    }

    fn finish_drain(&mut self, key: RouteKey) {
        let Some(KeyState::Draining {
            child_id,
            cgroup: cg,
            post_mortem,
            closers,
            acquirers,
            ..
        }) = self.keys.remove(&key)
        else {
            return;
        };
        self.by_child.remove(&child_id);
        self.cgroup_empty(key, child_id, cg, post_mortem, closers, acquirers);
    }

    fn cgroup_empty(
        &mut self,
        key: RouteKey,
        child_id: u64,
        cg: ChildCgroup,
        post_mortem: bool,
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
    ) {
        let name = cg.name.clone();
        if let Some(cpu) = cg.cpu_seconds() {
            self.metrics.rollout_cpu.observe(cpu);
            tracing::debug!(key = %key.label(), cgroup = %name, cpu_s = cpu, "rollout accounted");
        }
        if let Some(peak) = cg.memory_peak() {
            self.metrics.rollout_memory_peak.observe(peak);
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(key = %key.label(), cgroup = %name, error = %e, "could not remove a child's cgroup");
        }
        self.metrics.live_cgroups.fetch_sub(1, Relaxed);
        self.child_gone(key, child_id, post_mortem, closers, acquirers);
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

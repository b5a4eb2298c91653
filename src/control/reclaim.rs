//! Giving disk space back: directories are moved into the trash
//! ([`super::trash`]) and deleted there by [`Cleanup`]s that share one
//! [`Allowance`] per turn of the control loop, as the [`super::pace`]
//! decides from the data plane's load. Also the fallback (deleting in place,
//! when a rename into the trash fails), the trash's metrics and log lines,
//! and the pacing timer.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use ringmux_uring::Op;

use super::cleanup::Cleanup;
use super::keys::KeyState;
use super::pace::{Load, Mode, STEP};
use super::{tag, ActiveCleanup, Control, K_PACE, K_UNLINK};
use crate::route::RouteKey;

/// Which directory a name handed to [`Control::discard`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Parent {
    /// The instance directory.
    Instance,
}

/// What became of a directory handed to [`Control::discard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Discarded {
    /// It is out of the way: in the trash, or it did not exist.
    Gone,
    /// It could not be moved and is being deleted where it is; `key`'s
    /// teardown ends when that finishes.
    InPlace,
}

impl Control {
    /// Moves `parent/name` into the trash (as `<prefix>-<n>`) to be deleted
    /// there, paced; if it cannot be moved, deletes it in place (for `key`,
    /// whose teardown then waits for it).
    pub(super) fn discard(
        &mut self,
        parent: Parent,
        name: &str,
        prefix: &str,
        key: Option<RouteKey>,
    ) -> Discarded {
        let from: BorrowedFd<'_> = match parent {
            Parent::Instance => self.cfg.instance_fd.as_fd(),
        };
        if let Some(trash) = self.trash.as_mut() {
            let was_broken = trash.is_broken();
            match trash.take(from, name, prefix) {
                Ok(Some(tname)) => {
                    self.trash_tree(&tname);
                    return Discarded::Gone;
                }
                Ok(None) => return Discarded::Gone,
                // The trash itself is broken (deleted, read-only): it refuses
                // every later take, so say it once.
                Err(e) if trash.is_broken() => {
                    if !was_broken {
                        tracing::error!(dir = %name, error = %e,
                            "the trash is unusable; closed rollouts' directories are deleted in place from now on (the close waits for it)");
                    }
                }
                // This tree only (another filesystem, a mount point).
                Err(e) => tracing::warn!(dir = %name, error = %e,
                    "cannot move a directory into the trash; deleting it in place"),
            }
        }
        let from: BorrowedFd<'_> = match parent {
            Parent::Instance => self.cfg.instance_fd.as_fd(),
        };
        match Cleanup::start(from, name) {
            Ok(work) if work.is_done() => Discarded::Gone,
            Ok(work) => {
                self.metrics.cleanups_in_flight.fetch_add(1, Relaxed);
                self.cleanups.insert(ActiveCleanup {
                    key,
                    work,
                    stale: None,
                    trash: false,
                });
                Discarded::InPlace
            }
            Err(e) => {
                tracing::error!(dir = %name, error = %e, "cannot start directory cleanup");
                Discarded::Gone
            }
        }
    }

    /// Starts deleting the trash entry `name`.
    pub(super) fn trash_tree(&mut self, name: &str) {
        let Some(trash) = self.trash.as_ref() else {
            return;
        };
        match Cleanup::start(trash.fd(), name) {
            Ok(work) => {
                self.metrics.cleanups_in_flight.fetch_add(1, Relaxed);
                self.metrics.trash_trees.fetch_add(1, Relaxed);
                self.cleanups.insert(ActiveCleanup {
                    key: None,
                    work,
                    stale: None,
                    trash: true,
                });
            }
            Err(e) => tracing::warn!(entry = %name, error = %e, "cannot delete a trash entry"),
        }
    }

    /// Queues whatever an earlier life left in the trash.
    pub(super) fn trash_leftovers(&mut self) {
        let names = self.trash.as_ref().map(|t| t.entries()).unwrap_or_default();
        if !names.is_empty() {
            tracing::info!(
                entries = names.len(),
                "deleting what an earlier run left in the trash"
            );
        }
        for n in names {
            self.trash_tree(&n);
        }
    }

    /// One unlink of cleanup `idx` finished.
    pub(super) fn on_unlink(&mut self, idx: usize, result: i32, is_dir: bool) {
        if let Some(a) = self.cleanups.get_mut(idx) {
            a.work.on_complete(result, is_dir);
            if a.trash && result == 0 {
                self.metrics.trash_removed.fetch_add(1, Relaxed);
            }
        }
    }

    /// What the data plane is doing (for the pacing).
    pub(super) fn load(&self) -> Load {
        let mut load = Load::default();
        for w in &self.metrics.workers {
            // A close is not traffic that its own deletion could disturb.
            load.requests += w.requests.load(Relaxed) - w.closes.load(Relaxed);
            load.beats += w.beats.load(Relaxed);
            load.lag_us = load.lag_us.max(w.lag_last_us.load(Relaxed));
            load.in_progress += w.in_progress.load(Relaxed);
        }
        load
    }

    /// Once a second: the drain-rate gauge.
    pub(super) fn trash_second(&mut self) {
        let removed = self.metrics.trash_removed.load(Relaxed);
        self.metrics
            .trash_drain_rate
            .store(removed.saturating_sub(self.removed_at_last_second), Relaxed);
        self.removed_at_last_second = removed;
    }

    /// Advances every cleanup within this turn's allowance; returns true if
    /// one has work ready that needs no completion first.
    pub(super) fn pump_cleanups(&mut self) -> bool {
        if self.cleanups.is_empty() {
            self.metrics.trash_backlog.store(0, Relaxed);
            return false;
        }
        let backlog: u64 = self
            .cleanups
            .iter()
            .filter(|(_, a)| a.trash)
            .map(|(_, a)| a.work.known_left())
            .sum();
        self.metrics.trash_backlog.store(backlog, Relaxed);
        let load = self.load();
        let (mut allow, was) = self.pacer.update(Instant::now(), load, backlog);
        let mode = self.pacer.mode();
        self.metrics
            .trash_pace_rate
            .store(self.pacer.rate(), Relaxed);
        if let Some(was) = was {
            self.mode_changed(was, mode, backlog);
        }
        let mut finished = Vec::new();
        let mut busy = false;
        for (idx, a) in self.cleanups.iter_mut() {
            busy |= a
                .work
                .pump(&mut self.ring, tag(K_UNLINK, idx as u64), &mut allow);
            if a.work.is_done() {
                finished.push(idx);
            }
        }
        self.pacer.refund(allow.tokens);
        for idx in finished {
            self.cleanup_finished(idx);
        }
        // Paced work that waits for tokens: wake up on the next step.
        if allow.limited() && !self.cleanups.is_empty() && !self.pace_armed {
            match self.ring.push(Op::Timeout { after: STEP }, tag(K_PACE, 0)) {
                Ok(_) => self.pace_armed = true,
                // The 10 ms heartbeat still wakes the loop.
                Err(e) => tracing::debug!(error = %e, "cannot arm the pacing timer"),
            }
        }
        busy
    }

    fn mode_changed(&mut self, was: Mode, now: Mode, backlog: u64) {
        let idx = Mode::ALL.iter().position(|m| *m == now).unwrap_or(0);
        self.metrics.trash_mode.store(idx as u64, Relaxed);
        self.place_cleanup_threads(now);
        match now {
            Mode::OverCap => {
                self.metrics.trash_over_cap.fetch_add(1, Relaxed);
                tracing::warn!(backlog, max = self.pace_cfg.backlog_max,
                    "trash backlog over --cleanup-backlog-max: deleting at full speed until it is under half");
            }
            _ if was == Mode::OverCap => {
                tracing::info!(
                    backlog,
                    "trash backlog under half its cap again: pacing resumes"
                );
            }
            _ => tracing::debug!(
                from = was.label(),
                to = now.label(),
                backlog,
                "cleanup pacing"
            ),
        }
    }

    fn cleanup_finished(&mut self, idx: usize) {
        let a = self.cleanups.remove(idx);
        let s = a.work.stats;
        let took = a.work.elapsed();
        self.metrics.cleanups_in_flight.fetch_sub(1, Relaxed);
        if a.trash {
            self.metrics.trash_trees.fetch_sub(1, Relaxed);
        }
        self.metrics
            .cleanup_finished(took, s.files + s.dirs, s.errors > 0);
        let ms = took.as_secs_f64() * 1000.0;
        if let Some((name, _lock)) = &a.stale {
            if s.errors == 0 {
                self.metrics.stale_instances_removed.fetch_add(1, Relaxed);
                tracing::info!(dir = %name, files = s.files, dirs = s.dirs, ms,
                    "removed the directory of a dead ringmux instance");
            } else {
                tracing::warn!(dir = %name, errors = s.errors,
                    "could not fully remove a dead instance's directory");
            }
        }
        if a.trash {
            if s.errors > 0 {
                tracing::warn!(
                    files = s.files,
                    dirs = s.dirs,
                    errors = s.errors,
                    "a trash entry could not be fully deleted"
                );
            } else {
                tracing::debug!(
                    files = s.files,
                    dirs = s.dirs,
                    ms,
                    mode = self.pacer.mode().label(),
                    "trash entry deleted"
                );
            }
        }
        let Some(key) = a.key else {
            return;
        };
        let label = key.label();
        if s.errors > 0 {
            tracing::warn!(key = %label, files = s.files, dirs = s.dirs, errors = s.errors,
                "directory cleanup finished with errors");
        } else {
            tracing::info!(key = %label, files = s.files, dirs = s.dirs, ms, "directory removed in place");
        }
        if let Some(KeyState::Teardown {
            closers, acquirers, ..
        }) = self.keys.remove(&key)
        {
            self.finish_teardown(key, closers, acquirers);
        }
    }

    /// At the end of a shutdown: the empty trash goes too.
    pub(super) fn remove_trash(&mut self) {
        if let Some(t) = self.trash.take() {
            if let Err(e) = t.remove(self.cfg.instance_fd.as_fd()) {
                tracing::warn!(error = %e, "could not remove the trash directory");
            }
        }
    }
}

//! The end of a child: the ready deadline, its exit (seen by WAITID on its
//! pidfd, which reaps it), a forked child's setup report, the kill, the
//! optional post-mortem copy of a failed child's directory, and the directory
//! teardown that ends a key's `Teardown` state.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use ringmux_uring::op::ExitInfo;
use ringmux_uring::Op;

use crate::metrics::ExitCause;
use crate::msg::ToWorker;
use crate::route::{Failure, RouteKey};
use crate::zygote::{channel, proto::FromChild};

use super::keys::{Ended, KeyState, Live, Waiting};
use super::reclaim::{Discarded, Parent};
use super::{tag, Control, K_IGNORE};

/// Kills a child and its process group.
pub(super) fn kill(live: &mut Live, why: ExitCause) {
    live.killed = Some(why);
    live.child.mark_dead();
    if let Some(cg) = &live.cgroup {
        // Everything the child started, wherever it moved in the process
        // tree (setsid, double forks), dies with it.
        if let Err(e) = cg.kill() {
            tracing::warn!(pid = live.pid, cgroup = %cg.name, error = %e, "cgroup.kill failed");
        }
    }
    if let Err(e) = rustix::process::pidfd_send_signal(&live.pidfd, rustix::process::Signal::KILL) {
        // ESRCH: it already exited and was reaped; its pid may belong to
        // someone else now, so no group kill by number either.
        if e != rustix::io::Errno::SRCH {
            tracing::warn!(pid = live.pid, error = %e, "pidfd kill failed");
        }
        return;
    }
    if let Some(pgid) = rustix::process::Pid::from_raw(live.pid as i32) {
        // The child leads its own group; grandchildren die with it.
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
}

/// `text` with every value of `query` longer than 5 bytes replaced, so that
/// an error a hook or fork server reports never puts a rollout key in the log.
pub(super) fn redact(text: &str, query: &str) -> String {
    let mut out = text.to_string();
    for pair in query.split('&') {
        let value = pair.split_once('=').map_or(pair, |(_, v)| v);
        if value.len() > 5 {
            out = out.replace(value, "<redacted>");
            let decoded = crate::http::query::decode(value);
            if decoded.len() > 5 {
                out = out.replace(decoded.as_ref(), "<redacted>");
            }
        }
    }
    out
}

/// Reads a forked child's one status message, if it came; returns the
/// socket when nothing is there yet (to keep listening).
fn read_status(key: RouteKey, live: &mut Live, query: &str) -> Option<std::os::fd::OwnedFd> {
    let status = live.status.take()?;
    let since = live.child.spawned.elapsed().as_secs_f64() * 1000.0;
    match channel::recv(status.as_fd()).map(|m| m.map(|m| FromChild::parse(&m.bytes))) {
        Ok(Some(Ok(FromChild::SetupDone))) => {
            tracing::debug!(key = %key.label(), pid = live.pid, ms = since, "child setup done");
        }
        Ok(Some(Ok(FromChild::SetupFailed { error }))) => {
            let error = redact(&error, query);
            tracing::error!(key = %key.label(), pid = live.pid, %error,
                "the child's per-rollout setup failed; killing it");
            live.setup_failed = true;
            // (Not when read at its exit: it is reaped already.)
            if live.killed.is_none() && live.child.is_alive() {
                kill(live, ExitCause::SetupFailed);
            }
        }
        Ok(Some(Err(e))) => {
            tracing::warn!(key = %key.label(), pid = live.pid, error = %e,
                "invalid message on a child's status socket");
        }
        // It closed the socket without a word (it exited): its exit says why.
        Ok(None) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(status),
        Err(e) => {
            tracing::warn!(key = %key.label(), pid = live.pid, error = %e,
                "cannot read a child's status socket");
        }
    }
    None
}

impl Control {
    pub(super) fn on_ready_deadline(&mut self, child_id: u64) {
        let Some(key) = self.by_child.get(&child_id).copied() else {
            return;
        };
        if let Some(KeyState::Running { live, .. }) = self.keys.get_mut(&key) {
            live.ready_timer = None;
            if live.child.id == child_id && !live.child.is_ready() && live.killed.is_none() {
                tracing::warn!(key = %key.label(), pid = live.pid,
                    timeout_ms = self.cfg.ready_timeout.as_millis() as u64,
                    "child did not become ready in time; killing it");
                live.child.set_failure(Failure::ReadyTimeout);
                kill(live, ExitCause::ReadyTimeout);
            }
        }
    }

    /// A forked child's status socket is readable: its per-rollout setup
    /// finished or failed (or it closed the socket).
    pub(super) fn on_child_status(&mut self, child_id: u64) {
        let Some(key) = self.by_child.get(&child_id).copied() else {
            return;
        };
        let Some(KeyState::Running {
            live, acquirers, ..
        }) = self.keys.get_mut(&key)
        else {
            return;
        };
        if live.child.id != child_id {
            return;
        }
        let Some(again) = read_status(key, live, &acquirers.query) else {
            return;
        };
        // A spurious wake-up: keep listening.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&again);
        let events = libc::POLLIN as u32;
        if self
            .ring
            .push(Op::PollAdd { fd, events }, tag(super::K_STATUS, child_id))
            .is_ok()
        {
            if let Some(KeyState::Running { live, .. }) = self.keys.get_mut(&key) {
                live.status = Some(again);
            }
        }
    }

    /// A child exited (its zombie kept by the ring's `WNOWAIT` wait). It is
    /// reaped here once what was left of its process group is killed (until
    /// then its pid, its group's id, must not be reused), and before its
    /// key's teardown can answer a close: a `200 closed` means the process
    /// is gone, zombie included.
    pub(super) fn on_exit(&mut self, child_id: u64, exit: Option<ExitInfo>, result: i32) {
        let exited = Instant::now();
        let reap = || {
            if let Some(e) = exit {
                crate::child::sys::reap(e.pid);
            }
        };
        let Some(key) = self.by_child.remove(&child_id) else {
            reap();
            return;
        };
        let Some(KeyState::Running {
            mut live,
            closers,
            acquirers,
        }) = self.keys.remove(&key)
        else {
            reap();
            return;
        };
        self.live = self.live.saturating_sub(1);
        live.child.mark_dead();
        self.addrs.remove(&live.child.addr);
        // A setup report written just before it exited may not have been
        // read yet: read it now, so a failed hook is logged as such.
        let _ = read_status(key, &mut live, &acquirers.query);
        if live.killed.is_none() {
            // It died on its own: take down what it left in its group.
            if let Some(pgid) = rustix::process::Pid::from_raw(live.pid as i32) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
        }
        reap();
        for w in &self.workers {
            let _ = w.send(ToWorker::Gone {
                key,
                child_id: live.child.id,
            });
        }
        if let Some(t) = live.ready_timer {
            let _ = self.ring.push(Op::Cancel { target: t }, tag(K_IGNORE, 0));
        }
        let label = key.label();
        let how = match exit {
            Some(e) if e.code == libc::CLD_EXITED => format!("exited with status {}", e.status),
            Some(e) => format!("killed by signal {}", e.status),
            None => format!("wait failed (errno {})", -result),
        };
        let cause = match live.killed {
            Some(c) => c,
            None if live.setup_failed => ExitCause::SetupFailed,
            None if live.cgroup.as_ref().is_some_and(|c| c.oom_killed()) => ExitCause::Oom,
            None => ExitCause::Crashed,
        };
        self.metrics.child_exited(cause);
        self.metrics.live_children.store(self.live as u64, Relaxed);
        if cause == ExitCause::Oom {
            tracing::warn!(key = %label, pid = live.pid, %how,
                "child killed by its memory limit (--child-memory-max): exit cause oom");
        } else if matches!(cause, ExitCause::Crashed) {
            tracing::warn!(key = %label, pid = live.pid, %how, "child died on its own");
        } else {
            tracing::info!(key = %label, pid = live.pid, %how, "child stopped");
        }
        let post_mortem = self.cfg.keep_failed_dirs
            && matches!(
                cause,
                ExitCause::Crashed
                    | ExitCause::ReadyTimeout
                    | ExitCause::SetupFailed
                    | ExitCause::Oom
            );
        let cgroup = live.cgroup.take();
        drop(live);
        let end = Ended {
            key,
            child_id,
            exited,
            post_mortem,
            closers,
            acquirers,
        };
        match cgroup {
            // Whatever else ran in its cgroup goes first.
            Some(cg) => self.drain(cg, end),
            None => self.child_gone(end),
        }
    }

    /// A child and everything it started are gone: keep its directory for a
    /// post-mortem or remove it.
    pub(super) fn child_gone(&mut self, end: Ended) {
        let Ended {
            key,
            child_id,
            exited,
            post_mortem,
            closers,
            acquirers,
        } = end;
        if post_mortem && self.keep_for_post_mortem(key, child_id) {
            self.finish_teardown(key, closers, acquirers);
            return;
        }
        self.start_teardown(key, closers, acquirers, exited);
    }

    /// `--keep-failed-dirs`: moves a failed child's directory out of the
    /// instance directory (so the key can start afresh and shutdown does not
    /// delete it) and logs where it went.
    fn keep_for_post_mortem(&self, key: RouteKey, child_id: u64) -> bool {
        let label = key.label();
        let from = self.cfg.instance_dir.join(&label);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let Some(parent) = self.cfg.instance_dir.parent() else {
            return false;
        };
        let to = parent.join(format!("ringmux-failed-{label}-{stamp}-{child_id}"));
        match std::fs::rename(&from, &to) {
            Ok(()) => {
                tracing::warn!(key = %label, dir = %to.display(),
                    "kept the failed child's directory for post-mortem (--keep-failed-dirs)");
                true
            }
            Err(e) => {
                tracing::warn!(key = %label, error = %e,
                    "could not keep the failed child's directory; removing it");
                false
            }
        }
    }

    /// Moves the key's directory into the trash (or, failing that, starts
    /// deleting it in place), then answers its closers: a close costs one
    /// rename, whatever the tree's size.
    pub(super) fn start_teardown(
        &mut self,
        key: RouteKey,
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
        exited: Instant,
    ) {
        let label = key.label();
        match self.discard(Parent::Instance, &label, "k", Some(key)) {
            Discarded::Gone => {
                self.metrics
                    .teardown
                    .observe(exited.elapsed().as_secs_f64());
                self.finish_teardown(key, closers, acquirers);
            }
            // Deleted in place: the close waits for it (the key's `Teardown`
            // is its directory lock).
            Discarded::InPlace => {
                self.keys
                    .insert(key, KeyState::Teardown { closers, acquirers });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_query_values_raw_and_decoded() {
        let q = "vf_state_secret=s3cr3t%2Fkey&vf_state_url=http://x&n=1";
        let e = redact("bad key s3cr3t/key and s3cr3t%2Fkey; n=1", q);
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(e.contains("n=1"), "short values stay: {e}");
    }
}

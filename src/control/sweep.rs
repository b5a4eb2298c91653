//! What others left behind: directories
//! of dead ringmux instances (found by `flock`, never by age), untracked
//! child processes of ringmux (a fork server that died between forking a
//! child and reporting it; zombies nobody reports, or orphans reparented to
//! ringmux as PID 1).

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;

use ringmux_uring::Op;

use crate::child::sys;

use super::cleanup::Cleanup;
use super::keys::KeyState;
use super::{tag, ActiveCleanup, Control, K_ORPHAN};

/// Whether `name` is an instance directory name: `ringmux-<pid>-<hex nonce>`.
pub fn is_instance_dir_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("ringmux-") else {
        return false;
    };
    let mut parts = rest.splitn(2, '-');
    let pid_ok = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let nonce_ok = parts
        .next()
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_hexdigit()));
    pid_ok && nonce_ok
}

/// Pids of this process's children (every thread's), from
/// `/proc/self/task/*/children`.
fn own_children() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// Whether `pid` is a zombie (state `Z` in `/proc/<pid>/stat`).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

impl Control {
    /// Removes the directories of ringmux instances under the base directory
    /// whose owner is gone. Ownership is the instance directory's `flock`: a
    /// live instance holds it for its whole life, so a lock we can take
    /// belongs to a dead one. Age plays no part.
    pub(super) fn sweep_stale_instances(&mut self) {
        let own = self
            .cfg
            .instance_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(base) = self.cfg.instance_dir.parent().map(|p| p.to_path_buf()) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&base) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name == own || !is_instance_dir_name(&name) {
                continue;
            }
            let Ok(fd) = rustix::fs::openat(
                &self.cfg.base_fd,
                name.as_str(),
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) else {
                continue;
            };
            if rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
            {
                tracing::debug!(dir = %name, "instance directory is locked: its owner lives");
                continue;
            }
            // Into our trash: one rename, then deleted like any trash entry
            // (at full speed while nobody is served). Once inside our own
            // directory it is covered by our lock, so its own can go.
            let base_fd = self.cfg.base_fd.try_clone();
            if let (Some(trash), Ok(base_fd)) = (self.trash.as_mut(), base_fd) {
                match trash.take(base_fd.as_fd(), &name, "stale") {
                    Ok(Some(tname)) => {
                        tracing::info!(dir = %base.join(&name).display(),
                            "moved the directory of a dead ringmux instance into the trash");
                        self.metrics.stale_instances_removed.fetch_add(1, Relaxed);
                        self.trash_tree(&tname);
                        continue;
                    }
                    Ok(None) => continue,
                    Err(e) => tracing::warn!(dir = %name, error = %e,
                        "cannot move a dead instance's directory into the trash; deleting it in place"),
                }
            }
            match Cleanup::start(self.cfg.base_fd.as_fd(), &name) {
                Ok(work) => {
                    tracing::info!(dir = %base.join(&name).display(),
                        "removing the directory of a dead ringmux instance");
                    self.metrics.cleanups_in_flight.fetch_add(1, Relaxed);
                    self.cleanups.insert(ActiveCleanup {
                        key: None,
                        work,
                        stale: Some((name, fd)),
                        trash: false,
                    });
                }
                Err(e) => tracing::warn!(dir = %name, error = %e, "cannot clean a dead instance"),
            }
        }
    }

    /// Kills and reaps every child process of ringmux that it does not track.
    /// Forked children are children of ringmux from the moment the fork
    /// server forks them (`CLONE_PARENT`); one whose report never came (the
    /// fork server died in between) would otherwise serve nobody and, once
    /// dead, linger as a zombie. Called after a dead fork server's channel
    /// has been drained, so every reported child is tracked by then.
    pub(super) fn reap_orphans(&mut self) {
        let tracked = self.tracked_pids();
        for pid in own_children() {
            if tracked.contains(&pid) {
                continue;
            }
            // It is our child and not reaped, so the pid cannot be reused
            // before we wait for it: pidfd_open is race-free here.
            let Ok(pidfd) = sys::pidfd_open(pid) else {
                continue;
            };
            if !sys::pidfd_is_our_child(pidfd.as_fd()).unwrap_or(false) {
                continue;
            }
            tracing::warn!(
                pid,
                "killing an untracked child process (forked but never reported)"
            );
            self.reap_pidfd(pid, pidfd);
        }
    }

    /// Kills a child of ringmux that nothing tracks and reaps it on the ring.
    pub(super) fn reap_pidfd(&mut self, pid: u32, pidfd: OwnedFd) {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
        let raw = pidfd.as_raw_fd();
        let slot = self.orphans.insert((pid, pidfd));
        if self
            .ring
            .push(Op::WaitId { pidfd: raw }, tag(K_ORPHAN, slot as u64))
            .is_err()
        {
            // SIGKILLed: it exits at once, so this wait is short.
            let (_, fd) = self.orphans.remove(slot);
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(fd.as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
            self.metrics.orphans_reaped.fetch_add(1, Relaxed);
        }
    }

    /// Reaps every child of ringmux that is a zombie and that nothing here
    /// waits for: a pre-forked child that died before the fork server said
    /// so, one a wedged fork server never reported, or, when ringmux runs as
    /// PID 1 of a container, any orphan the kernel reparented to it. Only
    /// zombies: nothing alive is touched. Runs once a second.
    pub(super) fn reap_untracked_zombies(&mut self) {
        // Children the fork server already reported become tracked first.
        if self.fork.as_ref().is_some_and(|f| f.pid().is_some()) {
            self.drain_fork_channel_now();
        }
        let tracked = self.tracked_pids();
        for pid in own_children() {
            if tracked.contains(&pid) || !is_zombie(pid) {
                continue;
            }
            let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
                continue;
            };
            let reaped = rustix::process::waitid(
                rustix::process::WaitId::Pid(p),
                rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG,
            );
            if let Ok(Some(_)) = reaped {
                self.metrics.orphans_reaped.fetch_add(1, Relaxed);
                tracing::debug!(pid, "reaped an untracked zombie child");
            }
        }
    }

    fn tracked_pids(&self) -> HashSet<u32> {
        let mut tracked: HashSet<u32> = HashSet::new();
        for st in self.keys.values() {
            if let KeyState::Running { live, .. } = st {
                tracked.insert(live.pid);
            }
        }
        if let Some(pid) = self.fork.as_ref().and_then(|f| f.pid()) {
            tracked.insert(pid);
        }
        tracked.extend(self.orphans.iter().map(|(_, (pid, _))| *pid));
        tracked
    }

    pub(super) fn on_orphan_reaped(&mut self, slot: usize, result: i32) {
        if let Some((pid, _fd)) = self.orphans.try_remove(slot) {
            self.metrics.orphans_reaped.fetch_add(1, Relaxed);
            tracing::debug!(pid, result, "untracked child reaped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_dir_names() {
        assert!(is_instance_dir_name("ringmux-123-00ab"));
        assert!(!is_instance_dir_name("ringmux-123-"));
        assert!(!is_instance_dir_name("ringmux-x-00ab"));
        assert!(!is_instance_dir_name("ringmux-failed-0123456789abcdef-1-2"));
        assert!(!is_instance_dir_name("_forkserver"));
    }

    #[test]
    fn own_children_lists_a_child_we_started() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        assert!(own_children().contains(&c.id()));
        let _ = c.kill();
        let _ = c.wait();
    }
}

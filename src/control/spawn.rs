//! Making a child for a key: its private directory and listening socket,
//! then either an exec (done at once) or a request to the fork server (done
//! when it answers, see `forkserver`); and, once a process exists, watching
//! it (WAITID on its pidfd, the ready deadline, a forked child's status
//! socket) and publishing it to the workers.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use ringmux_uring::Op;

use crate::child::socket::{child_listener, ChildAddr};
use crate::error::ProxyError;
use crate::metrics::ExitCause;
use crate::msg::ToWorker;
use crate::route::{ChildInfo, RouteKey};

use super::keys::{KeyState, Live, Waiting};
use super::{tag, Control, K_IGNORE, K_READY, K_STATUS, K_WAIT};

impl Control {
    /// Starts a child for `key` (which must have no state) and answers
    /// `acquirers` when it exists. A leftover directory (a cleanup that failed
    /// earlier) is removed first when `may_clean` is set; the spawn then
    /// follows.
    pub(super) fn spawn_for(&mut self, key: RouteKey, acquirers: Waiting, may_clean: bool) {
        let label = key.label();
        let dir = self.cfg.instance_dir.join(&label);
        if may_clean && std::fs::symlink_metadata(&dir).is_ok() {
            tracing::warn!(key = %label, "leftover child directory: removing it before the spawn");
            self.start_teardown(key, Vec::new(), acquirers, std::time::Instant::now());
            return;
        }
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            self.spawn_failed(key, acquirers, format!("creating its directory: {e}"));
            return;
        }
        let id = self.next_child_id;
        self.next_child_id += 1;
        let (listener, addr) = match self.fresh_listener(id) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                self.spawn_failed(key, acquirers, format!("child socket: {e}"));
                return;
            }
        };
        let cgroup = match self.cfg.cgroups.as_ref() {
            None => None,
            Some(t) => match t.child(&format!("{label}-{id}")) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    self.spawn_failed(key, acquirers, format!("creating its cgroup: {e}"));
                    return;
                }
            },
        };
        if cgroup.is_some() {
            self.metrics.live_cgroups.fetch_add(1, Relaxed);
        }
        if self.fork.is_some() {
            match self.fork_request(
                key,
                id,
                &dir,
                listener,
                addr.clone(),
                &acquirers.query,
                cgroup,
            ) {
                Ok(()) => {
                    self.addrs.insert(addr);
                    self.keys.insert(
                        key,
                        KeyState::Starting {
                            child_id: id,
                            closers: Vec::new(),
                            acquirers,
                        },
                    );
                }
                Err((e, cgroup)) => {
                    let _ = std::fs::remove_dir(&dir);
                    self.drop_cgroup(cgroup);
                    self.metrics.spawn_failures.fetch_add(1, Relaxed);
                    tracing::error!(key = %label, error = %e, "could not start child");
                    self.fail(key, acquirers.workers, &e);
                }
            }
            return;
        }
        let Some(spawner) = self.spawner.as_mut() else {
            return;
        };
        let t0 = std::time::Instant::now();
        let procs = cgroup.as_ref().map(|c| c.procs());
        let spawned = match spawner.spawn(&dir, listener.as_fd(), &addr, procs) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                self.drop_cgroup(cgroup);
                self.spawn_failed(key, acquirers, e.to_string());
                return;
            }
        };
        // Our copy of the listening socket closes here: only the child holds
        // it now, so if the child dies, queued connections are reset at once.
        drop(listener);
        match self.watch(id, addr.clone(), spawned.pid, spawned.pidfd, None) {
            Ok(mut live) => {
                live.cgroup = cgroup;
                tracing::info!(key = %label, pid = live.pid, child = id, %addr,
                    spawn_ms = t0.elapsed().as_secs_f64() * 1000.0, "child spawned");
                self.addrs.insert(addr);
                self.started(key, live, Vec::new(), acquirers);
            }
            Err(msg) => {
                let _ = std::fs::remove_dir_all(&dir);
                self.drop_cgroup(cgroup);
                self.spawn_failed(key, acquirers, msg);
            }
        }
    }

    /// Removes the cgroup of a child that never ran (or was killed at once).
    pub(super) fn drop_cgroup(&mut self, cgroup: Option<crate::cgroup::ChildCgroup>) {
        if let Some(cg) = cgroup {
            let _ = cg.kill();
            if let Err(e) = cg.remove() {
                tracing::warn!(error = %e, "could not remove an unused cgroup");
            }
            self.metrics.live_cgroups.fetch_sub(1, Relaxed);
        }
    }

    fn spawn_failed(&mut self, key: RouteKey, acquirers: Waiting, msg: String) {
        self.metrics.spawn_failures.fetch_add(1, Relaxed);
        tracing::error!(key = %key.label(), error = %msg, "could not start child");
        self.fail(key, acquirers.workers, &ProxyError::SpawnFailed(msg));
    }

    /// Puts a new child process under watch: WAITID on its pidfd (its exit is
    /// reported with the process left a zombie; the completion handler reaps
    /// it after killing its group), its ready deadline, and a forked child's status socket. On error
    /// the process is killed and reaped here, so it never lingers.
    pub(super) fn watch(
        &mut self,
        id: u64,
        addr: ChildAddr,
        pid: u32,
        pidfd: OwnedFd,
        status: Option<OwnedFd>,
    ) -> Result<Live, String> {
        let kill_and_reap = |pidfd: &OwnedFd| {
            let _ = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL);
            // Reap it here (it dies at once) so it never lingers as a zombie.
            let _ = rustix::process::waitid(
                rustix::process::WaitId::PidFd(pidfd.as_fd()),
                rustix::process::WaitIdOptions::EXITED,
            );
        };
        let wait = match self.ring.push(
            Op::WaitId {
                pidfd: pidfd.as_raw_fd(),
            },
            tag(K_WAIT, id),
        ) {
            Ok(w) => w,
            Err(e) => {
                kill_and_reap(&pidfd);
                return Err(format!("watching the child: {e}"));
            }
        };
        let ready_timer = match self.ring.push(
            Op::Timeout {
                after: self.cfg.ready_timeout,
            },
            tag(K_READY, id),
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                // Without its timer a child that never answers would hold its
                // waiters forever: fail the spawn instead.
                kill_and_reap(&pidfd);
                let _ = self
                    .ring
                    .push(Op::Cancel { target: wait }, tag(K_IGNORE, 0));
                return Err(format!("arming the ready timeout: {e}"));
            }
        };
        let status = status.filter(|s| {
            self.ring
                .push(
                    Op::PollAdd {
                        fd: s.as_raw_fd(),
                        events: libc::POLLIN as u32,
                    },
                    tag(K_STATUS, id),
                )
                .is_ok()
        });
        Ok(Live {
            child: Arc::new(ChildInfo::new(id, addr)),
            pidfd,
            pid,
            ready_timer,
            killed: None,
            status,
            setup_failed: false,
            cgroup: None,
        })
    }

    /// A child exists: publish it to `acquirers`, and kill it at once if it
    /// was closed (or ringmux began shutting down) while it was starting.
    pub(super) fn started(
        &mut self,
        key: RouteKey,
        mut live: Live,
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
    ) {
        self.live += 1;
        self.metrics.spawns.fetch_add(1, Relaxed);
        self.metrics.live_children.store(self.live as u64, Relaxed);
        self.by_child.insert(live.child.id, key);
        let mut acquirers = acquirers;
        if self.shutdown.is_some() {
            self.fail(key, acquirers.workers.drain(..), &ProxyError::ShuttingDown);
            super::exit::kill(&mut live, ExitCause::Shutdown);
        } else if !closers.is_empty() {
            // Its waiters are answered again (with a fresh child) after the
            // close, as for a close that races a running child.
            tracing::info!(key = %key.label(), pid = live.pid, "closing child");
            super::exit::kill(&mut live, ExitCause::Closed);
        } else {
            for w in acquirers.workers.drain(..) {
                self.reply(
                    w,
                    ToWorker::Ready {
                        key,
                        child: Arc::clone(&live.child),
                    },
                );
            }
        }
        self.keys.insert(
            key,
            KeyState::Running {
                live,
                closers,
                acquirers,
            },
        );
    }

    /// A listening socket at an address no known child uses. A child's
    /// port is free in the kernel the moment it dies, but workers may still
    /// connect to it until its exit is processed here; never hand such a port
    /// to a new child, or one rollout's request could reach another rollout's
    /// child. (A Unix socket's name carries the instance and the child id,
    /// so it is never reused within the instance's life.)
    fn fresh_listener(&mut self, id: u64) -> std::io::Result<(OwnedFd, ChildAddr)> {
        let instance = self
            .cfg
            .instance_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = format!("{instance}/{id}");
        for _ in 0..16 {
            let (l, addr) = child_listener(self.cfg.child_socket, &name)?;
            if !self.addrs.contains(&addr) {
                return Ok((l, addr));
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no port distinct from live children's after 16 tries",
        ))
    }
}

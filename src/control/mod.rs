//! The control plane: one thread with its own io_uring that owns every child
//! process and directory. It spawns children on request, learns of their exit
//! through a pidfd (`IORING_OP_WAITID`, which also reaps), kills children that
//! miss the ready deadline, and removes directories with batched `UNLINKAT`s
//! ([`cleanup`]).
//!
//! The fork lock is per directory, and it is the key's state: a key whose old
//! child is being torn down (`Teardown`) queues new acquirers until its
//! directory is gone, while every other key spawns at once. Nothing here runs on
//! a data-plane thread; workers talk to it only through [`crate::msg`].

pub mod cleanup;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringmux_uring::op::ExitInfo;
use ringmux_uring::{Op, OpId, Returned, Ring, RingConfig};
use slab::Slab;

use crate::child::{socket::child_listener, Spawner};
use crate::error::ProxyError;
use crate::metrics::{ExitCause, Metrics};
use crate::msg::{Inbox, Mailbox, ToControl, ToWorker};
use crate::route::{ChildInfo, Failure, RouteKey};
use cleanup::{Cleanup, DIR_BIT};

const KIND_SHIFT: u32 = 56;
const K_INBOX: u64 = 1;
const K_WAIT: u64 = 2;
const K_READY: u64 = 3;
const K_UNLINK: u64 = 4;
const K_IGNORE: u64 = 5;
const K_TICK: u64 = 6;
/// Heartbeat period of the control loop (its lateness is a metric).
const TICK: Duration = Duration::from_millis(10);
/// Nice value of the io-wq threads that run cleanup `UNLINKAT`s.
const CLEANUP_NICE: i32 = 19;

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
const PAYLOAD: u64 = (1 << 40) - 1;

fn tag(kind: u64, payload: u64) -> u64 {
    (kind << KIND_SHIFT) | (payload & PAYLOAD)
}

/// Settings the control plane needs.
pub struct ControlConfig {
    /// This instance's private directory (children's directories live in it).
    pub instance_dir: PathBuf,
    /// An open fd of it (unlinks are relative to it).
    pub instance_fd: OwnedFd,
    /// Deadline for a new child's first response.
    pub ready_timeout: Duration,
    /// Most live children.
    pub max_children: usize,
    /// Keep the directories of crashed / never-ready children.
    pub keep_failed_dirs: bool,
    /// Most io-wq threads running cleanup unlinks.
    pub cleanup_workers: u32,
    /// CPUs those threads may run on (`None`: any).
    pub cleanup_cpus: Option<Vec<usize>>,
    /// Open fd of the base directory (parent of instance directories), for
    /// removing the directories of dead instances.
    pub base_fd: OwnedFd,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

struct Live {
    child: Arc<ChildInfo>,
    pidfd: OwnedFd,
    pid: u32,
    ready_timer: Option<OpId>,
    /// Why a kill was sent (close, ready timeout, shutdown); `None`: alive
    /// as far as we know.
    killed: Option<ExitCause>,
}

enum KeyState {
    /// A child is running (or dying: `killed`).
    Running {
        live: Live,
        closers: Vec<(usize, u64)>,
        acquirers: Vec<usize>,
    },
    /// Its child is gone and its directory is being removed; this is the
    /// per-directory fork lock.
    Teardown {
        closers: Vec<(usize, u64)>,
        acquirers: Vec<usize>,
    },
}

struct ActiveCleanup {
    /// The key whose directory this is; `None` for a dead instance's directory.
    key: Option<RouteKey>,
    work: Cleanup,
    /// For a dead instance: its directory, locked by us while we delete it.
    stale: Option<(String, OwnedFd)>,
}

/// The control plane's state.
pub struct Control {
    ring: Ring,
    inbox: Inbox<ToControl>,
    workers: Vec<Mailbox<ToWorker>>,
    spawner: Box<dyn Spawner>,
    cfg: ControlConfig,
    keys: HashMap<RouteKey, KeyState>,
    by_child: HashMap<u64, RouteKey>,
    cleanups: Slab<ActiveCleanup>,
    next_child_id: u64,
    live: usize,
    shutdown: Option<mpsc::Sender<()>>,
    metrics: Arc<Metrics>,
    /// Ports of children whose exit has not been processed yet.
    ports: std::collections::HashSet<u16>,
    /// This thread's id (names its io-wq workers).
    tid: i32,
    /// io-wq workers already reniced.
    reniced: Vec<i32>,
}

impl Control {
    /// Sets up the control ring.
    pub fn new(
        inbox: Inbox<ToControl>,
        workers: Vec<Mailbox<ToWorker>>,
        spawner: Box<dyn Spawner>,
        cfg: ControlConfig,
    ) -> std::io::Result<Control> {
        let ring = Ring::new(&RingConfig {
            sq_entries: 512,
            cq_entries: 4096,
            ..RingConfig::default()
        })?;
        // UNLINKAT runs in io-wq workers: cap them so cleanup cannot take both
        // cores from the data plane.
        if let Some(cpus) = &cfg.cleanup_cpus {
            match ring.set_iowq_affinity(cpus) {
                Ok(()) => tracing::info!(?cpus, "cleanup threads pinned"),
                Err(e) => tracing::warn!(error = %e, ?cpus, "cannot pin cleanup threads"),
            }
        }
        let iowq = cfg.cleanup_workers;
        if let Err(e) = ring.set_iowq_max_workers(iowq, iowq) {
            tracing::warn!(error = %e, "could not cap io-wq workers");
        }
        let metrics = Arc::clone(&cfg.metrics);
        Ok(Control {
            metrics,
            tid: rustix::thread::gettid().as_raw_nonzero().get(),
            reniced: Vec::new(),
            ports: std::collections::HashSet::new(),
            ring,
            inbox,
            workers,
            spawner,
            cfg,
            keys: HashMap::new(),
            by_child: HashMap::new(),
            cleanups: Slab::new(),
            next_child_id: 1,
            live: 0,
            shutdown: None,
        })
    }

    /// Runs until a `Shutdown` message has been fully carried out.
    pub fn run(mut self) {
        let mut comps = Vec::with_capacity(256);
        if let Err(e) = self.arm_inbox() {
            tracing::error!(error = %e, "control: cannot arm its inbox; exiting");
            return;
        }
        self.sweep_stale_instances();
        let mut last_tick = Instant::now();
        if let Err(e) = self.arm_tick() {
            tracing::warn!(error = %e, "control: no heartbeat timer");
        }
        let mut busy = false;
        loop {
            // Wait for a completion unless a cleanup has work ready without one.
            if let Err(e) = self.ring.submit_and_wait(usize::from(!busy)) {
                tracing::error!(error = %e, "control ring failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.ring.reap(&mut comps);
            for c in comps.drain(..) {
                let kind = c.tag >> KIND_SHIFT;
                let payload = c.tag & PAYLOAD;
                match kind {
                    K_INBOX => {
                        self.drain_inbox();
                        if let Err(e) = self.arm_inbox() {
                            tracing::error!(error = %e, "control: cannot re-arm inbox");
                        }
                    }
                    K_WAIT => {
                        let exit = match c.data {
                            Returned::Exit(e) if c.result >= 0 => Some(e),
                            _ => None,
                        };
                        self.on_exit(payload, exit, c.result);
                    }
                    K_READY if c.result == -libc::ETIME => self.on_ready_deadline(payload),
                    K_TICK => {
                        let now = Instant::now();
                        let late = now.saturating_duration_since(last_tick + TICK);
                        let us = late.as_micros().min(u128::from(u64::MAX)) as u64;
                        self.metrics.control_lag_max_us.fetch_max(us, Relaxed);
                        last_tick = now;
                        if !self.cleanups.is_empty() {
                            self.renice_io_workers();
                        }
                        if let Err(e) = self.arm_tick() {
                            tracing::warn!(error = %e, "control: cannot re-arm heartbeat");
                        }
                    }
                    K_UNLINK => {
                        let idx = (payload & !DIR_BIT) as usize;
                        if let Some(a) = self.cleanups.get_mut(idx) {
                            a.work.on_complete(c.result, c.tag & DIR_BIT != 0);
                        }
                    }
                    _ => {}
                }
            }
            busy = self.pump_cleanups();
            if let Some(done) = &self.shutdown {
                if self.keys.is_empty() && self.cleanups.is_empty() {
                    if let Err(e) = std::fs::remove_dir(&self.cfg.instance_dir) {
                        tracing::warn!(error = %e, dir = %self.cfg.instance_dir.display(),
                            "could not remove instance directory");
                    }
                    let _ = done.send(());
                    return;
                }
            }
        }
    }

    fn arm_tick(&mut self) -> std::io::Result<()> {
        self.ring
            .push(Op::Timeout { after: TICK }, tag(K_TICK, 0))?;
        Ok(())
    }

    /// Puts the io-wq workers of this thread's rings (the threads that run
    /// `UNLINKAT`, named `iou-wrk-<control tid>`) at the lowest CPU priority, so
    /// a large cleanup yields to the data plane. io-wq workers are created on
    /// demand and exit when idle, so this is re-checked while cleanups run.
    fn renice_io_workers(&mut self) {
        let want = format!("iou-wrk-{}", self.tid);
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if self.reniced.contains(&tid) {
                continue;
            }
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != want {
                continue;
            }
            if let Some(pid) = rustix::process::Pid::from_raw(tid) {
                match rustix::process::setpriority_process(Some(pid), CLEANUP_NICE) {
                    Ok(()) => {
                        tracing::debug!(tid, nice = CLEANUP_NICE, "io-wq worker reniced");
                        self.reniced.push(tid);
                    }
                    Err(e) => tracing::warn!(tid, error = %e, "cannot renice io-wq worker"),
                }
            }
        }
        if self.reniced.len() > 64 {
            self.reniced.drain(..32);
        }
    }

    /// Removes the directories of ringmux instances under the base directory
    /// whose owner is gone. Ownership is the instance directory's `flock`: a
    /// live instance holds it for its whole life, so a lock we can take
    /// belongs to a dead one. Age plays no part.
    fn sweep_stale_instances(&mut self) {
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
            match Cleanup::start(self.cfg.base_fd.as_fd(), &name) {
                Ok(work) => {
                    tracing::info!(dir = %base.join(&name).display(),
                        "removing the directory of a dead ringmux instance");
                    self.metrics.cleanups_in_flight.fetch_add(1, Relaxed);
                    self.cleanups.insert(ActiveCleanup {
                        key: None,
                        work,
                        stale: Some((name, fd)),
                    });
                }
                Err(e) => tracing::warn!(dir = %name, error = %e, "cannot clean a dead instance"),
            }
        }
    }

    fn arm_inbox(&mut self) -> std::io::Result<()> {
        self.ring.push(
            Op::Read {
                fd: self.inbox.wake_fd(),
                buf: vec![0u8; 8],
            },
            tag(K_INBOX, 0),
        )?;
        Ok(())
    }

    fn drain_inbox(&mut self) {
        let msgs: Vec<ToControl> = self.inbox.drain().collect();
        for m in msgs {
            match m {
                ToControl::Acquire { key, worker } => self.acquire(key, worker),
                ToControl::Close { key, worker, token } => self.close(key, worker, token),
                ToControl::Shutdown { done } => self.begin_shutdown(done),
            }
        }
    }

    fn reply(&self, worker: usize, msg: ToWorker) {
        if let Some(mb) = self.workers.get(worker) {
            let _ = mb.send(msg);
        }
    }

    /// Tells `workers` that no child for `key` can be had.
    fn fail(&self, key: RouteKey, workers: impl IntoIterator<Item = usize>, error: &ProxyError) {
        for w in workers {
            self.reply(
                w,
                ToWorker::Failed {
                    key,
                    error: error.clone(),
                },
            );
        }
    }

    fn acquire(&mut self, key: RouteKey, worker: usize) {
        if self.shutdown.is_some() {
            self.fail(key, [worker], &ProxyError::ShuttingDown);
            return;
        }
        match self.keys.get_mut(&key) {
            Some(KeyState::Running {
                live, acquirers, ..
            }) => {
                if live.killed.is_some() {
                    if !acquirers.contains(&worker) {
                        acquirers.push(worker);
                    }
                } else {
                    let child = Arc::clone(&live.child);
                    self.reply(worker, ToWorker::Ready { key, child });
                }
            }
            Some(KeyState::Teardown { acquirers, .. }) => {
                if !acquirers.contains(&worker) {
                    acquirers.push(worker);
                }
            }
            None => {
                if self.live >= self.cfg.max_children {
                    self.metrics.at_capacity.fetch_add(1, Relaxed);
                    tracing::warn!(
                        live = self.live,
                        max = self.cfg.max_children,
                        "at capacity: refusing a new key"
                    );
                    self.fail(key, [worker], &ProxyError::AtCapacity);
                    return;
                }
                self.spawn_for(key, vec![worker], true);
            }
        }
    }

    /// Spawns a child for `key` (which must have no state) and answers
    /// `acquirers`. A leftover directory (a cleanup that failed earlier) is
    /// removed first when `may_clean` is set; the spawn then follows.
    fn spawn_for(&mut self, key: RouteKey, acquirers: Vec<usize>, may_clean: bool) {
        let label = key.label();
        let dir = self.cfg.instance_dir.join(&label);
        if may_clean && std::fs::symlink_metadata(&dir).is_ok() {
            tracing::warn!(key = %label, "leftover child directory: removing it before the spawn");
            self.start_teardown(key, Vec::new(), acquirers);
            return;
        }
        let result = (|| -> Result<Live, String> {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("creating its directory: {e}"))?;
            let (listener, addr) = self.fresh_listener().map_err(|e| {
                let _ = std::fs::remove_dir(&dir);
                format!("child socket: {e}")
            })?;
            let t0 = std::time::Instant::now();
            let spawned = match self.spawner.spawn(&dir, &listener, addr) {
                Ok(s) => s,
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e.to_string());
                }
            };
            // Our copy of the listening socket closes here: only the child holds
            // it now, so if the child dies, queued connections are reset at once.
            drop(listener);
            let id = self.next_child_id;
            self.next_child_id += 1;
            let child = Arc::new(ChildInfo::new(id, addr));
            let pidfd_raw = spawned.pidfd.as_raw_fd();
            if let Err(e) = self
                .ring
                .push(Op::WaitId { pidfd: pidfd_raw }, tag(K_WAIT, id))
            {
                let _ = rustix::process::pidfd_send_signal(
                    &spawned.pidfd,
                    rustix::process::Signal::KILL,
                );
                // Reap it here (it dies at once) so it never lingers as a zombie.
                let _ = rustix::process::waitid(
                    rustix::process::WaitId::PidFd(spawned.pidfd.as_fd()),
                    rustix::process::WaitIdOptions::EXITED,
                );
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("watching the child: {e}"));
            }
            let ready_timer = self
                .ring
                .push(
                    Op::Timeout {
                        after: self.cfg.ready_timeout,
                    },
                    tag(K_READY, id),
                )
                .ok();
            tracing::info!(key = %label, pid = spawned.pid, child = id, %addr,
                spawn_ms = t0.elapsed().as_secs_f64() * 1000.0, "child spawned");
            Ok(Live {
                child,
                pidfd: spawned.pidfd,
                pid: spawned.pid,
                ready_timer,
                killed: None,
            })
        })();
        match result {
            Ok(live) => {
                self.live += 1;
                self.ports.insert(live.child.addr.port());
                self.metrics.spawns.fetch_add(1, Relaxed);
                self.metrics.live_children.store(self.live as u64, Relaxed);
                self.by_child.insert(live.child.id, key);
                for w in &acquirers {
                    self.reply(
                        *w,
                        ToWorker::Ready {
                            key,
                            child: Arc::clone(&live.child),
                        },
                    );
                }
                self.keys.insert(
                    key,
                    KeyState::Running {
                        live,
                        closers: Vec::new(),
                        acquirers: Vec::new(),
                    },
                );
            }
            Err(msg) => {
                self.metrics.spawn_failures.fetch_add(1, Relaxed);
                tracing::error!(key = %label, error = %msg, "could not start child");
                self.fail(key, acquirers, &ProxyError::SpawnFailed(msg));
            }
        }
    }

    /// A listening socket on a port no known child uses. A child's port is
    /// free in the kernel the moment it dies, but workers may still connect
    /// to it until its exit is processed here; never hand such a port to a new
    /// child, or one rollout's request could reach another rollout's child.
    fn fresh_listener(&mut self) -> std::io::Result<(std::net::TcpListener, std::net::SocketAddr)> {
        for _ in 0..16 {
            let (l, addr) = child_listener()?;
            if !self.ports.contains(&addr.port()) {
                return Ok((l, addr));
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "no port distinct from live children's after 16 tries",
        ))
    }

    fn close(&mut self, key: RouteKey, worker: usize, token: u64) {
        match self.keys.get_mut(&key) {
            None => self.reply(worker, ToWorker::Closed { token }),
            Some(KeyState::Running { live, closers, .. }) => {
                closers.push((worker, token));
                if live.killed.is_none() {
                    tracing::info!(key = %key.label(), pid = live.pid, "closing child");
                    kill(live, ExitCause::Closed);
                }
            }
            Some(KeyState::Teardown { closers, .. }) => closers.push((worker, token)),
        }
    }

    fn on_ready_deadline(&mut self, child_id: u64) {
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

    fn on_exit(&mut self, child_id: u64, exit: Option<ExitInfo>, result: i32) {
        let Some(key) = self.by_child.remove(&child_id) else {
            return;
        };
        let Some(KeyState::Running {
            live,
            closers,
            acquirers,
        }) = self.keys.remove(&key)
        else {
            return;
        };
        self.live = self.live.saturating_sub(1);
        live.child.mark_dead();
        self.ports.remove(&live.child.addr.port());
        if live.killed.is_none() {
            // It died on its own: take down what it left in its group.
            if let Some(pgid) = rustix::process::Pid::from_raw(live.pid as i32) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
        }
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
        let cause = live.killed.unwrap_or(ExitCause::Crashed);
        self.metrics.child_exited(cause);
        self.metrics.live_children.store(self.live as u64, Relaxed);
        if live.killed.is_some() {
            tracing::info!(key = %label, pid = live.pid, %how, "child stopped");
        } else {
            tracing::warn!(key = %label, pid = live.pid, %how, "child died on its own");
        }
        drop(live.pidfd);
        if self.cfg.keep_failed_dirs
            && matches!(cause, ExitCause::Crashed | ExitCause::ReadyTimeout)
            && self.keep_for_post_mortem(key, child_id)
        {
            self.finish_teardown(key, closers, acquirers);
            return;
        }
        self.start_teardown(key, closers, acquirers);
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

    fn start_teardown(&mut self, key: RouteKey, closers: Vec<(usize, u64)>, acquirers: Vec<usize>) {
        let label = key.label();
        match Cleanup::start(self.cfg.instance_fd.as_fd(), &label) {
            Ok(work) => {
                self.metrics.cleanups_in_flight.fetch_add(1, Relaxed);
                self.cleanups.insert(ActiveCleanup {
                    key: Some(key),
                    work,
                    stale: None,
                });
                self.keys
                    .insert(key, KeyState::Teardown { closers, acquirers });
            }
            Err(e) => {
                tracing::error!(key = %label, error = %e, "cannot start directory cleanup");
                self.finish_teardown(key, closers, acquirers);
            }
        }
    }

    /// Advances every cleanup; returns true if one has work ready that needs
    /// no completion first.
    fn pump_cleanups(&mut self) -> bool {
        let mut finished = Vec::new();
        let mut busy = false;
        for (idx, a) in self.cleanups.iter_mut() {
            busy |= a.work.pump(&mut self.ring, tag(K_UNLINK, idx as u64));
            if a.work.is_done() {
                finished.push(idx);
            }
        }
        for idx in finished {
            let a = self.cleanups.remove(idx);
            let s = a.work.stats;
            let took = a.work.elapsed();
            self.metrics.cleanups_in_flight.fetch_sub(1, Relaxed);
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
            let Some(key) = a.key else {
                continue;
            };
            let label = key.label();
            if s.errors > 0 {
                tracing::warn!(key = %label, files = s.files, dirs = s.dirs, errors = s.errors,
                    "directory cleanup finished with errors");
            } else {
                tracing::info!(key = %label, files = s.files, dirs = s.dirs, ms, "directory removed");
            }
            if let Some(KeyState::Teardown {
                closers, acquirers, ..
            }) = self.keys.remove(&key)
            {
                self.finish_teardown(key, closers, acquirers);
            }
        }
        busy
    }

    fn finish_teardown(
        &mut self,
        key: RouteKey,
        closers: Vec<(usize, u64)>,
        acquirers: Vec<usize>,
    ) {
        for (w, token) in closers {
            self.reply(w, ToWorker::Closed { token });
        }
        if acquirers.is_empty() {
            return;
        }
        if self.shutdown.is_some() {
            self.fail(key, acquirers, &ProxyError::ShuttingDown);
        } else if self.live >= self.cfg.max_children {
            self.metrics.at_capacity.fetch_add(1, Relaxed);
            self.fail(key, acquirers, &ProxyError::AtCapacity);
        } else {
            self.spawn_for(key, acquirers, false);
        }
    }

    fn begin_shutdown(&mut self, done: mpsc::Sender<()>) {
        tracing::info!(children = self.live, "shutting down: killing every child");
        self.shutdown = Some(done);
        for state in self.keys.values_mut() {
            if let KeyState::Running { live, .. } = state {
                if live.killed.is_none() {
                    kill(live, ExitCause::Shutdown);
                }
            }
        }
    }
}

/// Kills a child and its process group.
fn kill(live: &mut Live, why: ExitCause) {
    live.killed = Some(why);
    live.child.mark_dead();
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

use std::os::unix::fs::DirBuilderExt;

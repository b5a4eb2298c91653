//! The control plane: one thread with its own io_uring that owns every child
//! process and directory. It spawns children on request (an exec per key, or a
//! fork of the warm fork server), learns of their exit through a pidfd
//! (`IORING_OP_WAITID`, which also reaps), kills children that miss the ready
//! deadline, and removes directories with batched `UNLINKAT`s ([`cleanup`]).
//! Nothing here runs on a data-plane thread; workers talk to it only through
//! [`crate::msg`], and nothing here blocks on a child or the fork server.
//!
//! Rooms: this file is the loop and its dispatch; [`keys`] the per-key state
//! machine (which is also the per-directory fork lock); `spawn` making and
//! publishing children; `exit` their end, post-mortem and teardown;
//! `forkserver` the zygote's life and protocol; `sweep` what a dead instance
//! or a dead fork server left behind, and the cleanup threads' priority;
//! `drain` a finished child's cgroup until nothing runs in it; `trash` where
//! closed rollouts' directories go at once; `reclaim` their deletion, paced
//! by `pace` so that it takes only the data plane's spare capacity.

pub mod cleanup;
mod drain;
mod exit;
mod forkserver;
mod idle;
mod iowq;
mod keys;
pub mod pace;
mod reclaim;
mod spawn;
mod sweep;
#[cfg(test)]
mod tests;
mod trash;

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ringmux_uring::{Op, Returned, Ring, RingConfig};
use slab::Slab;

use crate::child::Spawner;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::msg::{Inbox, Mailbox, ToControl, ToWorker};
use crate::route::RouteKey;
use crate::tag::{tag, untag};
use cleanup::DIR_BIT;
use forkserver::ForkServer;
pub use forkserver::ForkServerConfig;
use keys::KeyState;
pub use sweep::is_instance_dir_name;

const K_INBOX: u64 = 1;
const K_WAIT: u64 = 2;
const K_READY: u64 = 3;
const K_UNLINK: u64 = 4;
const K_IGNORE: u64 = 5;
const K_TICK: u64 = 6;
/// The fork server exited (payload: its generation).
const K_FS_WAIT: u64 = 7;
/// The fork server's channel is readable (payload: its generation).
const K_FS_CHAN: u64 = 8;
/// A forked child's status socket is readable (payload: child id).
const K_STATUS: u64 = 9;
/// An untracked child of ringmux was reaped (payload: orphan slot).
const K_ORPHAN: u64 = 10;
/// A draining cgroup's `cgroup.events` changed (payload: child id).
const K_CG_EVENTS: u64 = 11;
/// The trash's pacing step passed.
const K_PACE: u64 = 12;
/// Heartbeat period of the control loop (its lateness is a metric; deadlines
/// of the fork server are checked on it).
const TICK: Duration = Duration::from_millis(10);
/// Heartbeats between two sweeps for untracked zombie children (1 s).
const ZOMBIE_SWEEP_TICKS: u64 = 100;

/// How children are made.
pub enum Maker {
    /// Synchronously, per key (exec).
    Exec(Box<dyn Spawner>),
    /// By the warm fork server, asynchronously over its channel.
    Fork(ForkServerConfig),
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
    /// Close a keyed child idle this long (`None`: never).
    pub child_idle_timeout: Option<Duration>,
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
    /// This instance's cgroup (`None`: no cgroups, process-group kills).
    pub cgroups: Option<crate::cgroup::Tree>,
    /// How the trash is deleted.
    pub pace: pace::PaceConfig,
    /// What children listen on.
    pub child_socket: crate::child::socket::ChildSocket,
}

struct ActiveCleanup {
    /// The key whose directory this is; `None` for a dead instance's (or the
    /// fork server's) directory.
    key: Option<RouteKey>,
    work: cleanup::Cleanup,
    /// For a dead instance: its directory, locked by us while we delete it.
    stale: Option<(String, OwnedFd)>,
    /// A trash entry (its removals count in the trash's metrics).
    trash: bool,
}

/// The control plane's state.
pub struct Control {
    ring: Ring,
    inbox: Inbox<ToControl>,
    workers: Vec<Mailbox<ToWorker>>,
    /// Exec spawner (`None` in fork mode).
    spawner: Option<Box<dyn Spawner>>,
    /// The fork server (`None` in exec mode).
    fork: Option<ForkServer>,
    cfg: ControlConfig,
    keys: HashMap<RouteKey, KeyState>,
    by_child: HashMap<u64, RouteKey>,
    cleanups: Slab<ActiveCleanup>,
    /// Untracked children of ringmux being reaped: (pid, pidfd).
    orphans: Slab<(u32, OwnedFd)>,
    /// Keys in `Draining` (checked on the heartbeat).
    draining: HashSet<RouteKey>,
    /// Killed cgroups (dead instances', dead fork servers'), removed once
    /// empty.
    stale_cgroups: Vec<(PathBuf, OwnedFd)>,
    next_child_id: u64,
    live: usize,
    shutdown: Option<mpsc::Sender<()>>,
    /// During a drain: where to say that the last key is gone.
    drain: Option<mpsc::Sender<crate::lifecycle::Event>>,
    metrics: Arc<Metrics>,
    /// Addresses of children whose exit has not been processed yet.
    addrs: HashSet<crate::child::socket::ChildAddr>,
    /// This thread's id (names its io-wq workers).
    tid: i32,
    /// io-wq workers already reniced.
    reniced: Vec<i32>,
    /// The trash (`None`: it could not be made; directories are deleted in
    /// place).
    trash: Option<trash::Trash>,
    pacer: pace::Pacer,
    pace_cfg: pace::PaceConfig,
    /// A pacing-step timer is queued.
    pace_armed: bool,
    /// `trash_removed` at the latest whole second (for the drain rate).
    removed_at_last_second: u64,
    /// Every CPU this process may run on (the cleanup threads' place while
    /// nobody is served).
    all_cpus: Vec<usize>,
}

impl Control {
    /// Sets up the control ring.
    pub fn new(
        inbox: Inbox<ToControl>,
        workers: Vec<Mailbox<ToWorker>>,
        maker: Maker,
        cfg: ControlConfig,
    ) -> std::io::Result<Control> {
        // RINGMUX_EXIT_WAIT=poll takes the path of kernels before 6.7 (no
        // IORING_OP_WAITID) on a newer one, so the test suite can run it.
        let poll_for_exits = std::env::var("RINGMUX_EXIT_WAIT").is_ok_and(|v| v == "poll");
        let ring = Ring::new(&RingConfig {
            sq_entries: 512,
            cq_entries: 4096,
            poll_for_exits,
            ..RingConfig::default()
        })?;
        if poll_for_exits {
            tracing::info!(
                "control ring: child exits are polled on their pidfds (RINGMUX_EXIT_WAIT=poll)"
            );
        } else if !ring.native_waitid() {
            tracing::warn!("control ring: the kernel has no IORING_OP_WAITID (Linux < 6.7); child exits are polled on their pidfds instead, which works the same");
        }
        if !ring.defer_taskrun() {
            // Nothing depends on it for correctness (a child is reaped only
            // after its group was killed: the ring's waits use WNOWAIT), but
            // completions then run as task work at any syscall: say so.
            tracing::warn!("control ring: the kernel refused SINGLE_ISSUER/DEFER_TASKRUN; using a plain io_uring");
        }
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
        let (spawner, fork) = match maker {
            Maker::Exec(s) => (Some(s), None),
            Maker::Fork(fc) => (None, Some(ForkServer::new(fc, &cfg.instance_dir))),
        };
        let metrics = Arc::clone(&cfg.metrics);
        let trash = match trash::Trash::open(std::os::fd::AsFd::as_fd(&cfg.instance_fd)) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e,
                    "cannot make the trash directory; closed rollouts' directories are deleted in place (the close waits for it)");
                None
            }
        };
        let pace_cfg = cfg.pace;
        let pacer = pace::Pacer::new(pace_cfg);
        metrics.trash_pace_rate.store(pacer.rate(), Relaxed);
        let mode = pace::Mode::ALL.iter().position(|m| *m == pacer.mode());
        metrics.trash_mode.store(mode.unwrap_or(0) as u64, Relaxed);
        Ok(Control {
            trash,
            pacer,
            pace_cfg,
            pace_armed: false,
            removed_at_last_second: 0,
            all_cpus: crate::config::allowed_cpus(),
            metrics,
            tid: rustix::thread::gettid().as_raw_nonzero().get(),
            reniced: Vec::new(),
            addrs: HashSet::new(),
            ring,
            inbox,
            workers,
            spawner,
            fork,
            cfg,
            keys: HashMap::new(),
            by_child: HashMap::new(),
            cleanups: Slab::new(),
            orphans: Slab::new(),
            stale_cgroups: Vec::new(),
            draining: HashSet::new(),
            next_child_id: 1,
            live: 0,
            shutdown: None,
            drain: None,
        })
    }

    /// Runs until a `Shutdown` message has been fully carried out.
    pub fn run(mut self) {
        let mut comps = Vec::with_capacity(256);
        if let Err(e) = self.arm_inbox() {
            tracing::error!(error = %e, "control: cannot arm its inbox; exiting");
            return;
        }
        self.place_cleanup_threads(self.pacer.mode());
        self.trash_leftovers();
        self.sweep_stale_instances();
        self.sweep_stale_cgroups();
        if self.fork.is_some() {
            self.fork_start();
        }
        let mut last_tick = Instant::now();
        // Reaping stragglers, cgroup drains and shutdown progress depend on
        // the heartbeat: a failed re-arm is retried after every batch.
        let mut tick_armed = match self.arm_tick() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "control: cannot queue the heartbeat timer; retrying");
                false
            }
        };
        let mut busy = false;
        let mut ticks: u64 = 0;
        let mut tick_failures: u64 = 0;
        loop {
            // Wait for a completion unless a cleanup has work ready without one.
            if let Err(e) = self.ring.submit_and_wait(usize::from(!busy)) {
                tracing::error!(error = %e, "control ring failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.ring.reap(&mut comps);
            for c in comps.drain(..) {
                let (kind, payload) = untag(c.tag);
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
                        // It reaps the child (see there).
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
                            self.tend_io_workers();
                        }
                        if self.fork.is_some() {
                            self.fork_tick(now);
                        }
                        ticks += 1;
                        if ticks.is_multiple_of(ZOMBIE_SWEEP_TICKS) {
                            self.reap_untracked_zombies();
                            self.trash_second();
                            self.retire_idle_children();
                        }
                        self.check_draining_cgroups();
                        let requests = self.load().requests;
                        self.pacer.observe(now, requests);
                        tick_armed = false;
                    }
                    K_UNLINK => {
                        let idx = (payload & !DIR_BIT) as usize;
                        self.on_unlink(idx, c.result, c.tag & DIR_BIT != 0);
                    }
                    K_PACE => self.pace_armed = false,
                    K_FS_WAIT => {
                        let exit = match c.data {
                            Returned::Exit(e) if c.result >= 0 => Some(e),
                            _ => None,
                        };
                        self.on_fork_server_exit(payload, exit, c.result);
                        if let Some(e) = exit {
                            crate::child::sys::reap(e.pid);
                        }
                    }
                    K_FS_CHAN => self.on_fork_channel(payload),
                    K_STATUS => self.on_child_status(payload),
                    K_ORPHAN => {
                        if let Returned::Exit(e) = c.data {
                            crate::child::sys::reap(e.pid);
                        }
                        self.on_orphan_reaped(payload as usize, c.result);
                    }
                    K_CG_EVENTS => self.on_cgroup_event(payload),
                    _ => {}
                }
            }
            // After every batch, not on the heartbeat: the drain ends as
            // soon as the last key's teardown (or the drain request) is in.
            self.check_drained();
            if !tick_armed {
                match self.arm_tick() {
                    Ok(()) => {
                        tick_armed = true;
                        tick_failures = 0;
                    }
                    Err(e) => {
                        tick_failures += 1;
                        if tick_failures.is_power_of_two() {
                            tracing::error!(error = %e, failures = tick_failures,
                                "control: cannot re-arm the heartbeat timer; retrying");
                        }
                    }
                }
            }
            busy = self.pump_cleanups();
            if self.shutdown.is_some() {
                let fork_gone = self.fork.as_ref().is_none_or(ForkServer::is_stopped);
                if self.keys.is_empty()
                    && self.cleanups.is_empty()
                    && self.orphans.is_empty()
                    && self.stale_cgroups.is_empty()
                    && fork_gone
                {
                    if let Some(t) = &self.cfg.cgroups {
                        if let Err(e) = t.remove() {
                            tracing::warn!(error = %e, cgroup = %t.path.display(),
                                "could not remove the instance cgroup");
                        }
                    }
                    self.remove_trash();
                    if let Err(e) = std::fs::remove_dir(&self.cfg.instance_dir) {
                        tracing::warn!(error = %e, dir = %self.cfg.instance_dir.display(),
                            "could not remove instance directory");
                    }
                    if let Some(done) = self.shutdown.take() {
                        let _ = done.send(());
                    }
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
                ToControl::Acquire { key, worker, query } => self.acquire(key, worker, query),
                ToControl::Close { key, worker, token } => self.close(key, worker, token),
                ToControl::Shutdown { done } => self.begin_shutdown(done),
                ToControl::Drain { notify } => self.drain = Some(notify),
            }
        }
    }

    /// During a drain: once no key has a child, a start or a directory
    /// left, says so (once).
    fn check_drained(&mut self) {
        if self.keys.is_empty() {
            if let Some(tx) = self.drain.take() {
                tracing::info!("drained: the last rollout is closed");
                let _ = tx.send(crate::lifecycle::Event::Drained);
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
}

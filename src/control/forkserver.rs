//! The warm fork server ("zygote") as the control plane sees it: its process
//! (started once, watched by WAITID on its pidfd, restarted with backoff when
//! it dies), its channel (read on the control ring whenever it is readable,
//! never waited on), the spawn requests in flight with their deadlines, and
//! the hand-over of each forked child to the ordinary child machinery.
//!
//! Nothing here blocks the control ring: sends are non-blocking (a full
//! channel means a wedged fork server, which is killed), answers are read
//! when the ring says the channel is readable, and every wait has a deadline
//! checked on the control loop's 10 ms heartbeat.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use ringmux_uring::op::ExitInfo;
use ringmux_uring::Op;

use crate::child::{start_process, sys};
use crate::error::ProxyError;
use crate::route::RouteKey;
use crate::zygote::proto::{FromServer, Spawn};
use crate::zygote::{channel, ENV_FD, ENV_PROTOCOL, ENV_RINGMUX_PID, PROTOCOL_VERSION};

use super::exit::redact;
use super::keys::KeyState;
use super::{tag, Control, K_FS_CHAN, K_FS_WAIT};

/// First restart delay after the fork server dies; doubled per failure.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A fork server that stayed up this long starts its backoff afresh.
const STABLE: Duration = Duration::from_secs(30);
/// Name of the fork server's working directory inside the instance dir (keys'
/// directories are 16 hex digits or `_default`, so it cannot collide).
pub const DIR_NAME: &str = "_forkserver";

/// Settings of fork mode.
#[derive(Debug, Clone)]
pub struct ForkServerConfig {
    /// The fork server's command.
    pub argv: Vec<OsString>,
    /// How long it may take to report ready (its warm-up).
    pub start_timeout: Duration,
    /// How long it may take to answer one spawn request.
    pub answer_timeout: Duration,
}

struct Process {
    pid: u32,
    pidfd: OwnedFd,
    chan: OwnedFd,
    started: Instant,
    /// Why we killed it, if we did.
    killed: Option<&'static str>,
    /// Its own cgroup (with cgroups): what it starts besides children for
    /// rollouts dies with it, pre-forked children included.
    cgroup: Option<crate::cgroup::ChildCgroup>,
}

enum State {
    /// Started; waits for `ready` until the deadline.
    Starting { deadline: Instant },
    /// Forks on request.
    Ready { since: Instant },
    /// Dead; restarts at `at`.
    Down { at: Instant },
    /// Stopped for good (shutdown), or never to be restarted.
    Stopped,
}

/// One spawn request: queued (the fork server is starting) or sent.
struct Pending {
    key: RouteKey,
    addr: crate::child::socket::ChildAddr,
    dir: PathBuf,
    query: String,
    /// Our end of the child's status socket.
    status: OwnedFd,
    /// What goes with the request (listener, dir, the child's status socket
    /// and, with cgroups, its cgroup directory); `None` once sent (the kernel
    /// holds them).
    fds: Option<Vec<OwnedFd>>,
    /// The child's cgroup, when ringmux uses cgroups.
    cgroup: Option<crate::cgroup::ChildCgroup>,
    deadline: Instant,
    /// When ringmux asked for it.
    asked: Instant,
}

/// The fork server's state.
pub(super) struct ForkServer {
    cfg: ForkServerConfig,
    dir: PathBuf,
    /// Bumped per start; completions of an older process are ignored.
    generation: u64,
    process: Option<Process>,
    state: State,
    backoff: Duration,
    pending: HashMap<u64, Pending>,
}

impl ForkServer {
    pub fn new(cfg: ForkServerConfig, instance_dir: &Path) -> ForkServer {
        ForkServer {
            cfg,
            dir: instance_dir.join(DIR_NAME),
            generation: 0,
            process: None,
            state: State::Down { at: Instant::now() },
            backoff: BACKOFF_MIN,
            pending: HashMap::new(),
        }
    }

    /// Stopped for good and its process reaped.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped) && self.process.is_none()
    }

    /// Spawn requests queued or sent, not answered yet.
    pub fn requests_in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    fn kill(&mut self, why: &'static str) {
        let Some(p) = self.process.as_mut() else {
            return;
        };
        if p.killed.is_some() {
            return;
        }
        p.killed = Some(why);
        if rustix::process::pidfd_send_signal(&p.pidfd, rustix::process::Signal::KILL).is_ok() {
            // Its own process group: helpers it started die with it.
            if let Some(pg) = rustix::process::Pid::from_raw(p.pid as i32) {
                let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
            }
        }
    }
}

fn fork_error(text: &str) -> ProxyError {
    ProxyError::ForkFailed(text.to_string())
}

impl Control {
    fn fs(&mut self) -> &mut ForkServer {
        self.fork.as_mut().expect("fork mode")
    }

    /// Starts the fork server process (first start or restart).
    pub(super) fn fork_start(&mut self) {
        let started = (|| -> Result<Process, String> {
            let fs = self.fork.as_ref().ok_or("not in fork mode")?;
            match std::fs::DirBuilder::new().mode(0o700).create(&fs.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating {}: {e}", fs.dir.display())),
            }
            let (ours, theirs) = channel::pair().map_err(|e| format!("socketpair: {e}"))?;
            let env = [
                (ENV_FD, crate::zygote::CHANNEL_FD.to_string()),
                (ENV_PROTOCOL, PROTOCOL_VERSION.to_string()),
                (ENV_RINGMUX_PID, std::process::id().to_string()),
            ];
            let cgroup = match &self.cfg.cgroups {
                None => None,
                Some(t) => Some(
                    t.child(&format!("{DIR_NAME}-{}", fs.generation + 1))
                        .map_err(|e| format!("its cgroup: {e}"))?,
                ),
            };
            let procs = cgroup.as_ref().map(|c| c.procs());
            let spawned = start_process(&fs.cfg.argv, &fs.dir, theirs.as_fd(), &env, procs)
                .map_err(|e| {
                    if let Some(cg) = &cgroup {
                        let _ = std::fs::remove_dir(&cg.path);
                    }
                    e.to_string()
                })?;
            Ok(Process {
                pid: spawned.pid,
                pidfd: spawned.pidfd,
                chan: ours,
                started: Instant::now(),
                killed: None,
                cgroup,
            })
        })();
        let process = match started {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the fork server");
                self.fork_down(false);
                return;
            }
        };
        let fs = self.fs();
        fs.generation += 1;
        let generation = fs.generation;
        let deadline = Instant::now() + fs.cfg.start_timeout;
        let pid = process.pid;
        let pidfd = process.pidfd.as_raw_fd();
        let chan = process.chan.as_raw_fd();
        fs.process = Some(process);
        fs.state = State::Starting { deadline };
        self.metrics.fork_server_starts.fetch_add(1, Relaxed);
        if let Err(e) = self
            .ring
            .push(Op::WaitId { pidfd }, tag(K_FS_WAIT, generation))
        {
            // Unwatched, it could never be reaped: stop it now.
            tracing::error!(error = %e, "cannot watch the fork server; stopping it");
            let fs = self.fs();
            fs.kill("unwatchable");
            if let Some(p) = fs.process.take() {
                let _ = rustix::process::waitid(
                    rustix::process::WaitId::PidFd(p.pidfd.as_fd()),
                    rustix::process::WaitIdOptions::EXITED,
                );
            }
            self.fork_down(false);
            return;
        }
        self.arm_fork_channel(chan, generation);
        tracing::info!(pid, "fork server started; waiting for it to report ready");
    }

    fn arm_fork_channel(&mut self, chan: i32, generation: u64) {
        let pushed = self.ring.push(
            Op::PollAdd {
                fd: chan,
                events: libc::POLLIN as u32,
            },
            tag(K_FS_CHAN, generation),
        );
        if let Err(e) = pushed {
            tracing::error!(error = %e, "cannot watch the fork server's channel; stopping it");
            self.fs().kill("unreadable channel");
        }
    }

    /// Asks for a child; it is published when the fork server answers. On
    /// failure the cgroup comes back with the error.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fork_request(
        &mut self,
        key: RouteKey,
        id: u64,
        dir: &Path,
        listener: OwnedFd,
        addr: crate::child::socket::ChildAddr,
        query: &str,
        cgroup: Option<crate::cgroup::ChildCgroup>,
    ) -> Result<(), (ProxyError, Option<crate::cgroup::ChildCgroup>)> {
        let timeout = self.cfg.ready_timeout;
        let fs = self.fs();
        if fs.process.as_ref().is_some_and(|p| p.killed.is_some()) {
            // Being killed (wedged, broken): do not hand it more work.
            return Err((
                ProxyError::ForkServerUnavailable("it is restarting"),
                cgroup,
            ));
        }
        let starting = match fs.state {
            State::Ready { .. } => false,
            State::Starting { .. } => true,
            State::Down { .. } => {
                return Err((
                    ProxyError::ForkServerUnavailable("it is restarting"),
                    cgroup,
                ))
            }
            State::Stopped => {
                return Err((ProxyError::ForkServerUnavailable("it is stopped"), cgroup))
            }
        };
        let fds = (|| {
            let dirfd = rustix::fs::open(
                dir,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| format!("opening its directory: {e}"))?;
            let (status, child_status) =
                channel::pair().map_err(|e| format!("status socketpair: {e}"))?;
            let mut fds = vec![listener, dirfd, child_status];
            if let Some(cg) = &cgroup {
                fds.push(
                    cg.dir()
                        .try_clone_to_owned()
                        .map_err(|e| format!("its cgroup: {e}"))?,
                );
            }
            Ok::<_, String>((status, fds))
        })();
        let (status, fds) = match fds {
            Ok(x) => x,
            Err(msg) => return Err((ProxyError::SpawnFailed(msg), cgroup)),
        };
        let p = Pending {
            key,
            addr,
            dir: dir.to_path_buf(),
            query: query.to_string(),
            status,
            fds: Some(fds),
            cgroup,
            deadline: Instant::now() + timeout,
            asked: Instant::now(),
        };
        self.fs().pending.insert(id, p);
        if !starting {
            if let Err(e) = self.fork_send(id) {
                let cg = self.fs().pending.remove(&id).and_then(|p| p.cgroup);
                return Err((e, cg));
            }
        }
        Ok(())
    }

    /// Sends queued request `id`. On failure the caller removes the request
    /// and answers its waiters; a wedged fork server is killed here.
    fn fork_send(&mut self, id: u64) -> Result<(), ProxyError> {
        let answer = self.fs().cfg.answer_timeout;
        let fs = self.fs();
        let (Some(p), Some(proc_)) = (fs.pending.get_mut(&id), fs.process.as_ref()) else {
            return Err(fork_error("no fork server"));
        };
        let Some(fds) = p.fds.take() else {
            return Ok(());
        };
        let msg = Spawn {
            id,
            addr: p.addr.to_string(),
            dir: p.dir.to_string_lossy().into_owned(),
            query: p.query.clone(),
        }
        .encode();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        match channel::send(proc_.chan.as_fd(), &msg, &borrowed) {
            Ok(()) => {
                p.deadline = Instant::now() + answer;
                // Our copies close here; the fork server has its own.
                drop(fds);
                Ok(())
            }
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::WouldBlock {
                    fs.kill("its channel is full (not reading)");
                    "the fork server is not reading its channel".to_string()
                } else {
                    format!("sending the spawn request: {e}")
                };
                tracing::error!(error = %why, "fork request failed");
                Err(ProxyError::ForkFailed(why))
            }
        }
    }

    /// The fork server's channel is readable: handle every queued message.
    pub(super) fn on_fork_channel(&mut self, generation: u64) {
        let (chan, current) = {
            let fs = self.fs();
            match fs.process.as_ref() {
                Some(p) if fs.generation == generation => (p.chan.as_raw_fd(), p.killed.is_none()),
                _ => return,
            }
        };
        if !current {
            return;
        }
        if self.drain_fork_channel() {
            self.arm_fork_channel(chan, generation);
        }
    }

    /// Handles whatever the fork server has sent so far (before the zombie
    /// sweep, so every child it reported is tracked). Its poll stays armed.
    pub(super) fn drain_fork_channel_now(&mut self) {
        if self
            .fs()
            .process
            .as_ref()
            .is_some_and(|p| p.killed.is_none())
        {
            self.drain_fork_channel();
        }
    }

    /// Reads and handles messages until none is queued. Returns whether the
    /// channel should be watched again (false at end of stream or after a
    /// protocol error, for which the fork server was killed).
    fn drain_fork_channel(&mut self) -> bool {
        for _ in 0..4096 {
            let received = {
                let Some(p) = self.fs().process.as_ref() else {
                    return false;
                };
                channel::recv(p.chan.as_fd())
            };
            match received {
                Ok(Some(m)) => {
                    if !self.on_fork_message(&m.bytes, m.fds) {
                        return false;
                    }
                }
                Ok(None) => {
                    let fs = self.fs();
                    if fs.process.as_ref().is_some_and(|p| p.killed.is_none()) {
                        tracing::warn!("the fork server closed its channel");
                        fs.kill("closed its channel");
                    }
                    return false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    tracing::error!(error = %e, "fork server sent an invalid message; restarting it");
                    self.fs().kill("protocol error");
                    return false;
                }
            }
        }
        true
    }

    /// Handles one message; false after a protocol error.
    fn on_fork_message(&mut self, bytes: &[u8], mut fds: Vec<OwnedFd>) -> bool {
        let msg = match FromServer::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "fork server broke the protocol; restarting it");
                self.fs().kill("protocol error");
                return false;
            }
        };
        let expects_fd = matches!(msg, FromServer::Spawned { .. } | FromServer::Orphan { .. });
        if fds.len() != usize::from(expects_fd) {
            tracing::error!(
                fds = fds.len(),
                "fork server sent the wrong number of descriptors; restarting it"
            );
            self.fs().kill("protocol error");
            return false;
        }
        match msg {
            FromServer::Ready { pid } => {
                let fs = self.fs();
                let Some(p) = fs.process.as_ref() else {
                    return false;
                };
                if !matches!(fs.state, State::Starting { .. }) {
                    tracing::error!("fork server reported ready twice; restarting it");
                    fs.kill("protocol error");
                    return false;
                }
                let ms = p.started.elapsed().as_secs_f64() * 1000.0;
                if pid != p.pid {
                    tracing::warn!(
                        reported = pid,
                        actual = p.pid,
                        "fork server reported another pid"
                    );
                }
                fs.state = State::Ready {
                    since: Instant::now(),
                };
                let queued: Vec<u64> = fs
                    .pending
                    .iter()
                    .filter(|(_, p)| p.fds.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                self.metrics.fork_server_ready.store(1, Relaxed);
                tracing::info!(
                    pid,
                    start_ms = ms,
                    queued = queued.len(),
                    "fork server ready"
                );
                for id in queued {
                    if let Err(e) = self.fork_send(id) {
                        self.fork_spawn_failed(id, None, e);
                    }
                }
                true
            }
            FromServer::Fatal { error } => {
                tracing::error!(%error, "fork server failed");
                self.fs().kill("reported a fatal error");
                false
            }
            FromServer::Spawned { id, pid, fork_us } => {
                let Some(pidfd) = fds.pop() else {
                    return false;
                };
                self.fork_spawned(id, pid, pidfd, fork_us)
            }
            FromServer::Orphan { pid } => {
                let Some(pidfd) = fds.pop() else {
                    return false;
                };
                if sys::pidfd_is_our_child(pidfd.as_fd()).unwrap_or(false) {
                    tracing::debug!(
                        pid,
                        "fork server handed back a child that serves nobody; reaping it"
                    );
                    self.reap_pidfd(pid, pidfd);
                }
                true
            }
            FromServer::Error { id, error } => {
                let Some(p) = self.fs().pending.remove(&id) else {
                    tracing::error!(id, "fork server answered an unknown request; restarting it");
                    self.fs().kill("protocol error");
                    return false;
                };
                let error = redact(&error, &p.query);
                tracing::error!(key = %p.key.label(), %error, "the fork server could not fork");
                self.fork_spawn_failed(id, Some(p), ProxyError::ForkFailed(error));
                true
            }
        }
    }

    /// A child was forked: check it is ours, then treat it like an exec'd one.
    fn fork_spawned(&mut self, id: u64, pid: u32, pidfd: OwnedFd, fork_us: Option<u64>) -> bool {
        let Some(mut p) = self.fs().pending.remove(&id) else {
            // A request that timed out meanwhile, or a confused fork server.
            tracing::warn!(
                id,
                pid,
                "fork server reported a child nobody waits for; killing it"
            );
            if sys::pidfd_is_our_child(pidfd.as_fd()).unwrap_or(false) {
                self.reap_pidfd(pid, pidfd);
            } else {
                let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
            }
            return true;
        };
        if p.fds.is_some() {
            // Answered before it was asked.
            self.fs().kill("protocol error");
            self.fork_spawn_failed(id, Some(p), fork_error("answered an unsent request"));
            return false;
        }
        match sys::pidfd_is_our_child(pidfd.as_fd()) {
            Ok(true) => {}
            // Already dead and reaped (the once-a-second zombie sweep can
            // reap a child that died before its report was read): a failed
            // start, not a broken fork server.
            Ok(false) if sys::pidfd_exited(pidfd.as_fd()) => {
                tracing::warn!(pid, "the forked child died before ringmux could watch it");
                self.fork_spawn_failed(id, Some(p), fork_error("its child died at once"));
                return true;
            }
            other => {
                let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
                tracing::error!(pid, ?other,
                    "the fork server's child is not a child of ringmux (fork with clone3(CLONE_PARENT)); restarting it");
                self.fs().kill("protocol error");
                self.fork_spawn_failed(
                    id,
                    Some(p),
                    fork_error("its child is not a child of ringmux"),
                );
                return false;
            }
        }
        // Its own process group, set from here too (it may not have run yet);
        // failing is harmless (it did it itself, or it is gone).
        if let Some(pp) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::setpgid(Some(pp), Some(pp));
        }
        let Some(KeyState::Starting {
            child_id,
            closers,
            acquirers,
        }) = self.keys.remove(&p.key)
        else {
            self.reap_pidfd(pid, pidfd);
            self.drop_cgroup(p.cgroup.take());
            return true;
        };
        debug_assert_eq!(child_id, id);
        let key = p.key;
        if let Some(cg) = &p.cgroup {
            // Normally it is born there (CLONE_INTO_CGROUP) or moved itself
            // before running the tool's code; this makes sure of it.
            if let Err(e) = cg.add_pid(pid) {
                tracing::warn!(pid, cgroup = %cg.name, error = %e, "cannot move a forked child into its cgroup");
            }
        }
        let asked_ms = p.asked.elapsed().as_secs_f64() * 1000.0;
        let fork_ms = fork_us.map(|us| us as f64 / 1000.0);
        let cgroup = p.cgroup.take();
        match self.watch(id, p.addr.clone(), pid, pidfd, Some(p.status)) {
            Ok(mut live) => {
                live.cgroup = cgroup;
                tracing::info!(key = %key.label(), pid, child = id, addr = %p.addr, asked_ms,
                    fork_ms, "child forked");
                self.started(key, live, closers, acquirers);
            }
            Err(msg) => {
                self.drop_cgroup(cgroup);
                self.addrs.remove(&p.addr);
                self.metrics.spawn_failures.fetch_add(1, Relaxed);
                tracing::error!(key = %key.label(), error = %msg, "could not start child");
                self.fail(key, acquirers.workers, &ProxyError::SpawnFailed(msg));
                self.start_teardown(key, closers, Default::default(), std::time::Instant::now());
            }
        }
        true
    }

    /// Request `id` ended without a child: its waiters get `error`, its
    /// closers an answer once its directory is gone.
    fn fork_spawn_failed(&mut self, id: u64, p: Option<Pending>, error: ProxyError) {
        let p = p.or_else(|| self.fs().pending.remove(&id));
        let Some(mut p) = p else {
            return;
        };
        self.drop_cgroup(p.cgroup.take());
        self.addrs.remove(&p.addr);
        self.metrics.spawn_failures.fetch_add(1, Relaxed);
        if let Some(KeyState::Starting {
            closers, acquirers, ..
        }) = self.keys.remove(&p.key)
        {
            let error = if self.shutdown.is_some() {
                ProxyError::ShuttingDown
            } else {
                error
            };
            self.fail(p.key, acquirers.workers, &error);
            self.start_teardown(
                p.key,
                closers,
                Default::default(),
                std::time::Instant::now(),
            );
        }
    }

    /// The fork server exited (WAITID reaped it).
    pub(super) fn on_fork_server_exit(
        &mut self,
        generation: u64,
        exit: Option<ExitInfo>,
        result: i32,
    ) {
        if self.fs().generation != generation || self.fs().process.is_none() {
            return;
        }
        // Children it reported just before dying are still in the channel.
        self.drain_fork_channel();
        let fs = self.fs();
        let Some(p) = fs.process.take() else {
            return;
        };
        let up_for = p.started.elapsed();
        drop(p.chan);
        let how = match exit {
            Some(e) if e.code == libc::CLD_EXITED => format!("exited with status {}", e.status),
            Some(e) => format!("killed by signal {}", e.status),
            None => format!("wait failed (errno {})", -result),
        };
        let stable = matches!(fs.state, State::Ready { since } if since.elapsed() >= STABLE);
        self.metrics.fork_server_exits.fetch_add(1, Relaxed);
        self.metrics.fork_server_ready.store(0, Relaxed);
        let shutting_down = self.shutdown.is_some();
        if shutting_down {
            tracing::info!(pid = p.pid, %how, "fork server stopped");
        } else {
            tracing::error!(pid = p.pid, %how, killed_because = p.killed.unwrap_or("-"),
                up_s = up_for.as_secs_f64(), "fork server died; live children keep serving");
        }
        if let Some(cg) = p.cgroup {
            // Its helpers and its pool go with it; the cgroup is removed once
            // empty (checked on the heartbeat).
            if let Err(e) = cg.kill() {
                tracing::warn!(cgroup = %cg.name, error = %e, "cgroup.kill of the fork server failed");
            }
            self.stale_cgroups.push(cg.into_parts());
        }
        let ids: Vec<(u64, bool)> = self
            .fs()
            .pending
            .iter()
            .map(|(id, p)| (*id, p.fds.is_none()))
            .collect();
        for (id, sent) in ids {
            let error = if sent {
                fork_error("the fork server died during the fork")
            } else {
                ProxyError::ForkServerUnavailable("it died while starting")
            };
            self.fork_spawn_failed(id, None, error);
        }
        self.reap_orphans();
        if shutting_down {
            self.fs().state = State::Stopped;
            self.remove_fork_server_dir();
        } else {
            self.fork_down(stable);
        }
    }

    /// Schedules a restart with backoff.
    fn fork_down(&mut self, was_stable: bool) {
        let fs = self.fs();
        if matches!(fs.state, State::Stopped) {
            return;
        }
        if was_stable {
            fs.backoff = BACKOFF_MIN;
        }
        let wait = fs.backoff;
        fs.backoff = (fs.backoff * 2).min(BACKOFF_MAX);
        fs.state = State::Down {
            at: Instant::now() + wait,
        };
        tracing::warn!(
            restart_in_ms = wait.as_millis() as u64,
            "fork server down: new rollouts get 503 until it is back"
        );
    }

    /// Deadlines and restarts, on every heartbeat.
    pub(super) fn fork_tick(&mut self, now: Instant) {
        let stopping = self.shutdown.is_some();
        let fs = self.fs();
        match fs.state {
            State::Down { at } if now >= at && !stopping => {
                self.fork_start();
                return;
            }
            State::Starting { deadline }
                if now >= deadline && fs.process.as_ref().is_some_and(|p| p.killed.is_none()) =>
            {
                tracing::error!(
                    timeout_s = fs.cfg.start_timeout.as_secs_f64(),
                    "fork server did not report ready in time; killing it"
                );
                fs.kill("not ready in time");
            }
            _ => {}
        }
        let expired: Vec<(u64, bool)> = self
            .fs()
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(id, p)| (*id, p.fds.is_none()))
            .collect();
        for (id, sent) in expired {
            if sent {
                tracing::error!(
                    "the fork server did not answer a spawn request in time; killing it"
                );
                self.fs().kill("did not answer in time");
            }
            self.fork_spawn_failed(id, None, ProxyError::ForkServerTimeout);
        }
    }

    /// Shutdown: no restarts; stop the fork server.
    pub(super) fn fork_shutdown(&mut self) {
        let fs = self.fs();
        let running = fs.process.is_some();
        fs.kill("shutdown");
        fs.state = State::Stopped;
        // A running one's directory goes when its exit is seen.
        if !running {
            self.remove_fork_server_dir();
        }
    }

    /// Its directory goes into the trash (or is deleted in place).
    fn remove_fork_server_dir(&mut self) {
        self.discard(super::reclaim::Parent::Instance, DIR_NAME, "fs", None);
    }
}

//! Starting and stopping an instance: the private instance directory (locked
//! with `flock` so a later instance can tell a dead owner from a live one), the
//! per-worker `SO_REUSEPORT` listeners, the control thread and the worker
//! threads, and the orderly shutdown on SIGTERM/SIGINT or at the end of a
//! drain (src/lifecycle.rs).

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::admin;
use crate::cgroup::CgroupMode;
use crate::child::{ExecSpawner, Spawner};
use crate::config::{ChildCommand, Config};
use crate::control::{Control, ControlConfig, ForkServerConfig, Maker};
use crate::dataplane::{Worker, WorkerSetup};
use crate::lifecycle::{self, End, Event};
use crate::metrics::Metrics;
use crate::msg::{mailbox, ToControl, ToWorker};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The base or instance directory.
    #[error("instance directory {path}: {source}")]
    Dir {
        /// Which path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Binding the listen address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Anything else during setup (rings, threads, signals).
    #[error("{what}: {source}")]
    Setup {
        /// What failed.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> ServerError {
    move |source| ServerError::Setup { what, source }
}

/// Runs an instance until SIGTERM/SIGINT, then tears everything down.
pub fn run(cfg: Config) -> Result<(), ServerError> {
    raise_nofile_limit();
    let (instance_dir, instance_fd) = make_instance_dir(&cfg.base_dir)?;
    let base_fd = rustix::fs::open(
        &cfg.base_dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| ServerError::Dir {
        path: cfg.base_dir.clone(),
        source: e.into(),
    })?;
    let cgroups = instance_cgroup(cfg.cgroup, cfg.limits, &instance_dir)?;
    let metrics = Arc::new(Metrics::new(cfg.workers));
    let admin = match cfg.admin {
        Some(addr) => {
            Some(admin::bind(addr).map_err(|source| ServerError::Listen { addr, source })?)
        }
        None => None,
    };
    let listeners = bind_listeners(cfg.listen, cfg.workers)?;
    let local = listeners[0]
        .local_addr()
        .map_err(setup("reading the listen address"))?;

    let argv = match &cfg.child {
        ChildCommand::Exec(argv) => argv.clone(),
        ChildCommand::Demo => {
            let exe = std::env::current_exe().map_err(setup("locating the ringmux binary"))?;
            let mut v = vec![exe.into_os_string(), "demo-child".into()];
            if cfg.fork.is_some() {
                v.push("--fork-server".into());
            }
            v
        }
    };
    let maker = match cfg.fork {
        None => Maker::Exec(Box::new(ExecSpawner::new(argv)) as Box<dyn Spawner>),
        Some((start_timeout, answer_timeout)) => Maker::Fork(ForkServerConfig {
            argv,
            start_timeout,
            answer_timeout,
        }),
    };

    let (ctl_tx, ctl_rx) = mailbox::<ToControl>().map_err(setup("control mailbox"))?;
    let mut worker_tx = Vec::new();
    let mut worker_rx = Vec::new();
    for _ in 0..cfg.workers {
        let (tx, rx) = mailbox::<ToWorker>().map_err(setup("worker mailbox"))?;
        worker_tx.push(tx);
        worker_rx.push(rx);
    }

    // Signals are handled by a dedicated thread; register before any other
    // thread starts so none of them sees the default disposition.
    let signals = lifecycle::signals().map_err(setup("signals"))?;
    let (life_tx, life_rx) = mpsc::channel::<Event>();

    let ctl_cfg = ControlConfig {
        instance_dir: instance_dir.clone(),
        instance_fd: instance_fd
            .try_clone()
            .map_err(setup("duplicating the instance fd"))?,
        ready_timeout: cfg.ready_timeout,
        max_children: cfg.max_children,
        child_idle_timeout: cfg.child_idle_timeout,
        keep_failed_dirs: cfg.keep_failed_dirs,
        cleanup_workers: cfg.cleanup_workers,
        cleanup_cpus: cfg.cleanup_cpus.clone(),
        base_fd,
        metrics: Arc::clone(&metrics),
        cgroups,
        pace: cfg.pace,
        child_socket: cfg.child_socket,
    };
    let ctl_workers = worker_tx.clone();
    let (ctl_ready_tx, ctl_ready_rx) = mpsc::channel::<Result<(), String>>();
    // The control thread spawns every child, and PR_SET_PDEATHSIG is tied to
    // the spawning thread: it must live as long as the process (it does: it
    // only returns after shutdown, right before we exit). Its ring is created
    // on it (rings are single-issuer).
    let control_thread = std::thread::Builder::new()
        .name("ringmux-control".into())
        .spawn(
            move || match Control::new(ctl_rx, ctl_workers, maker, ctl_cfg) {
                Ok(control) => {
                    let _ = ctl_ready_tx.send(Ok(()));
                    control.run();
                }
                Err(e) => {
                    let _ = ctl_ready_tx.send(Err(e.to_string()));
                }
            },
        )
        .map_err(setup("control thread"))?;
    match ctl_ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(ServerError::Setup {
                what: "control ring",
                source: std::io::Error::other(e),
            })
        }
        Err(_) => {
            return Err(ServerError::Setup {
                what: "control start",
                source: std::io::Error::other("the control thread died"),
            })
        }
    }

    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut workers = Vec::new();
    for (id, (listener, inbox)) in listeners.into_iter().zip(worker_rx).enumerate() {
        let setup_w = WorkerSetup {
            id,
            listener,
            inbox,
            control: ctl_tx.clone(),
            key_param: cfg.key_param.clone(),
            close_path: cfg.close_path.clone(),
            origin: cfg.origin.clone(),
            metrics: Arc::clone(&metrics),
            limits: cfg.client,
        };
        let ready = ready_tx.clone();
        let cpus = cfg.worker_cpus.clone();
        let h = std::thread::Builder::new()
            .name(format!("ringmux-w{id}"))
            .spawn(move || match Worker::new(setup_w) {
                Ok(w) if !pin_worker(id, cpus.as_deref()) => {
                    drop(w);
                    let _ = ready.send(Err("cannot pin the worker to --worker-cpus".into()));
                }
                Ok(w) => {
                    let _ = ready.send(Ok(()));
                    w.run();
                }
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                }
            })
            .map_err(setup("worker thread"))?;
        workers.push(h);
    }
    for _ in 0..cfg.workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(ServerError::Setup {
                    what: "worker ring",
                    source: std::io::Error::other(e),
                })
            }
            Err(_) => {
                return Err(ServerError::Setup {
                    what: "worker start",
                    source: std::io::Error::other("a worker thread died"),
                })
            }
        }
    }

    let admin_addr = match admin {
        Some(l) => {
            let a = l.local_addr().ok();
            let m = Arc::clone(&metrics);
            let drain = life_tx.clone();
            // The same DNS-rebinding rules: a page must not read pids and key
            // hashes off a loopback admin listener either.
            let policy = cfg
                .origin
                .for_listener(a.is_some_and(|a| a.ip().is_loopback()));
            std::thread::Builder::new()
                .name("ringmux-admin".into())
                .spawn(move || admin::serve(l, m, policy, drain))
                .map_err(setup("admin thread"))?;
            a
        }
        None => None,
    };
    tracing::info!(addr = %local, workers = cfg.workers, worker_cpus = ?cfg.worker_cpus,
        cleanup_cpus = ?cfg.cleanup_cpus, dir = %instance_dir.display(),
        "ringmux ready");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ringmux: instance dir {}", instance_dir.display());
    if let Some(a) = admin_addr {
        let _ = writeln!(out, "ringmux: metrics on http://{a}/metrics");
    }
    let _ = writeln!(out, "ringmux: listening on http://{local}");
    let _ = out.flush();
    drop(out);

    lifecycle::forward_signals(signals, life_tx.clone()).map_err(setup("signal thread"))?;
    match lifecycle::wait_for_end(&life_rx, &life_tx, &ctl_tx, &metrics, cfg.drain_timeout) {
        End::Signal(sig) => tracing::info!(signal = sig, "signal received: shutting down"),
        End::Drained => tracing::info!("drain finished: shutting down"),
        End::DrainTimeout => tracing::warn!(
            live_children = metrics
                .live_children
                .load(std::sync::atomic::Ordering::Relaxed),
            "drain timeout: shutting down with rollouts still live"
        ),
    }
    for w in &worker_tx {
        let _ = w.send(ToWorker::Shutdown);
    }
    let (done_tx, done_rx) = mpsc::channel();
    let _ = ctl_tx.send(ToControl::Shutdown { done: done_tx });
    match done_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) if instance_dir.exists() => tracing::error!(dir = %instance_dir.display(),
            "every child stopped, but the instance directory is left (see the warnings above)"),
        Ok(()) => tracing::info!("every child stopped and every directory removed"),
        Err(_) => tracing::error!("shutdown did not finish within 60 s; exiting anyway"),
    }
    drop(instance_fd);
    drop(control_thread);
    drop(workers);
    Ok(())
}

/// The instance's cgroup, as `--cgroup` asks (named like the instance dir).
fn instance_cgroup(
    mode: CgroupMode,
    limits: crate::cgroup::Limits,
    instance_dir: &Path,
) -> Result<Option<crate::cgroup::Tree>, ServerError> {
    if mode == CgroupMode::Off {
        tracing::info!("--cgroup off: children are killed by process group; processes that leave it (setsid, daemons) are not contained");
        return Ok(None);
    }
    let name = instance_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Limits are a promise: with one asked for, no cgroups is an error, not a fallback.
    let mode = if limits.any() {
        CgroupMode::Required
    } else {
        mode
    };
    let made = crate::cgroup::Tree::create(&name).and_then(|mut t| {
        if let Err(e) = t.apply_limits(limits) {
            let _ = t.remove();
            return Err(e);
        }
        Ok(t)
    });
    match made {
        Ok(t) => {
            let controllers =
                std::fs::read_to_string(t.path.join("cgroup.controllers")).unwrap_or_default();
            let controllers = controllers.trim();
            tracing::info!(cgroup = %t.path.display(),
                controllers = if controllers.is_empty() { "none" } else { controllers },
                "one cgroup per child: close, crash and shutdown kill everything a rollout started");
            Ok(Some(t))
        }
        Err(e) if mode == CgroupMode::Auto => {
            tracing::warn!(error = %e,
                "no usable cgroup v2 hierarchy: falling back to process-group kills; processes that leave a child's process group (setsid, daemons) are not contained (see README, Containment)");
            Ok(None)
        }
        Err(e) => Err(ServerError::Setup {
            what: if limits.any() {
                "per-child limits"
            } else {
                "--cgroup required"
            },
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Binds one `SO_REUSEPORT` listener per worker on the same address (the first
/// picks the port when `addr` has port 0).
fn bind_listeners(addr: SocketAddr, n: usize) -> Result<Vec<TcpListener>, ServerError> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let l = bind_one(addr).map_err(|source| ServerError::Listen { addr, source })?;
        if addr.port() == 0 {
            addr = l
                .local_addr()
                .map_err(|source| ServerError::Listen { addr, source })?;
        }
        out.push(l);
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Creates `<base>/ringmux-<pid>-<nonce>` (mode 0700) and holds an exclusive
/// `flock` on it for the life of the process.
fn make_instance_dir(base: &Path) -> Result<(PathBuf, OwnedFd), ServerError> {
    let dir_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServerError::Dir { path, source }
    };
    if !base.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(base)
            .map_err(dir_err(base))?;
    }
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = base.join(format!("ringmux-{}-{nonce:08x}", std::process::id()));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(dir_err(&dir))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(dir_err(&dir))?;
    let dir = fs::canonicalize(&dir).map_err(dir_err(&dir))?;
    let fd = rustix::fs::open(
        &dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| dir_err(&dir)(e.into()))?;
    rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|e| dir_err(&dir)(e.into()))?;
    Ok((dir, fd))
}

/// Thousands of children mean thousands of sockets: lift the soft fd limit to
/// the hard one.
fn raise_nofile_limit() {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = lim.maximum {
        let new = rustix::process::Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, new);
    }
}

/// Confines the calling worker thread to `cpus` (`--worker-cpus`); returns
/// false if that was asked for and failed.
fn pin_worker(id: usize, cpus: Option<&[usize]>) -> bool {
    let Some(cpus) = cpus else {
        return true;
    };
    match crate::config::set_affinity(None, cpus) {
        Ok(()) => {
            tracing::debug!(worker = id, ?cpus, "worker pinned");
            true
        }
        Err(e) => {
            tracing::error!(worker = id, ?cpus, error = %e, "cannot pin a worker to --worker-cpus");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workers do not set TCP_NODELAY per accept (one syscall less per
    /// connection): Linux copies it from the listener to each accepted socket.
    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        let l = bind_one("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = l.local_addr().expect("local addr");
        let _c = std::net::TcpStream::connect(addr).expect("connect");
        let (s, _) = l.accept().expect("accept");
        assert!(rustix::net::sockopt::tcp_nodelay(&s).expect("getsockopt"));
    }
}

//! The per-key state machine. A key is absent (no child), `Starting` (the
//! fork server was asked for its child), `Running` (a child process exists,
//! perhaps dying), or `Teardown` (its child is gone and its directory is being
//! removed). `Teardown` is the per-directory fork lock: acquirers queue until
//! the directory is gone, while every other key spawns at once. Closers are
//! answered only when the directory is gone, so a second close for a key
//! waits for the first one's cleanup.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{mpsc, Arc};

use crate::error::ProxyError;
use crate::metrics::ExitCause;
use crate::msg::ToWorker;
use crate::route::{ChildInfo, RouteKey};
use ringmux_uring::OpId;

use super::Control;

/// Workers waiting for a key's child, and the query string of the first
/// request among them (a forked child's per-rollout setup gets it).
#[derive(Debug, Default)]
pub(super) struct Waiting {
    pub workers: Vec<usize>,
    pub query: String,
}

impl Waiting {
    /// One worker asks.
    pub fn new(worker: usize, query: String) -> Waiting {
        Waiting {
            workers: vec![worker],
            query,
        }
    }

    /// Adds a worker (once); the first request's query is kept.
    pub fn add(&mut self, worker: usize, query: String) {
        if self.workers.is_empty() {
            self.query = query;
        }
        if !self.workers.contains(&worker) {
            self.workers.push(worker);
        }
    }
}

/// A key whose child is reaped, on its way to the directory teardown: who
/// waits for the close, who waits for a new child.
pub(super) struct Ended {
    pub key: RouteKey,
    pub child_id: u64,
    /// When its exit was seen (the close-teardown metric counts from here).
    pub exited: std::time::Instant,
    /// Keep its directory for a post-mortem (`--keep-failed-dirs`).
    pub post_mortem: bool,
    pub closers: Vec<(usize, u64)>,
    pub acquirers: Waiting,
}

/// One live child process.
pub(super) struct Live {
    pub child: Arc<ChildInfo>,
    pub pidfd: OwnedFd,
    pub pid: u32,
    pub ready_timer: Option<OpId>,
    /// Why a kill was sent (close, ready timeout, shutdown); `None`: alive
    /// as far as we know.
    pub killed: Option<ExitCause>,
    /// A forked child's status socket, until its setup result came.
    pub status: Option<OwnedFd>,
    /// Its cgroup, when ringmux uses cgroups.
    pub cgroup: Option<crate::cgroup::ChildCgroup>,
    /// Its per-rollout setup reported failure.
    pub setup_failed: bool,
}

pub(super) enum KeyState {
    /// The fork server was asked for child `child_id`.
    Starting {
        child_id: u64,
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
    },
    /// A child is running (or dying: `killed`).
    Running {
        live: Live,
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
    },
    /// Its child is reaped; what else ran in its cgroup was killed and is
    /// not gone yet (nothing may start in its directory before).
    Draining {
        cgroup: crate::cgroup::ChildCgroup,
        /// `cgroup.events`, read to see it empty, polled for changes.
        events: OwnedFd,
        end: Ended,
    },
    /// Its child is gone and its directory is being removed.
    Teardown {
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
    },
}

impl Control {
    /// Whether `--max-children` is reached, counting children the fork
    /// server was asked for but has not reported yet.
    fn at_capacity(&self) -> bool {
        let starting = self.fork.as_ref().map_or(0, |f| f.requests_in_flight());
        self.live + starting >= self.cfg.max_children
    }

    pub(super) fn acquire(&mut self, key: RouteKey, worker: usize, query: String) {
        if self.shutdown.is_some() {
            self.fail(key, [worker], &ProxyError::ShuttingDown);
            return;
        }
        match self.keys.get_mut(&key) {
            Some(KeyState::Running {
                live, acquirers, ..
            }) => {
                if live.killed.is_some() {
                    acquirers.add(worker, query);
                } else {
                    let child = Arc::clone(&live.child);
                    self.reply(worker, ToWorker::Ready { key, child });
                }
            }
            Some(
                KeyState::Starting { acquirers, .. }
                | KeyState::Draining {
                    end: Ended { acquirers, .. },
                    ..
                }
                | KeyState::Teardown { acquirers, .. },
            ) => {
                acquirers.add(worker, query);
            }
            None => {
                if self.metrics.draining.load(Relaxed) {
                    self.fail(key, [worker], &ProxyError::Draining);
                    return;
                }
                if self.at_capacity() {
                    self.metrics.at_capacity.fetch_add(1, Relaxed);
                    tracing::warn!(
                        live = self.live,
                        max = self.cfg.max_children,
                        "at capacity: refusing a new key"
                    );
                    self.fail(key, [worker], &ProxyError::AtCapacity);
                    return;
                }
                self.spawn_for(key, Waiting::new(worker, query), true);
            }
        }
    }

    pub(super) fn close(&mut self, key: RouteKey, worker: usize, token: u64) {
        match self.keys.get_mut(&key) {
            None => self.reply(worker, ToWorker::Closed { token }),
            Some(KeyState::Running { live, closers, .. }) => {
                closers.push((worker, token));
                if live.killed.is_none() {
                    tracing::info!(key = %key.label(), pid = live.pid, "closing child");
                    super::exit::kill(live, ExitCause::Closed);
                }
            }
            // A starting child is killed as soon as it exists.
            Some(
                KeyState::Starting { closers, .. }
                | KeyState::Draining {
                    end: Ended { closers, .. },
                    ..
                }
                | KeyState::Teardown { closers, .. },
            ) => closers.push((worker, token)),
        }
    }

    /// A key's directory is gone: answer its closers, then start the next
    /// child if requests wait for one.
    pub(super) fn finish_teardown(
        &mut self,
        key: RouteKey,
        closers: Vec<(usize, u64)>,
        acquirers: Waiting,
    ) {
        for (w, token) in closers {
            self.reply(w, ToWorker::Closed { token });
        }
        if acquirers.workers.is_empty() {
            return;
        }
        if self.shutdown.is_some() {
            self.fail(key, acquirers.workers, &ProxyError::ShuttingDown);
        } else if self.metrics.draining.load(Relaxed) {
            // The key's child is gone, so here it is a new key: a drain
            // starts no child (the balancer sends it elsewhere), or a client
            // that reopens a key as it closes it would hold the drain open.
            self.fail(key, acquirers.workers, &ProxyError::Draining);
        } else if self.at_capacity() {
            self.metrics.at_capacity.fetch_add(1, Relaxed);
            self.fail(key, acquirers.workers, &ProxyError::AtCapacity);
        } else {
            self.spawn_for(key, acquirers, false);
        }
    }

    pub(super) fn begin_shutdown(&mut self, done: mpsc::Sender<()>) {
        tracing::info!(children = self.live, "shutting down: killing every child");
        self.shutdown = Some(done);
        // Nobody is served any more: the trash goes at full speed.
        self.pacer.shutdown();
        for state in self.keys.values_mut() {
            if let KeyState::Running { live, .. } = state {
                if live.killed.is_none() {
                    super::exit::kill(live, ExitCause::Shutdown);
                }
            }
        }
        // Starting keys end when the fork server answers or dies.
        if self.fork.is_some() {
            self.fork_shutdown();
        }
    }
}

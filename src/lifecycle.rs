//! How an instance ends. SIGTERM or SIGINT stops it now: every child is
//! killed and every directory removed. A *drain* (SIGUSR1, or `POST /drain`
//! on the admin listener) ends it gently: new keys are refused (`503` with
//! `Retry-After`, so a balancer sends them elsewhere) and `/readyz` says
//! not ready, while the keys that have a child keep being served and closed;
//! the instance stops as for SIGTERM, exit status 0, once the last child is
//! gone or at `--drain-timeout`, whichever comes first.
//!
//! The main thread waits in [`wait_for_end`] on one channel that the signal
//! thread, the admin listener and the control plane (which says when the
//! last key is gone) all send [`Event`]s to.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use crate::metrics::Metrics;
use crate::msg::{Mailbox, ToControl};

/// What the main thread is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Stop now (the signal's number).
    Stop(i32),
    /// Begin a drain (who asked: `"SIGUSR1"` or `"admin"`).
    Drain(&'static str),
    /// The drain is done: no key has a child or a directory any more.
    Drained,
}

/// The signals an instance handles: [`Event::Stop`] for SIGTERM and SIGINT,
/// [`Event::Drain`] for SIGUSR1. Register before any other thread starts,
/// so that none of them sees the default disposition.
pub fn signals() -> std::io::Result<signal_hook::iterator::Signals> {
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])
}

/// Forwards signals to `tx` from a thread of its own.
pub fn forward_signals(
    mut signals: signal_hook::iterator::Signals,
    tx: mpsc::Sender<Event>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringmux-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let ev = if sig == SIGUSR1 {
                    Event::Drain("SIGUSR1")
                } else {
                    Event::Stop(sig)
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        })
        .map(drop)
}

/// Why [`wait_for_end`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A stop signal.
    Signal(i32),
    /// A drain finished: the last key's child and directory are gone.
    Drained,
    /// A drain ran into `--drain-timeout` with keys still live.
    DrainTimeout,
}

/// Waits until the instance should stop. A drain sets the shared draining
/// flag (which workers answer `/readyz` from and the control plane refuses
/// new keys by), tells the control plane to report when the last key is
/// gone, and bounds the wait by `drain_timeout`. A second drain request is
/// a no-op; a stop signal during a drain stops at once.
pub fn wait_for_end(
    rx: &mpsc::Receiver<Event>,
    drain_tx: &mpsc::Sender<Event>,
    ctl: &Mailbox<ToControl>,
    metrics: &Metrics,
    drain_timeout: Duration,
) -> End {
    let mut deadline: Option<Instant> = None;
    loop {
        let ev = match deadline {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        match ev {
            Ok(Event::Stop(sig)) => return End::Signal(sig),
            Ok(Event::Drain(by)) if deadline.is_none() => {
                metrics.draining.store(true, Relaxed);
                let live = metrics.live_children.load(Relaxed);
                tracing::info!(
                    by,
                    live_children = live,
                    timeout_s = drain_timeout.as_secs(),
                    "draining: new keys get 503, live rollouts are served until they close"
                );
                let _ = ctl.send(ToControl::Drain {
                    notify: drain_tx.clone(),
                });
                deadline = Some(Instant::now() + drain_timeout);
            }
            Ok(Event::Drain(by)) => tracing::info!(by, "already draining"),
            Ok(Event::Drained) => return End::Drained,
            Err(mpsc::RecvTimeoutError::Timeout) => return End::DrainTimeout,
            // Every sender is gone (cannot happen while main holds one).
            Err(mpsc::RecvTimeoutError::Disconnected) => return End::Signal(SIGTERM),
        }
    }
}

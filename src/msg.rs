//! Messages between the data plane and the control plane, and the mailbox that
//! carries them: a channel plus an eventfd the receiving ring keeps a read on,
//! so a message wakes the receiver's ring without any thread blocking on the
//! channel itself.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;

use rustix::event::{eventfd, EventfdFlags};

use crate::error::ProxyError;
use crate::route::{ChildInfo, RouteKey};

/// Data plane (or main thread) → control plane.
#[derive(Debug)]
pub enum ToControl {
    /// Worker `worker` needs a live child for `key`.
    Acquire {
        /// The route.
        key: RouteKey,
        /// Who asks (index of the worker's mailbox).
        worker: usize,
        /// The asking request's query string (a forked child's per-rollout
        /// setup gets the first one; it holds the key, so it is never logged).
        query: String,
    },
    /// Close `key`'s child; answer `Closed { token }` to `worker` when its
    /// directory is gone.
    Close {
        /// The route.
        key: RouteKey,
        /// Who asks.
        worker: usize,
        /// Echoed back in the answer.
        token: u64,
    },
    /// Begin a drain: refuse new keys (the shared draining flag is set
    /// already) and send [`crate::lifecycle::Event::Drained`] on `notify`
    /// once no key has a child or a directory.
    Drain {
        /// Where to say the drain is done.
        notify: mpsc::Sender<crate::lifecycle::Event>,
    },
    /// Kill every child, remove every directory, then send on `done`.
    Shutdown {
        /// Completion signal.
        done: mpsc::Sender<()>,
    },
}

/// Control plane → one worker.
#[derive(Debug)]
pub enum ToWorker {
    /// `key` has a live child.
    Ready {
        /// The route.
        key: RouteKey,
        /// The child.
        child: Arc<ChildInfo>,
    },
    /// No child for `key` could be had.
    Failed {
        /// The route.
        key: RouteKey,
        /// What the waiting requests get.
        error: ProxyError,
    },
    /// A child is gone (closed, crashed or timed out): forget it and close
    /// pooled connections to it.
    Gone {
        /// The route.
        key: RouteKey,
        /// Which child (a newer one may already serve the key).
        child_id: u64,
    },
    /// A close finished.
    Closed {
        /// From the `Close` request.
        token: u64,
    },
    /// Stop accepting and exit the loop.
    Shutdown,
}

/// Sending side of a mailbox (cloneable).
#[derive(Debug)]
pub struct Mailbox<T> {
    tx: mpsc::Sender<T>,
    efd: Arc<OwnedFd>,
}

impl<T> Clone for Mailbox<T> {
    fn clone(&self) -> Self {
        Mailbox {
            tx: self.tx.clone(),
            efd: Arc::clone(&self.efd),
        }
    }
}

/// Receiving side of a mailbox.
#[derive(Debug)]
pub struct Inbox<T> {
    rx: mpsc::Receiver<T>,
    efd: Arc<OwnedFd>,
}

/// A new mailbox.
pub fn mailbox<T>() -> io::Result<(Mailbox<T>, Inbox<T>)> {
    let efd = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
    let (tx, rx) = mpsc::channel();
    Ok((
        Mailbox {
            tx,
            efd: Arc::clone(&efd),
        },
        Inbox { rx, efd },
    ))
}

impl<T> Mailbox<T> {
    /// Queues `msg` and wakes the receiver. Fails only if the receiver is gone.
    pub fn send(&self, msg: T) -> Result<(), T> {
        self.tx.send(msg).map_err(|e| e.0)?;
        // A full counter (EAGAIN) still wakes the reader; nothing to do.
        let _ = rustix::io::write(self.efd.as_fd(), &1u64.to_ne_bytes());
        Ok(())
    }
}

impl<T> Inbox<T> {
    /// The eventfd to keep a read armed on.
    pub fn wake_fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Takes every queued message.
    pub fn drain(&self) -> impl Iterator<Item = T> + '_ {
        self.rx.try_iter()
    }
}

//! Routing: the rollout key of a request, its hash, the directory name derived
//! from it, and [`ChildInfo`], the record of one live child that the control
//! plane publishes to the data plane.
//!
//! The key itself never leaves the request: everything past the data plane's
//! head parser sees only [`RouteKey`] (a SHA-256), and logs see only its
//! 16-hex [`RouteKey::label`].

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::child::socket::ChildAddr;

/// Which child a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// Requests without a key share one default child.
    Default,
    /// SHA-256 of the rollout key.
    Key([u8; 32]),
}

impl RouteKey {
    /// The route for a request whose key parameter is `key` (`None`: absent).
    pub fn from_key(key: Option<&str>) -> RouteKey {
        match key {
            None => RouteKey::Default,
            Some(k) => RouteKey::Key(Sha256::digest(k.as_bytes()).into()),
        }
    }

    /// Directory name and log label: first 16 hex of the hash, or `_default`.
    pub fn label(&self) -> String {
        match self {
            RouteKey::Default => "_default".to_string(),
            RouteKey::Key(h) => hex::encode(&h[..8]),
        }
    }
}

/// Why a child stopped being usable, as seen by requests still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Failure {
    /// Nothing known (still fine, or closed normally).
    None = 0,
    /// Killed because it did not answer within `--ready-timeout`.
    ReadyTimeout = 1,
}

/// One child as the data plane sees it. Shared (`Arc`) between the control
/// plane, which owns the process, and the workers, which connect to it.
#[derive(Debug)]
pub struct ChildInfo {
    /// Unique for the life of the instance (pools are keyed by it).
    pub id: u64,
    /// Its listening address.
    pub addr: ChildAddr,
    /// `Host` header value for requests to it (`127.0.0.1:port`, or
    /// [`crate::child::socket::UNIX_HOST`]).
    pub host: String,
    /// When it was spawned.
    pub spawned: Instant,
    /// Requests in flight and when it was last used (`--child-idle-timeout`).
    pub activity: crate::activity::Activity,
    alive: AtomicBool,
    ready: AtomicBool,
    failure: AtomicU8,
}

impl ChildInfo {
    /// A freshly spawned child.
    pub fn new(id: u64, addr: ChildAddr) -> ChildInfo {
        ChildInfo {
            id,
            host: addr.host(),
            addr,
            spawned: Instant::now(),
            alive: AtomicBool::new(true),
            ready: AtomicBool::new(false),
            failure: AtomicU8::new(Failure::None as u8),
            activity: crate::activity::Activity::default(),
        }
    }

    /// False once the control plane started tearing it down.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Marks it dead (control plane only).
    pub fn mark_dead(&self) {
        self.alive.store(false, Ordering::Release);
    }

    /// Whether it has answered a request.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records that it answered (data plane, on a first response head).
    /// Returns true the first time.
    pub fn mark_ready(&self) -> bool {
        !self.ready.swap(true, Ordering::AcqRel)
    }

    /// Why it failed, if it did.
    pub fn failure(&self) -> Failure {
        match self.failure.load(Ordering::Acquire) {
            1 => Failure::ReadyTimeout,
            _ => Failure::None,
        }
    }

    /// Records why it is being killed (before the kill, so requests that see
    /// the connection die can tell why).
    pub fn set_failure(&self, f: Failure) {
        self.failure.store(f as u8, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_sha256_prefixes() {
        assert_eq!(RouteKey::from_key(None).label(), "_default");
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(RouteKey::from_key(Some("abc")).label(), "ba7816bf8f01cfea");
        assert_ne!(RouteKey::from_key(Some("")), RouteKey::Default);
    }

    #[test]
    fn ready_is_marked_once() {
        let c = ChildInfo::new(1, ChildAddr::Tcp("127.0.0.1:1".parse().expect("addr")));
        assert!(c.mark_ready());
        assert!(!c.mark_ready());
        assert!(c.is_alive());
        c.set_failure(Failure::ReadyTimeout);
        c.mark_dead();
        assert!(!c.is_alive());
        assert_eq!(c.failure(), Failure::ReadyTimeout);
    }
}

//! Whether a child is in use, for `--child-idle-timeout`: how many requests
//! are in flight to it and when the last one started or ended, kept in
//! atomics that the workers update and the control plane reads.
//!
//! A rollout that never closes its key (its trainer crashed, a balancer sent
//! its requests elsewhere after a failover) would keep its child forever;
//! the control plane retires a child that has been idle for the timeout,
//! with the same teardown as a close. Retiring and starting a request race
//! (they run on different threads), so both go through one atomic word: a
//! worker counts a request in only while the word has no retired bit
//! ([`Activity::begin`]), and the control plane sets the bit only while the
//! count is zero ([`Activity::retire_if_idle`]). A request therefore either
//! holds the child, which is then not retired, or finds it retired and asks
//! the control plane for a new one, which queues behind the teardown.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::route::ChildInfo;

/// Set in the word once the control plane retired the child.
const RETIRED: u32 = 1 << 31;

/// Milliseconds of a coarse monotonic clock (a few ms of resolution, and
/// cheap: it is read twice per proxied request).
fn now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
}

/// Requests in flight to one child and when it was last used.
#[derive(Debug)]
pub struct Activity {
    /// Requests in flight, plus [`RETIRED`].
    word: AtomicU32,
    /// [`now_ms`] when a request last started or ended (or the child was
    /// spawned).
    last_used: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            word: AtomicU32::new(0),
            last_used: AtomicU64::new(now_ms()),
        }
    }
}

impl Activity {
    /// Counts a request in, unless the child was retired.
    fn begin(&self) -> bool {
        let counted = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & RETIRED == 0).then_some(w + 1)
            })
            .is_ok();
        if counted {
            self.last_used.store(now_ms(), Ordering::Relaxed);
        }
        counted
    }

    /// Counts a request out.
    fn end(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
        self.word.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests in flight.
    #[cfg(test)]
    pub fn in_flight(&self) -> u32 {
        self.word.load(Ordering::Acquire) & !RETIRED
    }

    /// Retires the child if no request is in flight and none started or
    /// ended for `idle`; returns how long it was idle. After this, every
    /// [`begin`](ChildInfo::begin) fails.
    pub fn retire_if_idle(&self, idle: Duration) -> Option<Duration> {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let since = now_ms().saturating_sub(self.last_used.load(Ordering::Relaxed));
        if since < idle_ms {
            return None;
        }
        self.word
            .compare_exchange(0, RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Duration::from_millis(since))
    }
}

/// One request's hold on its child: counted in by [`ChildInfo::begin`],
/// counted out when dropped (the exchange ended, or its connection closed).
#[derive(Debug)]
pub struct Busy(Arc<ChildInfo>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.end();
    }
}

impl ChildInfo {
    /// Holds the child for one request; `None` if the control plane retired
    /// it as idle (the request then asks for a new child).
    pub fn begin(self: &Arc<Self>) -> Option<Busy> {
        self.activity.begin().then(|| Busy(Arc::clone(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child::socket::ChildAddr;

    fn child() -> Arc<ChildInfo> {
        Arc::new(ChildInfo::new(
            1,
            ChildAddr::Tcp("127.0.0.1:1".parse().expect("addr")),
        ))
    }

    #[test]
    fn a_child_with_a_request_in_flight_is_never_retired() {
        let c = child();
        let busy = c.begin().expect("not retired");
        assert_eq!(c.activity.in_flight(), 1);
        assert_eq!(c.activity.retire_if_idle(Duration::ZERO), None);
        drop(busy);
        assert_eq!(c.activity.in_flight(), 0);
        assert!(c.activity.retire_if_idle(Duration::ZERO).is_some());
        assert!(c.begin().is_none(), "a retired child takes no request");
        assert_eq!(c.activity.in_flight(), 0);
        assert_eq!(
            c.activity.retire_if_idle(Duration::ZERO),
            None,
            "retired once"
        );
    }

    #[test]
    fn a_recently_used_child_is_not_retired() {
        let c = child();
        drop(c.begin());
        assert_eq!(c.activity.retire_if_idle(Duration::from_secs(60)), None);
        assert!(c.begin().is_some());
    }

    #[test]
    fn begin_and_retire_race_to_one_winner() {
        for _ in 0..200 {
            let c = child();
            let worker = {
                let c = Arc::clone(&c);
                std::thread::spawn(move || c.begin().map(std::mem::forget).is_some())
            };
            let retired = c.activity.retire_if_idle(Duration::ZERO).is_some();
            let counted = worker.join().expect("thread");
            // Never both: a counted request would run on a retired child.
            assert!(!(retired && counted), "retired with a request counted in");
            assert!(retired || counted);
        }
    }
}

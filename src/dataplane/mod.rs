//! The data plane: one thread per core, each running a [`Worker`] with its own
//! io_uring, its own `SO_REUSEPORT` listener (multishot accept), its own
//! provided-buffer ring (multishot receive), its own client connections and
//! its own pools of idle connections to children.
//!
//! Nothing here touches processes or directories, and nothing takes a lock:
//! children come from the control plane by message ([`crate::msg`]) and are
//! then cached per worker as `Arc<ChildInfo>` whose liveness is an atomic.
//!
//! Bytes are forwarded zero-copy: what a receive put in a provided buffer is
//! sent on from that same buffer (as a `writev` segment); only request and
//! response heads, which are rewritten, are copied.

mod conn;
mod freelist;
mod guard;
mod worker;

pub use guard::ClientLimits;
pub use worker::{Worker, WorkerSetup};

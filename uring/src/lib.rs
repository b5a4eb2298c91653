//! The ring layer of ringmux: a thin, owned-buffer layer over the `io-uring` crate.
//!
//! It knows nothing of HTTP, MCP or rollouts. Its one promise is memory safety
//! for in-flight operations: every resource the kernel may touch (buffers,
//! iovec arrays, socket addresses, timespecs, paths, `siginfo`) is owned by the
//! [`Ring`]'s table of in-flight ops from submission until the op's final
//! completion, and handed back to the caller only then. A caller that loses
//! interest in an op (a closed connection, a cancelled timer) cannot free
//! memory the kernel still writes to: the resources stay parked in the table
//! until the kernel is done (the monoio model).
//!
//! * [`ring`] — ring setup, submission, completion reaping, the in-flight table.
//! * [`op`] — the operations this crate can submit and what each one owns.
//! * [`bufring`] — provided buffer rings (`IORING_REGISTER_PBUF_RING`) and the
//!   [`BufRef`] guard that returns a buffer to its ring on drop.

pub mod bufring;
pub mod op;
pub mod ring;

pub use bufring::{BufRef, BufRing};
pub use op::{Op, Returned, Seg, SockAddr};
pub use ring::{Completion, OpId, Ring, RingConfig};

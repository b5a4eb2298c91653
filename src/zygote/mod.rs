//! The fork-server ("zygote") protocol, version 1, shared by ringmux's side
//! ([`crate::control`]) and the built-in demo's fork server ([`demo`]).
//!
//! ringmux starts the fork server once with one end of an `AF_UNIX`
//! `SOCK_SEQPACKET` socketpair on fd 3 (`RINGMUX_FORK_SERVER_FD=3`,
//! `RINGMUX_FORK_PROTOCOL=1`, `RINGMUX_PID=<ringmux pid>`). Every message is
//! one datagram holding one UTF-8 JSON object of at most [`MAX_MSG`] bytes,
//! with a `"v": 1` field and a `"type"`; descriptors travel with it as
//! `SCM_RIGHTS`. The full text (order, fds, errors) is in the README, section
//! "Fork-server protocol"; [`proto`] is its executable form.
//!
//! A spawned child must be a child of ringmux itself (`clone3` with
//! `CLONE_PARENT | CLONE_PIDFD`), so that ringmux reaps it through the pidfd
//! on its control ring, with its exit status, and it is never a zombie of the
//! fork server.

pub mod channel;
pub mod demo;
pub mod proto;

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// Largest message (bytes of JSON) either side sends.
pub const MAX_MSG: usize = 64 * 1024;
/// The fd number the fork server finds its channel on.
pub const CHANNEL_FD: i32 = 3;
/// Environment variable naming that fd.
pub const ENV_FD: &str = "RINGMUX_FORK_SERVER_FD";
/// Environment variable carrying the protocol version.
pub const ENV_PROTOCOL: &str = "RINGMUX_FORK_PROTOCOL";
/// Environment variable carrying ringmux's pid (children check their parent).
pub const ENV_RINGMUX_PID: &str = "RINGMUX_PID";

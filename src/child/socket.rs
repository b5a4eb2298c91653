//! The child's listening socket: bound to 127.0.0.1 on an ephemeral port and
//! listening before the child exists, so there is no port race and the first
//! request can connect (into the backlog) the moment the child is spawned. The
//! child picks it up at its own pace and the request is served as soon as the
//! child accepts: no readiness polling.
//!
//! `TCP_NODELAY` is set on the listening socket; accepted sockets inherit it,
//! which spares keep-alive requests the 40 ms delayed-ACK stall seen with
//! `uvicorn --fd 3` (DESIGN §3).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of the child's socket: how many connections may wait for the
/// child's first `accept`.
pub const CHILD_BACKLOG: i32 = 1024;

/// A listening socket for a new child, and its address.
pub fn child_listener() -> io::Result<(TcpListener, SocketAddr)> {
    let sock = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    sock.set_tcp_nodelay(true)?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
    sock.listen(CHILD_BACKLOG)?;
    let listener: TcpListener = sock.into();
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

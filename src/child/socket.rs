//! The child's listening socket and its address: created and listening
//! before the child exists, so there is no address race and the first
//! request can connect (into the backlog) the moment the child is spawned.
//! The child picks it up at its own pace and the request is served as soon
//! as the child accepts: no readiness polling.
//!
//! Two kinds (`--child-socket`):
//! - `unix`: an abstract `AF_UNIX` socket named `<instance dir name>/<child
//!   id>` (`@ringmux-<pid>-<nonce>/<id>`). ringmux owns both ends of this hop, so it need not cross the TCP
//!   stack; abstract names vanish with the last descriptor, so nothing is
//!   left on disk. Unique per instance and child id, so a name is never
//!   reused for another rollout while a worker may still connect to it.
//! - `tcp`: 127.0.0.1 on an ephemeral port. `TCP_NODELAY` is set on the
//!   listening socket; accepted sockets inherit it, which spares keep-alive
//!   requests the 40 ms delayed-ACK stall seen with `uvicorn --fd 3`.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Backlog of the child's socket: how many connections may wait for the
/// child's first `accept`.
pub const CHILD_BACKLOG: i32 = 1024;

/// `Host` that requests to a Unix-socket child carry. It has the
/// `name:port` form that loopback-only Host checks accept (the MCP SDK's
/// default DNS-rebinding protection allows `localhost:*` but not a bare
/// `localhost`); there is no port behind it.
pub const UNIX_HOST: &str = "localhost:0";

/// `--child-socket` when not given: TCP. Measured against Unix sockets
/// (benches/RESULTS.md, Part 2b): level on small requests, but a stream of
/// small writes (the SSE row, 1,000 events) takes 1.7x as long over a Unix
/// socket, which wakes the reader once per write where loopback TCP
/// batches them.
pub const DEFAULT_CHILD_SOCKET: ChildSocket = ChildSocket::Tcp;

/// Which kind of socket children listen on (`--child-socket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChildSocket {
    /// An abstract Unix-domain socket.
    Unix,
    /// TCP on 127.0.0.1, an ephemeral port.
    Tcp,
}

/// Where a child listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChildAddr {
    /// TCP on loopback.
    Tcp(SocketAddr),
    /// An abstract Unix socket: its name, without the leading NUL.
    Unix(Box<str>),
}

impl ChildAddr {
    /// The `Host` header value for requests to this child.
    pub fn host(&self) -> String {
        match self {
            ChildAddr::Tcp(a) => a.to_string(),
            ChildAddr::Unix(_) => UNIX_HOST.to_string(),
        }
    }

    /// The address to `connect` to.
    pub fn sock_addr(&self) -> io::Result<SockAddr> {
        match self {
            ChildAddr::Tcp(a) => Ok(SockAddr::from(*a)),
            ChildAddr::Unix(name) => SockAddr::unix(format!("\0{name}")),
        }
    }

    /// A new non-blocking, close-on-exec socket that can connect to it
    /// (with `TCP_NODELAY` for TCP).
    pub fn client_socket(&self) -> io::Result<OwnedFd> {
        let ty = Type::STREAM.cloexec().nonblocking();
        let sock = match self {
            ChildAddr::Tcp(a) => {
                let s = Socket::new(Domain::for_address(*a), ty, Some(Protocol::TCP))?;
                s.set_tcp_nodelay(true)?;
                s
            }
            ChildAddr::Unix(_) => Socket::new(Domain::UNIX, ty, None)?,
        };
        Ok(sock.into())
    }
}

/// What the child finds in `RINGMUX_CHILD_ADDR`: `127.0.0.1:PORT`, or
/// `@NAME` for an abstract Unix socket (the notation of `ss` and systemd).
impl fmt::Display for ChildAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildAddr::Tcp(a) => write!(f, "{a}"),
            ChildAddr::Unix(name) => write!(f, "@{name}"),
        }
    }
}

/// A listening socket for a new child, and its address. `name` names a Unix
/// socket (unique for the instance's life); TCP sockets take an ephemeral
/// port.
pub fn child_listener(kind: ChildSocket, name: &str) -> io::Result<(OwnedFd, ChildAddr)> {
    match kind {
        ChildSocket::Tcp => {
            let sock = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
            sock.set_tcp_nodelay(true)?;
            sock.bind(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
            sock.listen(CHILD_BACKLOG)?;
            let addr = sock.local_addr()?.as_socket().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TCP socket without an IP address",
                )
            })?;
            Ok((sock.into(), ChildAddr::Tcp(addr)))
        }
        ChildSocket::Unix => {
            let sock = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None)?;
            sock.bind(&SockAddr::unix(format!("\0{name}"))?)?;
            sock.listen(CHILD_BACKLOG)?;
            Ok((sock.into(), ChildAddr::Unix(name.into())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn both_kinds_accept_a_connection_before_anyone_accepts() {
        for (kind, name) in [
            (ChildSocket::Tcp, ""),
            (ChildSocket::Unix, "ringmux-test/socket/1"),
        ] {
            let (l, addr) = child_listener(kind, name).expect("listener");
            let c = Socket::from(addr.client_socket().expect("client"));
            c.set_nonblocking(false).expect("blocking");
            c.connect(&addr.sock_addr().expect("addr"))
                .expect("connect into the backlog");
            let l = Socket::from(l);
            let (mut s, _) = l.accept().expect("accept");
            (&c).write_all(b"hi").expect("write");
            let mut got = [0; 2];
            s.read_exact(&mut got).expect("read");
            assert_eq!(&got, b"hi");
            match kind {
                ChildSocket::Tcp => assert!(addr.to_string().starts_with("127.0.0.1:")),
                ChildSocket::Unix => {
                    assert_eq!(addr.to_string(), "@ringmux-test/socket/1");
                    assert_eq!(addr.host(), UNIX_HOST);
                }
            }
        }
    }

    #[test]
    fn a_unix_name_in_use_is_refused() {
        let _held = child_listener(ChildSocket::Unix, "ringmux-test/socket/dup").expect("first");
        let e = child_listener(ChildSocket::Unix, "ringmux-test/socket/dup").expect_err("second");
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
    }
}

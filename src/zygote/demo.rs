//! The built-in demo's fork server (`ringmux demo-child --fork-server`, what
//! `ringmux serve --demo --fork` runs): it builds its "warm state" once (its
//! scratch slot seeded with `warm:<its pid>`, and `--warm-mib` MiB of touched
//! memory standing in for a tool server's expensive setup), then forks one
//! copy-on-write child per spawn request with `clone3(CLONE_PARENT)`. The
//! child runs the demo's per-rollout hook with the first request's query
//! (`demo_setup=fail` makes it fail, for tests) and serves the demo MCP
//! server on the socket it was handed.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;

use crate::child::sys::{self, Forked};
use crate::zygote::proto::{FromChild, FromServer, Spawn};
use crate::zygote::{channel, ENV_FD, ENV_PROTOCOL, ENV_RINGMUX_PID, PROTOCOL_VERSION};

/// What a forked demo child knows of its origin.
#[derive(Debug)]
pub struct Rollout {
    /// The fork server it was forked from.
    pub fork_server_pid: u32,
    /// The query string its per-rollout hook got.
    pub setup_query: String,
}

static ROLLOUT: OnceLock<Rollout> = OnceLock::new();
/// The warm state's stand-in for a large import-time table.
static WARM: OnceLock<Vec<u8>> = OnceLock::new();

/// The origin of this process if it is a forked demo child.
pub fn rollout() -> Option<&'static Rollout> {
    ROLLOUT.get()
}

fn env_number(name: &str) -> io::Result<u64> {
    let v = std::env::var(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} is not set: run this through `ringmux serve --demo --fork`"),
        )
    })?;
    v.parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{name}={v:?}")))
}

/// Runs the fork server until ringmux closes the channel.
pub fn run(warm_mib: usize) -> io::Result<()> {
    let version = env_number(ENV_PROTOCOL)?;
    if version != PROTOCOL_VERSION {
        return Err(io::Error::other(format!(
            "ringmux speaks fork-server protocol {version}, this demo {PROTOCOL_VERSION}"
        )));
    }
    let fd = i32::try_from(env_number(ENV_FD)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "fd out of range"))?;
    let ringmux_pid = u32::try_from(env_number(ENV_RINGMUX_PID)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    let chan = sys::inherited_socket(fd)?;
    let me = std::process::id();
    // The warm state: built once, shared copy-on-write by every child.
    let mut table = vec![0u8; warm_mib << 20];
    for (i, page) in table.chunks_mut(4096).enumerate() {
        page[0] = i as u8;
    }
    let _ = WARM.set(table);
    crate::demo::seed_scratch(format!("warm:{me}"));
    send(&chan, &FromServer::Ready { pid: me }.encode(), &[])?;
    loop {
        let Some(m) = channel::recv_blocking(&chan)? else {
            // ringmux closed the channel: it is gone or stopping us.
            return Ok(());
        };
        let req = match Spawn::parse(&m.bytes) {
            Ok(r) => r,
            Err(e) => {
                let fatal = FromServer::Fatal {
                    error: format!("demo fork server: bad request: {e}"),
                };
                let _ = send(&chan, &fatal.encode(), &[]);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            }
        };
        let mut fds = m.fds;
        // A fourth descriptor, when ringmux uses cgroups: the child's cgroup.
        let cgroup = (fds.len() == 4).then(|| fds.pop()).flatten();
        let Ok::<[OwnedFd; 3], _>([listener, dir, status]) = fds.try_into() else {
            let err = FromServer::Error {
                id: req.id,
                error: "a spawn request needs 3 or 4 descriptors (listener, dir, status[, cgroup])"
                    .into(),
            };
            send(&chan, &err.encode(), &[])?;
            continue;
        };
        let t0 = std::time::Instant::now();
        let forked = sys::fork_into_parent(cgroup.as_ref().map(|c| c.as_fd()));
        drop(cgroup);
        match forked {
            Ok(Forked::Child) => {
                drop(chan);
                child(req, [listener, dir, status], me, ringmux_pid);
            }
            Ok(Forked::Parent { pid, pidfd }) => {
                let ok = FromServer::Spawned {
                    id: req.id,
                    pid,
                    fork_us: Some(t0.elapsed().as_micros() as u64),
                };
                send(&chan, &ok.encode(), &[pidfd.as_fd()])?;
            }
            Err(e) => {
                let err = FromServer::Error {
                    id: req.id,
                    error: format!("fork failed: {e}"),
                };
                send(&chan, &err.encode(), &[])?;
            }
        }
    }
}

fn send(chan: &OwnedFd, msg: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    // The channel is blocking for recv; sends are small and never wait long.
    channel::send(chan.as_fd(), msg, fds)
}

/// The forked child: becomes the rollout's server and never returns.
fn child(
    req: Spawn,
    [listener, dir, status]: [OwnedFd; 3],
    fork_server_pid: u32,
    ringmux_pid: u32,
) -> ! {
    let setup = (|| -> Result<(), String> {
        sys::die_with_parent(ringmux_pid).map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
        sys::own_process_group().map_err(|e| format!("setpgid: {e}"))?;
        rustix::process::fchdir(&dir).map_err(|e| format!("fchdir {}: {e}", req.dir))?;
        drop(dir);
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("RINGMUX_CHILD_ADDR", &req.addr);
        std::env::remove_var(ENV_FD);
        std::env::remove_var(ENV_PROTOCOL);
        // The demo's per-rollout hook.
        if crate::http::query::query_param(&req.query, "demo_setup").as_deref() == Some("fail") {
            return Err("demo setup_task failed as asked (demo_setup=fail)".into());
        }
        Ok(())
    })();
    let _ = ROLLOUT.set(Rollout {
        fork_server_pid,
        setup_query: req.query.clone(),
    });
    if let Err(error) = setup {
        eprintln!("ringmux demo-child: per-rollout setup failed: {error}");
        let _ = channel::send(
            status.as_fd(),
            &FromChild::SetupFailed { error }.encode(),
            &[],
        );
        std::process::exit(3);
    }
    let _ = channel::send(status.as_fd(), &FromChild::SetupDone.encode(), &[]);
    drop(status);
    match crate::demo::serve(socket2::Socket::from(listener)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("ringmux demo-child: {e}");
            std::process::exit(1)
        }
    }
}

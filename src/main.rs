//! ringmux: the daemon's entry point (the daemon itself is the library,
//! `src/lib.rs`). Parses the command line and hands off to
//! the server (or, for the hidden `demo-child` subcommand, to the built-in demo
//! MCP server that `serve --demo` spawns as its child). Exit codes: 0 after a
//! clean shutdown, 2 for invalid flags, 1 for a failure to start.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use ringmux::cli::{Cli, Command};

/// Counts heap allocations per thread (the worker allocation metric).
#[global_allocator]
static ALLOC: ringmux::alloc_count::Counting = ringmux::alloc_count::Counting;
use ringmux::{child, demo, server, zygote};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DemoChild(args) if args.fork_server => match zygote::demo::run(args.warm_mib) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringmux demo-child --fork-server: {e}");
                ExitCode::FAILURE
            }
        },
        Command::DemoChild(args) => {
            let listeners = match demo_listeners(&args) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ringmux demo-child: {e}");
                    return ExitCode::from(2);
                }
            };
            match serve_all(listeners) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringmux demo-child: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve(args) => {
            init_logging();
            let cfg = match (*args).into_config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ringmux: {e}");
                    return ExitCode::from(2);
                }
            };
            match server::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "ringmux failed to start");
                    eprintln!("ringmux: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RINGMUX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// The demo child's listeners: its own (`--listen`, `--listen-unix`, or
/// both), else the one its parent passed on fd 3.
fn demo_listeners(args: &ringmux::cli::DemoChildArgs) -> std::io::Result<Vec<socket2::Socket>> {
    let mut out = Vec::new();
    if let Some(addr) = args.listen {
        out.push(bind_demo_listener(addr)?);
    }
    if let Some(path) = &args.listen_unix {
        out.push(bind_demo_unix(path)?);
    }
    if out.is_empty() {
        out.push(child::sys::inherited_listener()?);
    }
    Ok(out)
}

/// Serves every listener, one accept thread each but the last (served on
/// this thread); returns the first fatal accept error.
fn serve_all(mut listeners: Vec<socket2::Socket>) -> std::io::Result<()> {
    let Some(last) = listeners.pop() else {
        return Ok(());
    };
    for l in listeners {
        std::thread::Builder::new()
            .name("demo-accept".into())
            .spawn(move || {
                if let Err(e) = demo::serve(l) {
                    eprintln!("ringmux demo-child: {e}");
                    std::process::exit(1);
                }
            })?;
    }
    demo::serve(last)
}

/// A standalone demo child's Unix listener (`demo-child --listen-unix`).
/// A stale socket file at `path` is removed first; anything else there is
/// an error (never deleted).
fn bind_demo_unix(path: &std::path::Path) -> std::io::Result<socket2::Socket> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "--listen-unix {}: exists and is not a socket",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("--listen-unix {}: {e}", path.display()))
    })?;
    println!("demo-child: listening on unix:{}", path.display());
    Ok(listener.into())
}

/// A standalone demo child's own listener (`demo-child --listen`), with
/// TCP_NODELAY like the sockets `serve` hands its children; prints the bound
/// address so scripts can use port 0.
fn bind_demo_listener(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let listener = std::net::TcpListener::bind(addr)?;
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    println!("demo-child: listening on http://{}", listener.local_addr()?);
    Ok(listener.into())
}

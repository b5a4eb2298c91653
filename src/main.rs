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
            let listener = match args.listen {
                None => child::sys::inherited_listener(),
                Some(addr) => bind_demo_listener(addr),
            };
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ringmux demo-child: {e}");
                    return ExitCode::from(2);
                }
            };
            match demo::serve(listener) {
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

/// A standalone demo child's own listener (`demo-child --listen`), with
/// TCP_NODELAY like the sockets `serve` hands its children; prints the bound
/// address so scripts can use port 0.
fn bind_demo_listener(addr: std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let listener = std::net::TcpListener::bind(addr)?;
    socket2::SockRef::from(&listener).set_tcp_nodelay(true)?;
    println!("demo-child: listening on http://{}", listener.local_addr()?);
    Ok(listener.into())
}

//! ringmux: the daemon's entry point. Parses the command line and hands off to
//! the server (or, for the hidden `demo-child` subcommand, to the built-in demo
//! MCP server that `serve --demo` spawns as its child).
#![deny(unsafe_code)]

#[allow(dead_code)]
mod demo;
#[allow(dead_code)]
mod http;

fn main() {
    println!("ringmux: under construction");
}

//! The ringmux daemon as a library: `src/main.rs` is only its command line.
//! The HTTP codec and the Origin policy are the `ringmux-http` crate
//! (`http/`), re-exported here as `http` and `origin`. Modules are
//! private unless the binary or the fuzzers need them.
//!
//! `unsafe` is denied here; the few syscall wrappers that need it carry a
//! narrow, explained `#![allow(unsafe_code)]` (`child::sys`).
#![deny(unsafe_code)]

mod activity;
mod admin;
pub mod alloc_count;
mod cgroup;
pub mod child;
pub mod cli;
mod config;
mod control;
mod dataplane;
pub mod demo;
mod error;
mod lifecycle;
pub use ringmux_http as http;
mod metrics;
mod msg;
pub use ringmux_http::origin;
mod route;
pub mod server;
mod tag;
pub mod zygote;

//! Making children: the spawner seam, the child's listening socket and its
//! private directory.
//!
//! A [`Spawner`] turns (directory, listening socket) into a running process
//! and its pidfd. [`ExecSpawner`] execs a command per key; a warm fork server
//! (zygote) can implement the same trait later without touching the control
//! plane.

pub mod socket;
pub mod sys;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// A started child.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (for logs; everything else goes through the pidfd).
    pub pid: u32,
    /// A pidfd for signalling and exit detection.
    pub pidfd: OwnedFd,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// fork/exec failed (command not found, permission denied, ...).
    #[error("starting the child command failed: {0}")]
    Exec(std::io::Error),
    /// The process started but no pidfd could be had for it.
    #[error("pidfd_open failed: {0}")]
    Pidfd(std::io::Error),
}

/// Creates one child process per rollout.
pub trait Spawner: Send {
    /// Starts a child in `dir` serving on `listener` (bound to `addr`), which
    /// becomes the child's fd 3. Called on the control thread only.
    fn spawn(
        &mut self,
        dir: &Path,
        listener: &TcpListener,
        addr: SocketAddr,
    ) -> Result<Spawned, SpawnError>;
}

/// Execs `argv` for every child.
#[derive(Debug)]
pub struct ExecSpawner {
    argv: Vec<OsString>,
}

impl ExecSpawner {
    /// A spawner for `argv` (non-empty).
    pub fn new(argv: Vec<OsString>) -> ExecSpawner {
        ExecSpawner { argv }
    }
}

impl Spawner for ExecSpawner {
    fn spawn(
        &mut self,
        dir: &Path,
        listener: &TcpListener,
        addr: SocketAddr,
    ) -> Result<Spawned, SpawnError> {
        let Some((prog, args)) = self.argv.split_first() else {
            return Err(SpawnError::Exec(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command",
            )));
        };
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .env("LISTEN_FDS", "1")
            .env("RINGMUX_CHILD_ADDR", addr.to_string())
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES")
            // Its own process group: a terminal's Ctrl-C reaches ringmux, which
            // then tears children down in order; and the group can be killed whole.
            .process_group(0);
        sys::prepare_child(&mut cmd, listener);
        let mut child = cmd.spawn().map_err(SpawnError::Exec)?;
        let pid = child.id();
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                // Without a pidfd it cannot be watched: do not leave it running.
                let _ = child.kill();
                let _ = child.wait();
                return Err(SpawnError::Pidfd(e));
            }
        };
        // `child` is dropped without waiting: the std handle never reaps, the
        // control ring does (waitid on the pidfd).
        drop(child);
        Ok(Spawned { pid, pidfd })
    }
}

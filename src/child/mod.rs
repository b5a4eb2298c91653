//! Making children: the spawner seam, the child's listening socket and its
//! private directory.
//!
//! A [`Spawner`] turns (directory, listening socket) into a running process
//! and its pidfd at once: [`ExecSpawner`] execs a command per key. The warm
//! fork server answers later, over its channel, so the control plane drives
//! it itself (`control::forkserver`); it starts the fork server process with
//! [`start_process`], the same way exec children start.

pub mod socket;
pub mod sys;

use std::ffi::OsString;
use std::os::fd::{BorrowedFd, OwnedFd};
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
    /// Starts a child in `dir` serving on `listener` (a listening socket
    /// bound to `addr`), which becomes the child's fd 3, inside the cgroup whose `cgroup.procs` is
    /// `cgroup` (if any). Called on the control thread only.
    fn spawn(
        &mut self,
        dir: &Path,
        listener: BorrowedFd<'_>,
        addr: &socket::ChildAddr,
        cgroup: Option<BorrowedFd<'_>>,
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
        listener: BorrowedFd<'_>,
        addr: &socket::ChildAddr,
        cgroup: Option<BorrowedFd<'_>>,
    ) -> Result<Spawned, SpawnError> {
        start_process(
            &self.argv,
            dir,
            listener,
            &[
                ("LISTEN_FDS", "1".to_string()),
                ("RINGMUX_CHILD_ADDR", addr.to_string()),
            ],
            cgroup,
        )
    }
}

/// Starts `argv` in `dir` with `fd3` as its fd 3 and `env` added: stdin
/// `/dev/null`, its own process group, every other ringmux fd closed, killed
/// when ringmux dies, inside the cgroup of `cgroup` (its `cgroup.procs`) if
/// given; returns its pid and pidfd (it is never waited for here: the
/// control ring reaps it).
pub fn start_process(
    argv: &[OsString],
    dir: &Path,
    fd3: BorrowedFd<'_>,
    env: &[(&str, String)],
    cgroup: Option<BorrowedFd<'_>>,
) -> Result<Spawned, SpawnError> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(SpawnError::Exec(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        )));
    };
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        // Its own process group: a terminal's Ctrl-C reaches ringmux, which
        // then tears children down in order; and the group can be killed whole.
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    sys::prepare_child(&mut cmd, fd3, cgroup);
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

//! The few raw syscalls the daemon crate needs outside the ring layer, each in
//! one documented wrapper: what the child does between fork and exec, opening a
//! pidfd, adopting an inherited listening socket (fd 3), and the fork server's
//! `clone3(CLONE_PARENT | CLONE_PIDFD)`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The fd number children find their listening socket on.
pub const LISTEN_FD: i32 = 3;

/// Arranges for the child, between fork and exec, to: get `fd3` (a child's
/// listening socket, or a fork server's channel) as fd 3 (without
/// `FD_CLOEXEC`), mark every other fd above 3 close-on-exec, and die with
/// `SIGKILL` when the spawning thread (the control thread, which lives as long
/// as ringmux) dies. With `cgroup_procs` (a cgroup's `cgroup.procs`, open
/// for writing), it first enters that cgroup, so nothing it runs is ever
/// outside it.
pub fn prepare_child(cmd: &mut Command, fd3: BorrowedFd<'_>, cgroup_procs: Option<BorrowedFd<'_>>) {
    let fd = fd3.as_raw_fd();
    let cg = cgroup_procs.map_or(-1, |c| c.as_raw_fd());
    // SAFETY: getppid is always safe; we read it in the parent so the child can
    // detect a parent that died before PR_SET_PDEATHSIG took effect.
    let parent = unsafe { libc::getpid() };
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe syscalls below: we are in a forked copy of a
        // multi-threaded process.
        // SAFETY: plain syscalls on integer arguments and a static buffer; no
        // memory is shared.
        unsafe {
            if cg >= 0 && libc::write(cg, b"0".as_ptr().cast(), 1) != 1 {
                // Never run a child outside its cgroup.
                return Err(io::Error::last_os_error());
            }
            if fd == LISTEN_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Everything above fd 3 (ringmux's rings, sockets, eventfds, and any
            // fd ringmux itself inherited without CLOEXEC) stays out of the child.
            // CLOEXEC rather than close: std's exec-error pipe must keep working.
            if libc::syscall(
                libc::SYS_close_range,
                (LISTEN_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            ) < 0
            {
                // Never exec with ringmux's fds open: fail the spawn instead.
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // ringmux died between fork and prctl.
                libc::_exit(1);
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (write, fcntl,
    // dup2, close_range, prctl, getppid, _exit) and touches no shared memory
    // or locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// `pidfd_open(pid, 0)` (CLOEXEC by default).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Takes the listening socket a parent handed over as fd 3 (`LISTEN_FDS=1`).
pub fn inherited_listener() -> io::Result<socket2::Socket> {
    if std::env::var("LISTEN_FDS").ok().as_deref() != Some("1") {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "LISTEN_FDS=1 not set: run this through `ringmux serve --demo`",
        ));
    }
    let fd = inherited_socket(LISTEN_FD)?;
    Ok(socket2::Socket::from(fd))
}

/// Whether `pidfd` is a child of this process that has not been reaped
/// (`waitid(P_PIDFD, WEXITED | WNOHANG | WNOWAIT)`: nothing is reaped here).
/// A fork server must hand over children of ringmux, never its own.
pub fn pidfd_is_our_child(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    match waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    ) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::CHILD) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reaps `pid`, a child of ours that has exited (a zombie kept by the
/// ring's `WNOWAIT` wait until what was left of its process group was
/// killed). Never blocks: a pid that is not (or no longer) ours is ignored.
pub fn reap(pid: i32) {
    use rustix::process::{waitid, Pid, WaitId, WaitIdOptions};
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
    }
}

/// Whether the process of `pidfd` has exited (a pidfd polls readable then).
pub fn pidfd_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &pidfd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
}

/// Which side of [`fork_into_parent`] we are on.
#[derive(Debug)]
pub enum Forked {
    /// The new process.
    Child,
    /// The caller; the new process is `pid`, a child of the caller's parent.
    Parent {
        /// Its pid.
        pid: u32,
        /// Its pidfd (waitable only by the caller's parent).
        pidfd: OwnedFd,
    },
}

/// Number of threads of this process, from `/proc/self/status`.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Forks this process so that the copy is a child of *our parent* (ringmux),
/// with a pidfd for it: `clone3(CLONE_PARENT | CLONE_PIDFD)`. Our parent can
/// then reap it with `waitid(P_PIDFD)` and its exit status; we never can, so
/// it is never our zombie. Refuses unless this process is single-threaded:
/// a copy of a multi-threaded process may inherit locks held by threads that
/// do not exist in it.
///
/// With `cgroup` (a cgroup v2 directory), the copy is born in that cgroup
/// (`CLONE_INTO_CGROUP`), so it never runs outside it.
pub fn fork_into_parent(cgroup: Option<BorrowedFd<'_>>) -> io::Result<Forked> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the fork server runs {threads} threads; it forks only when single-threaded"
        )));
    }
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: (libc::CLONE_PARENT | libc::CLONE_PIDFD) as u64,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        ..CloneArgs::default()
    };
    if let Some(cg) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = cg.as_raw_fd() as u64;
    }
    // SAFETY: clone3 without CLONE_VM is fork: the child gets a copy of the
    // address space, so no memory is shared. The process is single-threaded
    // (checked above, and only this thread could start another), so no lock
    // can be held by a thread missing in the child. `args` and `pidfd` are
    // valid for the call; the kernel writes the pidfd before returning.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match r {
        0 => Ok(Forked::Child),
        r if r < 0 => Err(io::Error::last_os_error()),
        pid => {
            // SAFETY: with CLONE_PIDFD the kernel stored a new, open fd that
            // nothing else owns in `pidfd`.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            Ok(Forked::Parent {
                pid: pid as u32,
                pidfd,
            })
        }
    }
}

/// `CLONE_INTO_CGROUP` (Linux 5.7; not in every libc crate version).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (the clone3 ABI, version 0 fields up to `tls` plus the
/// version 1/2 fields, zero = unused).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// In a freshly forked child: die with SIGKILL when ringmux (the parent
/// thread that started the fork server) dies, and exit at once if it already
/// has (our parent is then no longer `ringmux_pid`).
pub fn die_with_parent(ringmux_pid: u32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if ppid != ringmux_pid {
        std::process::exit(1);
    }
    Ok(())
}

/// Our own process group (so ringmux can kill the child's group whole).
pub fn own_process_group() -> io::Result<()> {
    Ok(rustix::process::setpgid(None, None)?)
}

/// Borrows an inherited descriptor number after checking it is an open
/// socket; takes ownership (and sets CLOEXEC).
pub fn inherited_socket(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative fd"));
    }
    // SAFETY: borrowing `fd` only for this fstat; it is not closed here.
    let st = rustix::fs::fstat(unsafe { BorrowedFd::borrow_raw(fd) })?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is not a socket"),
        ));
    }
    // SAFETY: `fd` is open (fstat succeeded), is a socket, and nothing else in
    // this process owns it (it was inherited and is taken exactly once: the
    // callers run once, at start-up).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_process_we_did_not_start_is_not_our_child() {
        let me = pidfd_open(std::process::id()).expect("pidfd of self");
        assert!(!pidfd_is_our_child(me.as_fd()).expect("waitid"));
        let mut child = Command::new("sleep").arg("5").spawn().expect("sleep");
        let fd = pidfd_open(child.id()).expect("pidfd");
        assert!(pidfd_is_our_child(fd.as_fd()).expect("waitid"));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn fork_into_parent_refuses_a_multithreaded_process() {
        // The test harness runs tests on threads: this process has several.
        if thread_count().expect("threads") > 1 {
            let e = fork_into_parent(None).expect_err("must refuse");
            assert!(e.to_string().contains("single-threaded"), "{e}");
        }
    }
}

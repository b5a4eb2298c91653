//! The few raw syscalls the daemon crate needs outside the ring layer, each in
//! one documented wrapper: what the child does between fork and exec, opening a
//! pidfd, and adopting an inherited listening socket (fd 3).
#![allow(unsafe_code)]

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The fd number children find their listening socket on.
pub const LISTEN_FD: i32 = 3;

/// Arranges for the child, between fork and exec, to: get `listener` as fd 3
/// (without `FD_CLOEXEC`), mark every other fd above 3 close-on-exec, and die
/// with `SIGKILL` when the spawning thread (the control thread, which lives as
/// long as ringmux) dies.
pub fn prepare_child(cmd: &mut Command, listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    // SAFETY: getppid is always safe; we read it in the parent so the child can
    // detect a parent that died before PR_SET_PDEATHSIG took effect.
    let parent = unsafe { libc::getpid() };
    let hook = move || -> io::Result<()> {
        // Only async-signal-safe syscalls below: we are in a forked copy of a
        // multi-threaded process.
        // SAFETY: plain syscalls on integer arguments; no memory is shared.
        unsafe {
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
            libc::syscall(
                libc::SYS_close_range,
                (LISTEN_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
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
    // SAFETY: the hook only makes async-signal-safe syscalls (fcntl, dup2,
    // close_range, prctl, getppid, _exit) and touches no shared memory or locks.
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
pub fn inherited_listener() -> io::Result<TcpListener> {
    if std::env::var("LISTEN_FDS").ok().as_deref() != Some("1") {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "LISTEN_FDS=1 not set: run this through `ringmux serve --demo`",
        ));
    }
    // Check that fd 3 is an open socket before taking ownership of it.
    let st = rustix::fs::fstat(
        // SAFETY: borrowing fd 3 only for this fstat; it is not closed here.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(LISTEN_FD) },
    )?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "fd 3 is not a socket",
        ));
    }
    // SAFETY: fd 3 is open (fstat succeeded), is a socket, and nothing else in
    // this process owns it (it was inherited and is taken exactly once).
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FD) };
    let sock = socket2::Socket::from(fd);
    sock.set_cloexec(true)?;
    Ok(sock.into())
}

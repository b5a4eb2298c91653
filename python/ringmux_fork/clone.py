"""Forking so that the copy becomes a child of *our parent* (ringmux), with a
pidfd for it: ``clone3(CLONE_PARENT | CLONE_PIDFD)``, wrapped in CPython's own
fork hooks (``PyOS_BeforeFork`` / ``PyOS_AfterFork_Child`` /
``PyOS_AfterFork_Parent``, exactly what ``os.fork()`` calls around
``fork(2)``), so ``os.register_at_fork`` handlers, the GIL, the import lock and
the ``threading`` module are reset in the child as after ``os.fork()``.

Why not ``os.fork()``: its child would be *our* child, so only we could reap
it, and ringmux could not see its exit status on its own pidfd. With
``CLONE_PARENT`` ringmux reaps it directly, and it is never our zombie.
"""

from __future__ import annotations

import ctypes
import os
import threading

CLONE_PIDFD = 0x00001000
CLONE_PARENT = 0x00008000
CLONE_INTO_CGROUP = 0x200000000
SYS_clone3 = 435  # the same number on every architecture that has clone3
PR_SET_PDEATHSIG = 1

# PyDLL: the GIL stays held across the call, as in os.fork().
_libc = ctypes.PyDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_api = ctypes.pythonapi
for _name in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child"):
    getattr(_api, _name).restype = None
    getattr(_api, _name).argtypes = []


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint64)
        for n in (
            "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
            "stack_size", "tls", "set_tid", "set_tid_size", "cgroup",
        )
    ]


class ThreadsRunning(RuntimeError):
    """The process has more than one thread: a forked copy could inherit a
    lock held by a thread that does not exist in it."""


def native_thread_count() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise OSError("no Threads: line in /proc/self/status")


def check_single_threaded() -> None:
    n = native_thread_count()
    if n == 1:
        return
    names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    detail = f"Python threads: {', '.join(names)}" if names else "threads started by native code"
    raise ThreadsRunning(
        f"the fork server runs {n} threads ({detail}); it forks only when single-threaded: "
        "start threads in setup_task (in each child), not at import or in setup "
        "(for native pools, e.g. OPENBLAS_NUM_THREADS=1 or OMP_NUM_THREADS=1)"
    )


def fork_into_parent(cgroup_fd: int | None = None) -> tuple[int, int]:
    """``(0, -1)`` in the child; ``(pid, pidfd)`` in the caller. With
    ``cgroup_fd`` (a cgroup v2 directory) the child is born in that cgroup."""
    check_single_threaded()
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs()
    args.flags = CLONE_PARENT | CLONE_PIDFD
    args.pidfd = ctypes.addressof(pidfd)
    if cgroup_fd is not None:
        args.flags |= CLONE_INTO_CGROUP
        args.cgroup = cgroup_fd
    _api.PyOS_BeforeFork()
    r = _libc.syscall(ctypes.c_long(SYS_clone3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if r == 0:
        _api.PyOS_AfterFork_Child()
        return 0, -1
    err = ctypes.get_errno()
    _api.PyOS_AfterFork_Parent()
    if r < 0:
        raise OSError(err, f"clone3(CLONE_PARENT|CLONE_PIDFD): {os.strerror(err)}")
    return int(r), pidfd.value


def die_with_parent(expected_ppid: int) -> None:
    """SIGKILL when ringmux dies; exit now if it already has."""
    if _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != expected_ppid:
        os._exit(1)


PR_SET_NAME = 15


def get_comm() -> str:
    with open("/proc/self/comm") as f:
        return f.read().strip()


def set_comm(name: str) -> None:
    """The process name `ps` shows (15 bytes at most); best effort."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0)


def enter_cgroup(cgroup_fd: int) -> None:
    """Moves this process into the cgroup v2 directory open at ``cgroup_fd``."""
    fd = os.open("cgroup.procs", os.O_WRONLY | os.O_CLOEXEC, dir_fd=cgroup_fd)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)

"""The fork-server protocol, version 1 (the ringmux README, "Fork mode", has
the full text): one JSON object per ``SOCK_SEQPACKET`` datagram, at most
64 KiB, descriptors attached as ``SCM_RIGHTS``."""

from __future__ import annotations

import json
import socket

PROTOCOL_VERSION = 1
MAX_MSG = 64 * 1024
MAX_FDS = 4
ENV_FD = "RINGMUX_FORK_SERVER_FD"
ENV_PROTOCOL = "RINGMUX_FORK_PROTOCOL"
ENV_RINGMUX_PID = "RINGMUX_PID"


class ProtocolError(Exception):
    """A message that is not valid protocol."""


def send(sock: socket.socket, msg: dict, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps({"v": PROTOCOL_VERSION, **msg}, separators=(",", ":")).encode()
    if len(data) > MAX_MSG:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MSG}")
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv_raw(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """One datagram and its descriptors, unparsed; None at end of stream."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MSG + 1, MAX_FDS)
    if not data and not fds:
        return None
    return data, fds


def recv(sock: socket.socket) -> tuple[dict, list[int]] | None:
    """One message and its descriptors; None at end of stream."""
    data, fds, flags, _ = socket.recv_fds(sock, MAX_MSG + 1, MAX_FDS)
    if not data and not fds:
        return None
    if len(data) > MAX_MSG or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            _close(fd)
        raise ProtocolError("message or descriptor list truncated")
    try:
        msg = json.loads(data)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(msg, dict) or msg.get("v") != PROTOCOL_VERSION:
        for fd in fds:
            _close(fd)
        raise ProtocolError(f"not a version {PROTOCOL_VERSION} message")
    return msg, fds


def _close(fd: int) -> None:
    import os

    try:
        os.close(fd)
    except OSError:
        pass

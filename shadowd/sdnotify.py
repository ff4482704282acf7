"""systemd's notify protocol: one datagram per message to $NOTIFY_SOCKET. No libsystemd needed.

Silently does nothing when not started by systemd (no NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send e.g. ``"READY=1"`` or ``"STATUS=..."``; True when a datagram was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def watchdog_interval() -> float | None:
    """Half of WatchdogSec, in seconds, when systemd asked this process for keep-alive pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None

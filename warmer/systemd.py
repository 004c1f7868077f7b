"""sd_notify: READY, WATCHDOG, STOPPING and STATUS for ``Type=notify`` units.

A few lines over the documented datagram protocol, so the daemon needs no
libsystemd. Without ``NOTIFY_SOCKET`` (not under systemd) it does nothing.
"""

from __future__ import annotations

import os
import socket


def notify(*states: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(states).encode())
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), if enabled for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000

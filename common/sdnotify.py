"""A small systemd ``sd_notify`` client (``Type=notify`` units).

When systemd starts a service with ``Type=notify`` (or ``NotifyAccess=``),
it sets ``NOTIFY_SOCKET`` to the path of a unix datagram socket, or to
``@NAME`` for a socket in the abstract namespace.  The service sends
newline-separated ``KEY=VALUE`` assignments to it: ``READY=1`` when start-up
is complete, ``RELOADING=1`` / ``READY=1`` around a configuration reload,
``STOPPING=1`` when it begins to stop, ``STATUS=...`` free text, and
``MAINPID=`` its PID.  See sd_notify(3).

Without ``NOTIFY_SOCKET`` every call does nothing; a send that fails is
logged once at debug level and never stops the program.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify_address(value: str | None = None) -> str | bytes | None:
    """The socket address named by ``NOTIFY_SOCKET`` (abstract names as bytes)."""
    if value is None:
        value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other schemes are not used by this suite


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` lines to the service manager; True if sent."""
    address = notify_address()
    if address is None:
        return False
    message = "\n".join(assignments).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message, address)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", address, exc)
        return False
    return True


def monotonic_usec() -> str:
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def ready(status: str | None = None) -> bool:
    """Start-up done: ``READY=1`` with ``MAINPID`` (the daemon's PID after ``-d``)."""
    lines = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        lines.append(f"STATUS={status}")
    return notify(*lines)


def reloading() -> bool:
    return notify("RELOADING=1", monotonic_usec())


def reloaded(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def stopping() -> bool:
    return notify("STOPPING=1")

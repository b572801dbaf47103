"""systemd's notify protocol, as sd_notify(3) describes it: one datagram of KEY=VALUE
lines to the AF_UNIX socket named in $NOTIFY_SOCKET (a path, or an abstract name written
with a leading "@"). Without $NOTIFY_SOCKET every send does nothing, so the daemon runs
the same under systemd, another supervisor or a terminal."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Notifier:
    address: str | None
    """Where datagrams go: a socket path, or "\\0name" for an abstract one; None: nowhere."""
    watchdog_seconds: float | None
    """How often systemd expects WATCHDOG=1 at the latest; None: no watchdog for us."""
    unsupported: str | None = None
    """A $NOTIFY_SOCKET this module cannot reach (a vsock address, say), to report."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ, pid: int = 0) -> Notifier:
        address, unsupported = _address(environ.get("NOTIFY_SOCKET", ""))
        return cls(address, _watchdog_seconds(environ, pid or os.getpid()), unsupported)

    def send(self, **fields: object) -> bool:
        """Send the fields as one message; False when there is nobody to tell or the
        socket refused (systemd is restarting, say): the daemon goes on either way."""
        if self.address is None:
            return False
        message = "\n".join(f"{name}={value}" for name, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError:
            return False
        return True


def _address(value: str) -> tuple[str | None, str | None]:
    if value.startswith("/"):
        return value, None
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:], None
    return None, value or None


def _watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """$WATCHDOG_USEC, if it is meant for this process ($WATCHDOG_PID unset or ours)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        owner = int(environ.get("WATCHDOG_PID") or pid)
    except ValueError:
        return None
    if usec <= 0 or owner != pid:
        return None
    return usec / 1_000_000

"""systemd's side of the notify protocol: a datagram socket that keeps every message the
daemon sends, with the time it came."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Message:
    at: float
    """time.monotonic() when it came."""
    fields: dict[str, str]
    observed: object = None
    """What `on_ready` saw, for a READY=1 message."""


@dataclass
class NotifySocket:
    """Bound to `address` (a path, or "@name" for an abstract socket): the value of
    $NOTIFY_SOCKET for the daemon."""

    address: str
    on_ready: Callable[[], object] = lambda: None
    """Called the moment READY=1 arrives, to look at the world as it is then."""
    messages: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        self._sock.bind(bind_to)
        self._sock.settimeout(0.2)
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            observed = self.on_ready() if fields.get("READY") == "1" else None
            self.messages.append(Message(at, fields, observed))

    def with_field(self, name: str) -> list[Message]:
        return [m for m in list(self.messages) if name in m.fields]

    def wait_for(self, name: str, value: str | None = None, timeout: float = 20) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.with_field(name):
                if value is None or value in message.fields[name]:
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no {name}={value or '...'} within {timeout}s: {self.messages}")

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._reader.join(2)

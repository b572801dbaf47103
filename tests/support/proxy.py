"""A TCP proxy in front of the test MariaDB that can lose a COMMIT's reply on purpose.

For the tests of an ambiguous commit: the server has committed, but the client only sees
"Lost connection to MySQL server during query" (2013) and cannot tell whether it did.
All other traffic passes through byte for byte. Plain MySQL protocol only (no TLS, no
compression): connect through it with `connect_args={"ssl_disabled": True}`.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from tests.support.servers import MariaDB

COM_QUERY = 0x03


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


def _read_packet(sock: socket.socket) -> bytes:
    """One whole packet, its 4-byte header included; b"" once the peer has gone."""
    header = _read_exactly(sock, 4)
    if len(header) < 4:
        return b""
    size = int.from_bytes(header[:3], "little")
    payload = _read_exactly(sock, size)
    return header + payload if len(payload) == size else b""


def _is_commit(packet: bytes) -> bool:
    """A command (sequence id 0) that is COM_QUERY "COMMIT"."""
    return (
        len(packet) < 64
        and packet[3] == 0
        and packet[4] == COM_QUERY
        and packet[5:].strip().upper() == b"COMMIT"
    )


class _Link:
    """One client's connection, and the proxy's own connection to the server for it."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.swallow_reply = False  # set by the client's side, read by the server's
        for sock in (client, server):  # packet by packet: no waiting for delayed ACKs
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other thread's recv
            sock.close()


class FaultProxy:
    """Listens on a free loopback port and forwards each connection to `server`'s port."""

    def __init__(self, server: MariaDB) -> None:
        self.server = server
        self.port = 0  # known once started
        self.dropped = 0  # COMMIT replies lost so far
        self._armed = 0
        self._passing = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._links: list[_Link] = []
        self._pumps: list[threading.Thread] = []

    def url(self, database: str) -> str:
        """As MariaDB.url, but through the proxy."""
        return f"mysql+pymysql://expiryd:{self.server.password}@127.0.0.1:{self.port}/{database}"

    def drop_commit_replies(self, count: int = 1, after: int = 0) -> None:
        """After `after` more COMMITs go through, the next `count` reach the server, but
        their clients lose the connection instead of getting the reply. (SQLAlchemy's
        MySQL dialect sends a COMMIT of its own after setting a connection's isolation
        level.)"""
        with self._lock:
            self._armed, self._passing = count, after

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # to notice stop()
        self.port = int(self._listener.getsockname()[1])
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor:
            self._acceptor.join(5)
        if self._listener:
            self._listener.close()
        for link in self._links:
            link.close()
        for pump in self._pumps:
            pump.join(5)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(("127.0.0.1", self.server.port))
            link = _Link(client, server)
            self._links.append(link)
            for pump in (self._client_to_server, self._server_to_client):
                thread = threading.Thread(target=pump, args=(link,), daemon=True)
                self._pumps.append(thread)
                thread.start()

    def _take_armed(self) -> bool:
        with self._lock:
            if self._armed == 0:
                return False
            if self._passing:
                self._passing -= 1
                return False
            self._armed -= 1
            return True

    def _client_to_server(self, link: _Link) -> None:
        try:
            while packet := _read_packet(link.client):
                if _is_commit(packet) and self._take_armed():
                    link.swallow_reply = True  # before the server can answer
                link.server.sendall(packet)
        except OSError:
            pass
        finally:
            link.close()

    def _server_to_client(self, link: _Link) -> None:
        try:
            while packet := _read_packet(link.server):
                if link.swallow_reply:  # the COMMIT's reply: the server has committed
                    with self._lock:
                        self.dropped += 1
                    break
                link.client.sendall(packet)
        except OSError:
            pass
        finally:
            link.close()

"""A TCP transport for adb-shell that sends whole messages and does not wait on Nagle.

adb-shell's stock ``TcpTransport`` has two measured problems:

* it writes an ADB header (24 bytes) and its payload as two separate ``send`` calls without
  TCP_NODELAY, so the payload waits for the peer's delayed ACK of the header: ~45 ms per
  message on Linux;
* with a timeout it puts the socket in non-blocking mode and returns whatever ``send``
  accepted, and adb-shell ignores the count: on a slow link part of a message is silently
  dropped and the session stalls until it times out.

``FastTcpTransport`` sets TCP_NODELAY and loops on ``send`` until every byte is out
(``sendall`` semantics), bounded by a stall timeout (no progress for ``transport_timeout_s``)
and by an optional hard deadline that the caller sets per operation (``set_deadline``).
"""

from __future__ import annotations

import selectors
import socket
import time

from adb_shell.exceptions import TcpTimeoutException
from adb_shell.transport.base_transport import BaseTransport


class FastTcpTransport(BaseTransport):
    """TCP transport for ``adb_shell.adb_device.AdbDevice`` (see the module docstring)."""

    def __init__(self, host: str, port: int = 5555, connect_timeout_s: float = 10.0):
        self._host = host
        self._port = int(port)
        self._connect_timeout_s = float(connect_timeout_s)
        self._sock: socket.socket | None = None
        self._readable: selectors.BaseSelector | None = None  # poll/epoll: no FD_SETSIZE limit
        self._writable: selectors.BaseSelector | None = None
        self._deadline: float | None = None  # time.monotonic() value, or None
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- deadline handling ---------------------------------------------------------------
    def set_deadline(self, seconds: float | None) -> None:
        """Fail every read/write that would end later than `seconds` from now (None: no limit)."""
        self._deadline = None if seconds is None else time.monotonic() + float(seconds)

    def _wait_s(self, transport_timeout_s: float | None) -> float | None:
        limit = transport_timeout_s
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TcpTimeoutException(
                    f"{self._host}:{self._port}: operation deadline passed"
                )
            limit = left if limit is None else min(limit, left)
        return limit

    # -- BaseTransport ---------------------------------------------------------------------
    def connect(self, transport_timeout_s: float | None) -> None:
        self.close()
        timeout = self._connect_timeout_s
        if transport_timeout_s:
            timeout = min(timeout, float(transport_timeout_s))
        try:
            sock = socket.create_connection((self._host, self._port), timeout=timeout)
        except TimeoutError as exc:
            raise TcpTimeoutException(
                f"connecting to {self._host}:{self._port} timed out after {timeout:.1f} s"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)  # all waiting is done in a selector with explicit timeouts
        self._sock = sock
        self._readable, self._writable = selectors.DefaultSelector(), selectors.DefaultSelector()
        self._readable.register(sock, selectors.EVENT_READ)
        self._writable.register(sock, selectors.EVENT_WRITE)

    def close(self) -> None:
        for sel in (self._readable, self._writable):
            if sel is not None:
                sel.close()
        self._readable = self._writable = None
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _conn(self) -> socket.socket:
        if self._sock is None:
            raise ConnectionError(f"{self._host}:{self._port}: not connected")
        return self._sock

    def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
        sock = self._conn()
        wait = self._wait_s(transport_timeout_s)
        if not self._readable.select(wait):
            raise TcpTimeoutException(
                f"reading from {self._host}:{self._port} timed out ({wait} seconds)"
            )
        try:
            data = sock.recv(numbytes)
        except BlockingIOError:
            return b""
        if not data:
            raise ConnectionResetError(f"{self._host}:{self._port} closed the connection")
        self.bytes_received += len(data)
        return data

    def bulk_write(self, data: bytes, transport_timeout_s: float | None) -> int:
        sock = self._conn()
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            # The stall timeout restarts whenever bytes move; the deadline never does.
            wait = self._wait_s(transport_timeout_s)
            if not self._writable.select(wait):
                raise TcpTimeoutException(
                    f"sending to {self._host}:{self._port} stalled for {wait} seconds "
                    f"after {sent} of {len(view)} bytes"
                )
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                continue
        self.bytes_sent += sent
        return sent

"""A tiny threaded TCP proxy: stop it and the database behind it is gone for whoever used it."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream``.

    ``stop()`` closes the listening socket and cuts every open connection (new connections are
    refused, pooled ones die); ``start()`` again listens on the same port.
    ``swallow_replies_after(marker)`` loses the server's answers on a connection from the first
    one holding ``marker`` on: the server did the work, its client never hears of it.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._marker: bytes | None = None
        self._deaf: set[socket.socket] = set()  # clients whose answers are being swallowed
        self.swallowed = threading.Event()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()  # the listening socket is closed when this returns
            self._acceptor = None
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()
            self._deaf.clear()
        for connection in connections:
            _close(connection)

    def swallow_replies_after(self, marker: bytes) -> None:
        """Once: the next answer holding ``marker``, and every later one on its connection,
        is dropped instead of forwarded."""
        self.swallowed.clear()
        self._marker = marker

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while not self._stopping.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                except OSError:
                    _close(client)
                    continue
                client.settimeout(None)
                upstream.settimeout(None)
                with self._lock:
                    self._connections.update((client, upstream))
                for source, target, replies in (
                    (client, upstream, False),
                    (upstream, client, True),
                ):
                    threading.Thread(
                        target=self._pump, args=(source, target, replies), daemon=True
                    ).start()

    def _pump(self, source: socket.socket, target: socket.socket, replies: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if replies and self._swallows(target, data):
                    continue
                target.sendall(data)
        for connection in (source, target):
            with self._lock:
                self._connections.discard(connection)
            _close(connection)

    def _swallows(self, client: socket.socket, data: bytes) -> bool:
        with self._lock:
            if client in self._deaf:
                return True
            if self._marker is None or self._marker not in data:
                return False
            self._marker = None
            self._deaf.add(client)
        self.swallowed.set()
        return True


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    connection.close()

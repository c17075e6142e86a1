"""One listening socket per worker process, in one SO_REUSEPORT group.

uvicorn's workers share one listening socket, and whichever worker wakes first accepts every
connection waiting: keep-alive connections opened together (a load balancer's pool, a load
test) can all land on one worker while the others idle. With a socket of its own per worker,
bound to the same address with SO_REUSEPORT, the kernel spreads new connections over the
workers instead.

uvicorn hands the sockets it is given to each worker by pickling them. ``WorkerSocket`` pickles
as an instruction, not a descriptor: each worker that unpickles it (restarted ones included)
binds a socket of its own, and starts listening on it (joins the spread) only once its app has
started, so no connection waits on a worker still loading. The main process keeps the address
reserved with a socket bound in the same group but never listening: it receives no
connections.
"""

from __future__ import annotations

import socket
from typing import Any


def bound_socket(host: str, port: int, family: int) -> socket.socket:
    """A socket bound to ``host``:``port`` in the SO_REUSEPORT group, not yet listening: what
    a worker gets when it unpickles a ``WorkerSocket`` (uvicorn listens once the app started)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class WorkerSocket(socket.socket):
    """The address reserved in the main process; unpickled, a worker's own listening socket."""

    @classmethod
    def reserve(cls, host: str, port: int) -> WorkerSocket:
        """Bind ``host``:``port`` without listening: fails at once (OSError) if the address is
        taken by another program, before any worker starts."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        plain = bound_socket(host, port, family)
        return cls(family, socket.SOCK_STREAM, fileno=plain.detach())

    def __reduce__(self) -> tuple[Any, ...]:
        host, port = self.getsockname()[:2]
        return (bound_socket, (host, port, self.family))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.__reduce__()


def supports_reuse_port() -> bool:
    return hasattr(socket, "SO_REUSEPORT")

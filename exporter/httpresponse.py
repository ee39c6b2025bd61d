"""An answer as the HTTP server writes it: its head, then its body as the socket takes it.

A body is bytes, chunks (sent as they are, never joined: the ``/metrics`` text is held in its
snapshots' pieces) or a :class:`Stream`, made as it is sent (the text held compressed, inflated
a slice at a time). Either way no connection copies or holds its answer whole: an
:class:`Output` makes at most :data:`WRITE_AHEAD` bytes of it ready ahead of the socket.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Protocol

# At most this much per TLS send(): one that could not finish must be retried with the same
# bytes, and a slice of the same size from the same offset is that.
_WRITE_SIZE = 256 * 1024
_WRITE_CHUNKS = 256  # chunks of an answer per sendmsg() (Linux takes at most 1,024)
#: Bytes of an answer made ready ahead of the socket (a stream is made no further ahead).
WRITE_AHEAD = 1024 * 1024


class Stream(Protocol):
    """A body made as it is sent: its length is known beforehand, and each iteration makes its
    chunks anew."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[bytes]: ...


#: A body, its chunks in order, or a stream (sent as they come: never copied whole).
Body = bytes | tuple[bytes, ...] | Stream


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: Body = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def length(self) -> int:
        body = self.body
        return sum(map(len, body)) if isinstance(body, tuple) else len(body)

    def chunks(self) -> Iterable[bytes]:
        return (self.body,) if isinstance(self.body, bytes) else self.body


def page(status: HTTPStatus, message: str) -> Response:
    """A short answer in plain text."""
    return Response(status, (message.rstrip("\n") + "\n").encode())


class Output:
    """What is left to send of an answer: false once all of it is sent."""

    def __init__(self, head: bytes, body: Iterable[bytes] = ()) -> None:
        self._ready = [memoryview(head)]  # made, not sent yet
        self._rest: Iterator[bytes] | None = iter(body)  # not made yet; None once all is made

    def __bool__(self) -> bool:
        """Whether anything may be left to send; makes nothing (only :meth:`send` does, where
        whatever making it raises is the connection's, not the server's)."""
        return bool(self._ready) or self._rest is not None

    def send(self, sock: socket.socket) -> None:
        """Send until all is sent or the socket would block (raised): on a plain socket many
        chunks in one system call (each lets another thread take the interpreter, and getting
        it back waits up to the switch interval while a poll keeps it busy); on a TLS socket a
        piece at a time, one it could not finish offered again as it was."""
        ready, tls = self._ready, isinstance(sock, ssl.SSLSocket)
        while self._make_ready():
            sent = sock.send(ready[0][:_WRITE_SIZE]) if tls else sock.sendmsg(ready[:_WRITE_CHUNKS])
            while ready and sent >= len(ready[0]):
                sent -= len(ready.pop(0))
            if sent:
                ready[0] = ready[0][sent:]

    def _make_ready(self) -> bool:
        """Take chunks of the body until :data:`WRITE_AHEAD` bytes are ready; whether any are."""
        ready = self._ready
        ahead = sum(map(len, ready))
        while self._rest is not None and ahead < WRITE_AHEAD and len(ready) < _WRITE_CHUNKS:
            chunk = next(self._rest, None)
            if chunk is None:
                self._rest = None
            elif chunk:
                ready.append(memoryview(chunk))
                ahead += len(chunk)
        return bool(ready)

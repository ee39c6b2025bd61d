"""A request's head, read strictly: where it ends, its line and headers, its body skipped.

The standard library parses the request line and the headers; what it leaves lenient and the
server relies on is checked here: ``Content-Length`` must be ASCII digits, and only one.
Nothing here touches a socket.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

MAX_HEADER_BYTES = 32 * 1024
# ASCII digits only: str.isdigit() also takes "²" (which int() refuses) and other scripts'
# digits (which int() reads).
_LENGTH = re.compile(r"[0-9]{1,15}")


def end_of_headers(buffer: bytearray) -> int | None:
    """Where the request line and headers end in ``buffer`` (after the empty line), or None.

    Empty lines before a request are skipped (RFC 9112, section 2.2), and removed from it.
    """
    while buffer.startswith((b"\r\n", b"\n")):
        del buffer[: 1 if buffer.startswith(b"\n") else 2]
    ends = [
        found + len(marker)
        for marker in (b"\r\n\r\n", b"\n\n")
        if (found := buffer.find(marker)) >= 0
    ]
    return min(ends, default=None)


@dataclass(frozen=True)
class HeadError:
    """Why a request's head cannot be answered, as the status and message of its answer."""

    status: HTTPStatus
    message: str


class RequestHead(BaseHTTPRequestHandler):
    """A request's line and headers (``command``, ``path``, ``headers``, ``requestline``,
    ``close_connection``), parsed by the standard library from bytes already read.

    It writes nothing: an error is kept in :attr:`error` for the server to answer with its
    own page (and headers).
    """

    protocol_version = "HTTP/1.1"

    def __init__(self, head: bytes) -> None:  # not BaseRequestHandler's: no socket here
        self.rfile = io.BytesIO(head)
        self.wfile = io.BytesIO()
        self.error: HeadError | None = None
        self.command = ""
        self.requestline = ""
        self.close_connection = True
        self.raw_requestline = self.rfile.readline(MAX_HEADER_BYTES + 1)
        if not self.parse_request() and self.error is None:
            self.error = HeadError(HTTPStatus.BAD_REQUEST, "Bad request.")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        status = HTTPStatus(code)
        self.error = HeadError(status, f"{message or status.phrase}.")
        self.close_connection = True

    def handle_expect_100(self) -> bool:
        return True  # no body is read: nothing to continue


def parse_head(head: bytes) -> RequestHead | HeadError:
    """The request line and headers, or why they cannot be answered (then close)."""
    parser = RequestHead(head)
    if parser.error is not None:
        return parser.error
    lengths = parser.headers.get_all("Content-Length") or []
    if len(lengths) > 1 or not all(_LENGTH.fullmatch(value.strip(" \t")) for value in lengths):
        return HeadError(HTTPStatus.BAD_REQUEST, "Bad Content-Length.")
    return parser


def skip_body(buffer: bytearray, headers: Message) -> bool:
    """Drop a request's body from ``buffer``; False when it is not all there (then close).

    Bodies are never read: no path takes one. A chunked body cannot be skipped without
    reading it, so its connection is closed after the answer.
    """
    if headers.get("Transfer-Encoding") is not None:
        return False
    length = int(headers.get("Content-Length", "0").strip(" \t"))  # checked by parse_head
    if length > len(buffer):
        return False
    del buffer[:length]
    return True

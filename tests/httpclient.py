"""HTTP as the exporter's clients speak it, for the tests of its server: one request on a fresh
connection (HTTPS with a client context, plain HTTP without), and an answer read off a raw
connection for the tests that write their requests byte by byte."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]  # names in lower case
    body: bytes


def fetch(
    port: int,
    path: str,
    context: ssl.SSLContext | None = None,
    authorization: str | None = None,
    method: str = "GET",
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Answer:
    """One request to 127.0.0.1:``port`` on a fresh connection."""
    connection = (
        http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        if context is None
        else http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    )
    sent = dict(headers or {})
    if authorization is not None:
        sent["Authorization"] = authorization
    try:
        connection.request(method, path, headers=sent)
        answer = connection.getresponse()
        received = {name.lower(): value for name, value in answer.getheaders()}
        return Answer(answer.status, received, answer.read())
    finally:
        connection.close()


def read_answer(stream: BinaryIO, *, head: bool = False) -> Answer:
    """One HTTP/1.1 answer from ``stream``, leaving the next one in it."""
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get("content-length", "0"))
    return Answer(status, headers, stream.read(length))

"""``python -m exporter.healthcheck [URL]``: is the exporter on this host alive?

The container image's ``HEALTHCHECK`` runs this, so the image needs no curl. It asks
``/-/healthy`` (which never depends on a controller being up) and exits 0 on a 200
answer within the timeout, 1 on anything else, with the reason on stderr.

The URL comes from the argument, else ``$SIMPLIVITY_EXPORTER_HEALTHCHECK_URL``, else
``http://127.0.0.1:10025/-/healthy``: a user who moves the port or turns on TLS sets the
variable once in the container's environment instead of rebuilding the image. With
basic auth on (``--web.config.file``), every path answers 401 without credentials: put
them in the URL, ``http://user:password@127.0.0.1:10025/-/healthy``; they are sent as a
basic-auth header and never printed.

    $ python -m exporter.healthcheck http://127.0.0.1:10025/-/healthy; echo $?
    0
    $ python -m exporter.healthcheck http://127.0.0.1:1/-/healthy; echo $?
    unhealthy: http://127.0.0.1:1/-/healthy: [Errno 111] Connection refused
    1
"""

from __future__ import annotations

import argparse
import base64
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence

DEFAULT_URL = "http://127.0.0.1:10025/-/healthy"
URL_ENV = "SIMPLIVITY_EXPORTER_HEALTHCHECK_URL"
INSECURE_ENV = "SIMPLIVITY_EXPORTER_HEALTHCHECK_INSECURE_SKIP_VERIFY"
DEFAULT_TIMEOUT_SECONDS = 5.0
_TRUE = {"1", "true", "yes", "on"}


def _split_credentials(url: str) -> tuple[str, str | None]:
    """The URL without user:password@, and the basic-auth header they make (if any)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    plain = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return plain, f"Basic {token}"


def probe(url: str, timeout_seconds: float, insecure_skip_verify: bool = False) -> str | None:
    """None if GET ``url`` answers 200 within the timeout, else the reason in plain words."""
    if not url.startswith(("http://", "https://")):
        return "the URL must start with http:// or https://"
    try:
        url, authorization = _split_credentials(url)
    except ValueError as error:  # e.g. a port that is no number
        return f"bad URL: {error}"
    context = None
    if url.startswith("https://") and insecure_skip_verify:
        # Only for the exporter's own self-signed certificate on loopback.
        context = ssl._create_unverified_context()  # noqa: S323
    headers = {"User-Agent": "simplivity-exporter-healthcheck"}
    if authorization is not None:
        headers["Authorization"] = authorization
    # The scheme is checked above: no file:// or custom schemes reach urllib (S310).
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds, context=context) as answer:  # noqa: S310
            status = int(answer.status)
    except urllib.error.HTTPError as error:
        return f"{url}: HTTP {error.code}"
    except urllib.error.URLError as error:
        return f"{url}: {error.reason}"
    except (OSError, ValueError) as error:
        return f"{url}: {error}"
    if status != 200:
        return f"{url}: HTTP {status}"
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Exit code 0 if healthy, 1 if not."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog="python -m exporter.healthcheck",
        description="Exit 0 if the exporter's /-/healthy answers 200, else 1.",
    )
    parser.add_argument(
        "url",
        nargs="?",
        default=env.get(URL_ENV) or DEFAULT_URL,
        help=f"health URL (default: ${URL_ENV} or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help=f"give up after this long (default: {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--insecure-skip-verify",
        action="store_true",
        default=env.get(INSECURE_ENV, "").strip().lower() in _TRUE,
        help=f"do not verify an https:// certificate (default: ${INSECURE_ENV})",
    )
    args = parser.parse_args(argv)
    reason = probe(args.url, args.timeout, args.insecure_skip_verify)
    if reason is not None:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

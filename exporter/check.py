"""``--controller.check``: does the exporter work against this controller? A short report.

For each controller: one ``GET /api/version``, which needs no login (reachable? TLS? which REST
API?); then one login and one record of each listing a poll reads, asked for as a poll asks
(the fields that REST API version documents, the filters, the first sort) with ``limit=1``, so
that the envelope's ``count`` is the size of the listing; then the schedule report where the
REST API has it. An ``https://``
controller's certificate (names, issuer, expiry) is read with one more handshake. Every finding
that is not fine comes with what to do about it.

It is quick and harmless: no request is retried, each waits at most
:data:`CHECK_TIMEOUT_SECONDS`, and a failure that leaves nothing more to learn (unreachable,
credentials refused) ends the check of that controller: a wrong password costs one refused
login. Credentials are only sent to something that answered ``/api/version`` like a SimpliVity
controller. The report never holds a password or a token: it is made of the client's error
messages, which never do, and of the controller's answers about itself.

The exporter's own reads and the report's words come from the REST client
(:mod:`exporter.simplivity`) and the error reasons of :mod:`exporter.model`; this module adds
only the fix for each kind of failure.
"""

from __future__ import annotations

import difflib
import socket
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import requests.utils

from exporter.backups import BACKUPS
from exporter.config import ControllerConfig, PollConfig
from exporter.inventory import (
    INVENTORY_LISTINGS,
    SCHEDULE_REPORT,
    VERSION,
    parse_schedule_report,
    parse_versions,
)
from exporter.model import (
    AuthError,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    RequestTimeout,
    ScheduleReport,
    SimplivityError,
    TLSError,
)
from exporter.pages import Collection, PageCounter
from exporter.poller import as_asked
from exporter.restapi import RESOURCE_SINCE, Version, has_resource, parse_version
from exporter.simplivity import SimplivityClient

LOGIN = "/api/oauth/token"
#: The most any request of the check waits (less if ``poll.timeout_seconds`` is shorter): a
#: controller answers each of these in well under a second, and a person is waiting.
CHECK_TIMEOUT_SECONDS = 15.0
#: Controllers checked at the same time.
MAX_PARALLEL_CHECKS = 8
#: A certificate that expires sooner than this is worth a warning.
CERTIFICATE_WARN_DAYS = 30
#: What each listing is called in the report, in the order a poll reads them.
LISTINGS: tuple[tuple[str, Collection], ...] = tuple(
    zip(
        ("backups", "live VMs", "policies", "hosts", "clusters"),
        (BACKUPS, *INVENTORY_LISTINGS),
        strict=True,
    )
)
AUTH_FIX = (
    "check the user name (vCenter users need their domain: administrator@vsphere.local) and "
    "the password (is the ${VAR} set in this environment? does the password_file hold it?)"
)

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was looked at, how it went, and what to do if not well."""

    topic: str
    level: Level
    text: str
    fix: str = ""


@dataclass(frozen=True)
class Report:
    """The check of one controller."""

    name: str
    url: str
    username: str
    findings: tuple[Finding, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        """True unless a finding failed (warnings do not fail a controller)."""
        return all(finding.level != "fail" for finding in self.findings)

    def render(self) -> str:
        """The report as a person reads it:

        >>> print(Report("boston", "https://ovc", "admin", (
        ...     Finding("reachable", "fail", "cannot connect", "check the port"),), 0.01).render())
        controller boston at https://ovc, user admin
          FAIL  reachable        cannot connect
                                 fix: check the port
          boston: FAILED (reachable) in 0.01 s
        """
        lines = [f"controller {self.name} at {self.url}, user {self.username}"]
        for finding in self.findings:
            mark = "FAIL" if finding.level == "fail" else finding.level
            lines.append(f"  {mark:<5} {finding.topic:<16} {finding.text}")
            if finding.fix:
                lines.append(f"  {'':<5} {'':<16} fix: {finding.fix}")
        failed = [finding.topic for finding in self.findings if finding.level == "fail"]
        verdict = f"FAILED ({', '.join(failed)})" if failed else "works"
        lines.append(f"  {self.name}: {verdict} in {self.seconds:.2f} s")
        return "\n".join(lines)


def choose(controllers: Sequence[ControllerConfig], name: str) -> tuple[ControllerConfig, ...]:
    """The controller called ``name``, or all of them when ``name`` is empty; ValueError with
    the words for a person when there is none."""
    if not controllers:
        raise ValueError("--controller.check: no controller is configured")
    if not name:
        return tuple(controllers)
    chosen = tuple(c for c in controllers if c.name == name)
    if chosen:
        return chosen
    names = [c.name for c in controllers]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"configured: {', '.join(names)}"
    raise ValueError(f"--controller.check: no controller is named {name!r} ({hint})")


def check_controllers(
    controllers: Sequence[ControllerConfig], poll: PollConfig
) -> Iterator[Report]:
    """Check the controllers at the same time; their reports in the order given, each as soon
    as it and those before it are done."""
    workers = max(1, min(MAX_PARALLEL_CHECKS, len(controllers)))
    with ThreadPoolExecutor(workers, thread_name_prefix="check") as pool:
        yield from pool.map(lambda controller: check_controller(controller, poll), controllers)


def check_controller(
    controller: ControllerConfig,
    poll: PollConfig,
    *,
    timeout_seconds: float = CHECK_TIMEOUT_SECONDS,
) -> Report:
    """Check one controller with the configured settings, but no retries and no request
    waiting more than ``timeout_seconds``."""
    started = time.monotonic()
    settings = replace(
        poll, max_retries=0, timeout_seconds=min(poll.timeout_seconds, timeout_seconds)
    )
    client = SimplivityClient(controller, settings)
    check = _Check(controller, settings, client)
    try:
        check.run()
    finally:
        client.close()
    return Report(
        controller.name,
        controller.url,
        controller.username,
        tuple(check.findings),
        time.monotonic() - started,
    )


class _Check:
    """The steps of one controller's check, in order; each adds its findings, and says whether
    the check goes on."""

    def __init__(
        self, controller: ControllerConfig, poll: PollConfig, client: SimplivityClient
    ) -> None:
        self.controller = controller
        self.poll = poll
        self.client = client
        self.url = urlsplit(controller.url)
        self.findings: list[Finding] = []
        self.rest_api: Version | None = None  # as /api/version said (None: the newest)
        self.logged_in = False  # and said so

    def add(self, topic: str, level: Level, text: str, fix: str = "") -> None:
        self.findings.append(Finding(topic, level, text, fix))

    def run(self) -> None:
        if self.version() and self.listings():
            self.schedule_report()

    # -- the steps

    def version(self) -> bool:
        """``GET /api/version``: reachable, TLS, REST API. False: nothing more to learn (and no
        credentials are sent to what did not answer like a controller)."""
        started = time.monotonic()
        try:
            body = self.client.get_without_login(VERSION)
        except TLSError as err:
            self.add("reachable", "ok", f"{self.url.netloc} accepted the connection")
            self.add("TLS", "fail", str(err), self.tls_fix(str(err)))
            return False
        except HTTPStatusError as err:
            self.add("reachable", "ok", f"{VERSION} answered HTTP {err.status}")
            self.tls_finding()
            self.add("REST API", "fail", str(err), self.fix(err, VERSION))
            return False
        except SimplivityError as err:
            self.add("reachable", "fail", str(err), self.fix(err, VERSION))
            return False
        seconds = time.monotonic() - started
        self.add("reachable", "ok", f"{VERSION} answered in {seconds:.2f} s")
        self.tls_finding()
        try:
            versions = parse_versions(body)
        except DecodeError as err:
            self.add("REST API", "fail", str(err), self.fix(err, VERSION))
            return False
        self.rest_api = parse_version(versions.rest_api)
        if self.rest_api is None:  # as a poll: asked for the newest version's fields
            said = repr(versions.rest_api) if versions.rest_api else "none"
            self.add("REST API", "warn", f"version {said}: asking as of the newest")
            return True
        omnistack = f", OmniStack {versions.svtfs}" if versions.svtfs else ""
        self.add("REST API", "ok", versions.rest_api + omnistack)
        return True

    def listings(self) -> bool:
        """One login, then one record of each listing; False once going on is pointless."""
        # As a poll: the listings it asks for, with the fields this version documents, in the
        # first order the poll tries.
        for topic, listed in LISTINGS:
            collection = as_asked(listed, self.rest_api)
            if collection is None:
                continue
            order = collection.orders[0]
            try:
                body = self.client.get_page(collection.page(0, 1, order))
                count = PageCounter(collection, _ignore).count(0, body, order).count
            except AuthError as err:
                # Without what a poll's client adds (when it will try again): a check does not.
                refused = str(err).partition("; next attempt")[0]
                self.add("credentials", "fail", refused, AUTH_FIX)
                return False
            except SimplivityError as err:
                # The login failed (it counts a login once answered, with whatever status; its
                # errors name its path) before anything was said about the credentials.
                if not self.logged_in and (self.client.logins == 0 or LOGIN in str(err)):
                    self.add("login", "fail", str(err), self.fix(err, LOGIN))
                    return False
                self.credentials_accepted()
                self.add(topic, "fail", str(err), self.fix(err, collection.path))
                if isinstance(err, RequestTimeout | ConnectError | TLSError):
                    return False  # the controller stopped answering: the rest would wait too
            else:
                self.credentials_accepted()
                self.add_count(topic, listed, count)
        return True

    def add_count(self, topic: str, listed: Collection, count: int) -> None:
        """A listing's size, and whether polls read it: as the poller caps them, a listing
        larger than its setting fails the poll at its first page."""
        if listed is BACKUPS:
            most, setting = self.poll.max_backups, "poll.max_backups"
        else:
            most, setting = self.poll.max_vms, "poll.max_vms"
        if count <= most:
            self.add(topic, "ok", f"{count} listed")
            return
        self.add(
            topic,
            "fail",
            f"{count} listed, more than {setting} ({most}): a poll fails at its first page",
            f"raise {setting} above {count} if the controller really holds that many",
        )

    def credentials_accepted(self) -> None:
        """Said once, before the first listing's line."""
        if self.logged_in:
            return
        self.logged_in = True
        logins = self.client.logins
        plural = "s" if logins != 1 else ""
        user = self.controller.username
        self.add("credentials", "ok", f"accepted for user {user!r} ({logins} login{plural})")

    def schedule_report(self) -> None:
        topic = "schedule report"
        unexported = "the federation's backup limits are not exported"
        if not has_resource(SCHEDULE_REPORT, self.rest_api):
            since = ".".join(map(str, RESOURCE_SINCE[SCHEDULE_REPORT]))
            self.add(topic, "warn", f"none before REST API {since}: {unexported}")
            return
        try:
            report = parse_schedule_report(self.client.get_body(SCHEDULE_REPORT))
        except HTTPStatusError as err:  # as a poll: not a failure, the limits are left out
            self.add(topic, "warn", f"{err}: {unexported}")
            return
        except SimplivityError as err:
            self.add(topic, "fail", str(err), self.fix(err, SCHEDULE_REPORT))
            return
        self.add(topic, "ok", describe_limits(report))

    # -- TLS

    def tls_finding(self) -> None:
        """How the connection that answered is protected (it answered, so it was trusted)."""
        tls = self.controller.tls
        if self.url.scheme != "https":
            self.add(
                "TLS",
                "warn",
                "none: plain http://, the password crosses the network in clear",
                "use https:// (a controller serves its REST API over HTTPS, on port 443)",
            )
            return
        if tls.insecure_skip_verify:
            self.add(
                "TLS",
                "warn",
                "the certificate is NOT verified (tls.insecure_skip_verify)",
                "set tls.ca_file to the controller's CA certificate, then turn "
                "insecure_skip_verify off",
            )
            return
        trusted = f"tls.ca_file {tls.ca_file}" if tls.ca_file else "the default CA bundle"
        named = f", name {tls.server_name} (tls.server_name)" if tls.server_name else ""
        self.add("TLS", "ok", f"verified against {trusted}{named}")
        certificate = self.peer_certificate()
        if certificate is None:
            return
        expires = _expiry(certificate)
        if expires is not None and expires - time.time() < CERTIFICATE_WARN_DAYS * 86400:
            fix = "renew the controller's certificate: once it expires, every poll fails"
            self.add("certificate", "warn", describe_certificate(certificate), fix)
        else:
            self.add("certificate", "ok", describe_certificate(certificate))

    def tls_fix(self, message: str) -> str:
        """What to do about a failed handshake, from the client's words for it."""
        if "tls.ca_file" in message or "verification failed" in message:
            return (
                "export the controller's CA certificate (or its self-signed certificate) as "
                "PEM and set tls.ca_file to that file"
            )
        if "host name" in message or "this IP" in message:
            certificate = self.peer_certificate()
            names = ", ".join(_names(certificate)) if certificate else ""
            carries = f" ({names})" if names else ""
            return f"set tls.server_name to a name the certificate carries{carries}"
        if "expired" in message:
            return "renew the controller's certificate"
        if "does not speak TLS" in message:
            return (
                "check the port in url (a controller's HTTPS port is 443); "
                f"http://{self.url.netloc} only if this port really serves plain HTTP"
            )
        return "check tls.ca_file and tls.server_name"

    def peer_certificate(self) -> dict[str, Any] | None:
        """The controller's certificate as Python's ``ssl`` reads it, if cheap to get: one more
        handshake, trusting what the client trusts (the name is not checked: it is what is
        read). None when verification is off, through a proxy, or on any failure."""
        tls, host = self.controller.tls, self.url.hostname
        if self.url.scheme != "https" or tls.insecure_skip_verify or not host:
            return None
        if requests.utils.get_environ_proxies(self.controller.url):
            return None  # the client goes through the proxy; a direct handshake may not
        try:
            trusted = tls.ca_file or requests.utils.DEFAULT_CA_BUNDLE_PATH
            context = ssl.create_default_context(cafile=trusted)
            context.check_hostname = False
            address = (host, self.url.port or 443)
            with (
                socket.create_connection(address, timeout=self.poll.timeout_seconds) as raw,
                context.wrap_socket(raw, server_hostname=tls.server_name or host) as wrapped,
            ):
                return wrapped.getpeercert()
        except (OSError, ValueError):
            return None

    # -- fixes

    def fix(self, err: SimplivityError, path: str) -> str:
        """What to do about a failed request, from the error's reason and the client's words."""
        message = str(err)
        host, port = self.url.hostname, self.url.port or (443 if self.url.scheme == "https" else 80)
        if isinstance(err, TLSError):
            return self.tls_fix(message)
        if isinstance(err, AuthError):
            return AUTH_FIX
        unreachable = (
            f"check the address and port in url, that the controller is up, and that no "
            f"firewall drops the traffic to {host}:{port}"
        )
        if isinstance(err, ConnectError):
            if "does not resolve" in message:
                return f"check the host name in url ({host}), or use the controller's address"
            if "refused" in message:
                return f"check the port in url ({port}; a controller's HTTPS port is 443)"
            if self.url.scheme == "http" and "speaks TLS" in message:
                return f"url: https://{self.url.netloc} (the port speaks TLS, as controllers do)"
            if self.url.scheme == "http" and ("reset" in message or "closed" in message):
                return f"if the port speaks TLS, as controllers do: url: https://{self.url.netloc}"
            return unreachable
        if isinstance(err, RequestTimeout):
            if path in (VERSION, LOGIN):
                return unreachable
            return (
                "the controller is slow to answer: see its load (polls wait up to "
                f"poll.timeout_seconds per request, the check {self.poll.timeout_seconds:g} s)"
            )
        if isinstance(err, HTTPStatusError):
            if path == VERSION:
                return (
                    "no SimpliVity REST API answers at this address: url is the controller's "
                    "address only (https://HOST), without a path"
                )
            if err.status == 403:
                return f"give user {self.controller.username!r} read access to {path}"
            if err.status >= 500:
                return "the controller failed to answer; if it lasts, see the controller's health"
            if err.status in (400, 404):  # what a poll asks (fields, sort, filters) was refused
                return "polls ask the same: please report this message with the REST API version"
            return ""
        if isinstance(err, DecodeError) and path == VERSION:
            return "this is not a SimpliVity controller's answer: a proxy or another service?"
        return "please report this message with the controller's REST API version"


def describe_limits(report: ScheduleReport) -> str:
    return (
        f"daily backups {_figure(report.daily_backups)} of {_figure(report.daily_backups_limit)}"
        f", retained {_figure(report.retained_backups_projected)} of "
        f"{_figure(report.retained_backups_limit)}"
    )


def describe_certificate(certificate: Mapping[str, Any]) -> str:
    """``for a, b, issued by X, valid until 2027-05-01`` from :meth:`ssl.SSLSocket.getpeercert`."""
    parts = []
    names = _names(certificate)
    if names:
        parts.append(f"for {', '.join(names)}")
    issuer = _name_of(certificate.get("issuer", ()))
    if issuer:
        parts.append(f"issued by {issuer}")
    expires = _expiry(certificate)
    if expires is not None:
        parts.append(f"valid until {datetime.fromtimestamp(expires, UTC):%Y-%m-%d}")
    return ", ".join(parts) or "no details"


def _names(certificate: Mapping[str, Any]) -> list[str]:
    alternative = [
        str(value)
        for kind, value in certificate.get("subjectAltName", ())
        if kind in ("DNS", "IP Address")
    ]
    if alternative:
        return alternative
    common = _name_of(certificate.get("subject", ()), ("commonName",))
    return [common] if common else []


def _name_of(
    name: Sequence[Sequence[tuple[str, str]]],
    keys: tuple[str, ...] = ("commonName", "organizationalUnitName", "organizationName"),
) -> str:
    """The most telling part of a certificate's subject or issuer."""
    attributes = {key: value for rdn in name for key, value in rdn}
    return next((attributes[key] for key in keys if attributes.get(key)), "")


def _expiry(certificate: Mapping[str, Any]) -> float | None:
    not_after = certificate.get("notAfter")
    if not isinstance(not_after, str):
        return None
    try:
        return float(ssl.cert_time_to_seconds(not_after))
    except ValueError:
        return None


def _figure(value: float | None) -> str:
    if value is None:
        return "unknown"
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _ignore(record: dict[str, Any]) -> None:
    """A page's records are not needed: only its envelope's count."""

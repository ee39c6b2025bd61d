"""Secure serving with real TLS clients: HTTPS, basic auth on every path, mutual TLS, and a bad
web config refused at start.

Most tests run :class:`ExporterServer` in this process with a stub app, so each request is a
real TLS handshake and a real HTTP exchange without a poller behind it; two run the whole
exporter (``python -m exporter --demo``) as a subprocess.
"""

from __future__ import annotations

import base64
import http.client
import logging
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

from exporter.basicauth import PasswordChecker
from exporter.web import ExporterServer, WebApp
from exporter.webconfig import load_web_config
from tests.httpclient import fetch
from tests.logfmt import parse_line
from tests.pki import PKI, client_context, make_pki

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret-scrape-password"
PASSWORD_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast
METRICS = b"# HELP simplivity_up Whether the last poll succeeded.\nsimplivity_up 1\n"
PATHS = ("/", "/metrics", "/-/healthy", "/-/ready")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


GOOD = basic("prometheus", PASSWORD)
SECRETS = (PASSWORD, PASSWORD_HASH, GOOD.split()[1])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def web_config_file(pki: PKI, *, users: bool = True, mutual: bool = False) -> Path:
    text = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    if mutual:
        text += "  client_auth_type: RequireAndVerifyClientCert\n"
        text += "  client_ca_file: clients-ca.crt\n"
    text += "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
    if users:
        text += f"basic_auth_users:\n  prometheus: '{PASSWORD_HASH}'\n"
    path = pki.dir / f"web-{users}-{mutual}.yml"
    path.write_text(text)
    return path


@dataclass
class StubApp:
    """The exporter's side of the web layer, recording what the handlers asked of it."""

    reloads: list[None] = field(default_factory=list)
    lifecycle: bool = True

    def web_app(self) -> WebApp:
        return WebApp(
            render_metrics=lambda gzipped: METRICS,
            statuses=lambda: [],
            ready=lambda: True,
            reload=self.reload,
            lifecycle=self.lifecycle,
        )

    def reload(self) -> tuple[bool, str]:
        self.reloads.append(None)
        return True, "reloaded"


@dataclass
class Running:
    server: ExporterServer
    app: StubApp

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


Serve = Callable[..., Running]


@pytest.fixture(scope="module")
def serve(pki: PKI) -> Iterator[Serve]:
    """``serve(users=, mutual=, checkpw=)``: an in-process web server on a free port.

    Servers are shared by the tests of this module (stopping one takes up to half a second,
    the server loop's poll interval), except those with their own ``checkpw``.
    """
    started: dict[tuple[bool, bool], Running] = {}
    own: list[Running] = []

    def start(
        *, users: bool = True, mutual: bool = False, checkpw: PasswordChecker | None = None
    ) -> Running:
        key = (users, mutual)
        if checkpw is None and key in started:
            return started[key]
        web_config = load_web_config(
            web_config_file(pki, users=users, mutual=mutual), checkpw=checkpw
        )
        app = StubApp()
        server = ExporterServer(("127.0.0.1", 0), app.web_app(), web_config)
        server.serve_in_background()
        running = Running(server, app)
        if checkpw is None:
            started[key] = running
        else:
            own.append(running)
        return running

    yield start
    for running in [*started.values(), *own]:
        running.server.shutdown()
        running.server.server_close()


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a test does, nothing the exporter logs, at any level, holds a credential."""
    caplog.set_level(logging.DEBUG)
    yield
    for secret in SECRETS:
        assert secret not in caplog.text


# --- HTTPS -------------------------------------------------------------------------------


def test_https_serves_metrics_with_a_certificate_the_client_verifies(
    pki: PKI, serve: Serve
) -> None:
    running = serve(users=False)
    assert running.server.url == f"https://127.0.0.1:{running.port}"
    answer = fetch(running.port, "/metrics", client_context(pki))
    assert answer.status == 200
    assert answer.body == METRICS
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_a_client_that_does_not_trust_the_ca_refuses_the_server(pki: PKI, serve: Serve) -> None:
    running = serve(users=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        fetch(running.port, "/metrics", ssl.create_default_context())


def test_plain_http_to_the_tls_port_gets_no_answer(pki: PKI, serve: Serve) -> None:
    running = serve(users=False)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        fetch(running.port, "/metrics", None)
    assert fetch(running.port, "/metrics", client_context(pki)).status == 200


# --- basic auth --------------------------------------------------------------------------

REFUSED = {
    "no header": None,
    "wrong password": basic("prometheus", PASSWORD + "x"),
    "empty password": basic("prometheus", ""),
    "unknown user": basic("mallory", PASSWORD),
    "other scheme": "Bearer " + PASSWORD,
    "not base64": "Basic " + PASSWORD,
}


@pytest.mark.parametrize("path", [*PATHS, "/no-such-page"])
@pytest.mark.parametrize("authorization", REFUSED.values(), ids=REFUSED.keys())
def test_a_wrong_or_missing_password_gets_401_on_every_path(
    pki: PKI, serve: Serve, path: str, authorization: str | None
) -> None:
    running = serve()
    answer = fetch(running.port, path, client_context(pki), authorization)
    assert answer.status == 401
    assert answer.headers["www-authenticate"].startswith("Basic realm=")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.body == b"Unauthorized.\n"


@pytest.mark.parametrize("authorization", REFUSED.values(), ids=REFUSED.keys())
def test_a_wrong_password_cannot_reload_or_peek_with_head(
    pki: PKI, serve: Serve, authorization: str | None
) -> None:
    running = serve()
    context = client_context(pki)
    reloads = len(running.app.reloads)
    assert fetch(running.port, "/-/reload", context, authorization, "POST").status == 401
    assert fetch(running.port, "/metrics", context, authorization, "HEAD").status == 401
    assert len(running.app.reloads) == reloads


def test_the_right_password_gets_200_on_every_path(
    pki: PKI, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    running = serve()
    context = client_context(pki)
    for path in PATHS:
        answer = fetch(running.port, path, context, GOOD)
        assert (path, answer.status) == (path, 200)
        assert "www-authenticate" not in answer.headers
    assert fetch(running.port, "/metrics", context, GOOD).body == METRICS
    reloads = len(running.app.reloads)
    assert fetch(running.port, "/-/reload", context, GOOD, "POST").status == 200
    assert len(running.app.reloads) == reloads + 1
    assert '"GET /metrics HTTP/1.1" 200' in caplog.text  # the secrets grep covers request logs


def test_reload_needs_post_and_the_lifecycle_flag(pki: PKI) -> None:
    context = client_context(pki)
    for lifecycle in (False, True):
        app = StubApp(lifecycle=lifecycle)
        server = ExporterServer(
            ("127.0.0.1", 0), app.web_app(), load_web_config(web_config_file(pki))
        )
        server.serve_in_background()
        try:
            port = int(server.server_address[1])
            for method in ("GET", "HEAD", "PUT", "DELETE"):
                answer = fetch(port, "/-/reload", context, GOOD, method)
                assert (method, answer.status, answer.headers["allow"]) == (method, 405, "POST")
            answer = fetch(port, "/-/reload", context, GOOD, "POST")
            if lifecycle:
                assert (answer.status, answer.body) == (200, b"reloaded\n")
            else:
                assert (answer.status, answer.body) == (403, b"Lifecycle API is not enabled.\n")
            assert len(app.reloads) == int(lifecycle)
            answer = fetch(port, "/metrics", context, GOOD, "POST")
            assert (answer.status, answer.headers["allow"]) == (405, "GET, HEAD")
        finally:
            server.shutdown()
            server.server_close()


def test_repeated_scrapes_check_the_password_once(pki: PKI, serve: Serve) -> None:
    calls: list[None] = []

    def checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(None)
        return bcrypt.checkpw(password, hashed)

    running = serve(checkpw=checkpw)
    for _ in range(5):
        assert fetch(running.port, "/metrics", client_context(pki), GOOD).status == 200
    assert len(calls) == 1


# --- mutual TLS --------------------------------------------------------------------------


def test_mutual_tls_rejects_a_client_without_a_certificate(pki: PKI, serve: Serve) -> None:
    running = serve(users=False, mutual=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(running.port, "/metrics", client_context(pki))


def test_mutual_tls_rejects_a_certificate_from_another_ca(pki: PKI, serve: Serve) -> None:
    running = serve(users=False, mutual=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(running.port, "/metrics", client_context(pki, pki.stranger))


def test_mutual_tls_accepts_a_certificate_from_the_client_ca(pki: PKI, serve: Serve) -> None:
    running = serve(users=False, mutual=True)
    for path in PATHS:
        assert fetch(running.port, path, client_context(pki, pki.client)).status == 200


def test_mutual_tls_and_basic_auth_both_apply(pki: PKI, serve: Serve) -> None:
    running = serve(mutual=True)
    context = client_context(pki, pki.client)
    assert fetch(running.port, "/metrics", context).status == 401
    assert fetch(running.port, "/metrics", context, GOOD).status == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        fetch(running.port, "/metrics", client_context(pki), GOOD)


# --- the whole exporter ------------------------------------------------------------------


class Exporter:
    """``python -m exporter`` as a subprocess, its stderr collected line by line."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "exporter", "--demo", *args]
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for_line(self, needle: str, timeout: float = 30.0) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if needle in line), None)

        with self.changed:
            self.changed.wait_for(lambda: found() or self.process.poll() is not None, timeout)
            line = found()
        assert line is not None, f"no {needle!r} in the exporter's output:\n{self.stderr}"
        return line

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.reader.join(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code

    @property
    def stderr(self) -> str:
        with self.changed:
            return "".join(self.lines)


def test_the_exporter_serves_https_with_basic_auth(pki: PKI) -> None:
    exporter = Exporter(
        "--web.listen-address",
        "127.0.0.1:0",
        "--web.config.file",
        str(web_config_file(pki)),
        "--log.level",
        "debug",
    )
    try:
        line = exporter.wait_for_line("listening on https://127.0.0.1:")
        port = int(line.split("https://127.0.0.1:")[1].split()[0])
        context = client_context(pki)
        for path in PATHS:
            assert fetch(port, path, context).status == 401
        answer = fetch(port, "/metrics", context, GOOD)
        assert answer.status == 200
        assert b"simplivity_" in answer.body
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            fetch(port, "/metrics", None, GOOD)
    finally:
        code = exporter.stop()
    assert code == 0, exporter.stderr
    for secret in SECRETS:
        assert secret not in exporter.stderr


BAD_WEB_CONFIGS = {
    "missing file": (None, "cannot read the file: No such file or directory"),
    "broken YAML": ("tls_server_config: [\n", "not valid YAML at line 2, column 1"),
    "missing key file": (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: nope.key\n",
        "tls_server_config.key_file: cannot read {dir}/nope.key: No such file or directory",
    ),
    "plain password": (
        f"basic_auth_users:\n  prometheus: {PASSWORD}\n",
        "basic_auth_users.prometheus: the password must be a bcrypt hash",
    ),
}


@pytest.mark.parametrize(("text", "expected"), BAD_WEB_CONFIGS.values(), ids=BAD_WEB_CONFIGS.keys())
def test_an_invalid_web_config_stops_the_exporter_at_start(
    pki: PKI, text: str | None, expected: str
) -> None:
    path = pki.dir / "bad-web.yml"
    path.unlink(missing_ok=True)
    if text is not None:
        path.write_text(text)
    exporter = Exporter("--web.listen-address", "127.0.0.1:0", "--web.config.file", str(path))
    exporter.process.wait(timeout=30)  # it exits by itself: no signal is needed
    code = exporter.stop()
    stderr = exporter.stderr
    assert code == 2, stderr
    assert "Traceback" not in stderr
    records = [parse_line(line) for line in stderr.splitlines()]
    [error] = [record["msg"] for record in records if record["level"] == "error"]
    assert error.startswith(f"{path} has 1 problem(s):\n")
    assert f"  - {pki.fill(expected)}" in error
    assert not [record for record in records if record["msg"].startswith("listening on")]
    assert PASSWORD not in stderr

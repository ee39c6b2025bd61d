"""Passwords and tokens never show: not in logs at any level, metrics, pages or messages.

The real command runs at ``--log.level debug`` against simulated controllers that hand out
tokens, refuse them with 401 bodies that echo them back (as real controllers do), refuse wrong
credentials, fail with 500s and garbage, and get a reload with a config that misplaces
passwords. Then every byte the exporter produced is searched for every secret: the log, every
HTTP answer, and the output of ``--once``.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import yaml

from exporter.simulator import FederationSpec, SimulatedController
from tests.conftest import wait_until
from tests.live_exporter import ROOT, ExporterProcess, Scrape


def password(kind: str) -> str:
    """A password with characters that every format escapes differently, and a unique core."""
    return f"{kind}-{secrets.token_hex(8)}\"'\\ é&<>%+="


def variants(secret: str) -> set[str]:
    """The secret as each output format would write it."""
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        html.escape(secret),
        quote(secret),
        quote_plus(secret),
        repr(secret)[1:-1],
        secret.replace("\\", "\\\\").replace('"', '\\"'),  # Prometheus label escaping
    }
    # What survives any escaping: the random hex of a password, the last group of a token.
    forms.update(re.findall(r"[0-9a-f]{12,}", secret))
    return forms


@pytest.fixture
def controllers() -> Iterator[dict[str, SimulatedController]]:
    started: dict[str, SimulatedController] = {}
    for n, name in enumerate(("env", "file", "literal", "wrong")):
        controller = SimulatedController(
            FederationSpec(vms=6, backups_per_vm=10, seed=n), password=password(name)
        )
        controller.start()
        started[name] = controller
    yield started
    for controller in started.values():
        controller.stop()


def config_document(
    controllers: dict[str, SimulatedController], password_file: Path, wrong: str
) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for name, controller in controllers.items():
        entry: dict[str, Any] = {
            "name": name,
            "url": controller.url,
            "username": controller.username,
        }
        if name == "env":
            entry["password"] = "${SVT_PASSWORD}"
        elif name == "file":
            entry["password_file"] = str(password_file)
        elif name == "literal":
            entry["password"] = controller.password
        else:
            entry["password"] = wrong  # refused: the controller's password is another
        entries.append(entry)
    return {
        "poll": {
            "interval_seconds": 1,
            "deadline_seconds": 60,
            "timeout_seconds": 2,
            "max_retries": 1,
        },
        "controllers": entries,
    }


def bad_document(document: dict[str, Any], secret: str) -> dict[str, Any]:
    """The same config with the password misplaced in every way a user might."""
    controller = dict(document["controllers"][0])
    controller["url"] = f"https://administrator:{secret}@10.0.0.10"
    controller["passwd"] = secret
    controller["password"] = 12345
    return {**document, "controllers": [controller, *document["controllers"][1:]]}


def errors_of(scrape: Scrape, controller: str) -> float:
    return sum(scrape.errors(controller).values())


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_password_or_token_appears_anywhere(
    tmp_path: Path, controllers: dict[str, SimulatedController], log_format: str
) -> None:
    wrong = password("configured-wrongly")
    password_file = tmp_path / "svt-password"
    password_file.write_text(controllers["file"].password + "\n", encoding="utf-8")
    document = config_document(controllers, password_file, wrong)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    env = {"SVT_PASSWORD": controllers["env"].password}
    outputs: dict[str, str] = {}

    args = ("--config.file", str(config), "--log.level", "debug", "--log.format", log_format)
    with ExporterProcess(
        *args, "--web.enable-lifecycle", log_path=tmp_path / "exporter.log", env=env
    ) as exporter:

        def scrape_when(condition: Callable[[Scrape], bool], what: str) -> Scrape:
            def check() -> Scrape | None:
                scrape = exporter.scrape()
                return scrape if condition(scrape) else None

            result: Scrape = wait_until(check, timeout=20, what=what)
            return result

        scrape_when(
            lambda s: (
                all(s.up(n) == 1 for n in ("env", "file", "literal"))
                and s.errors("wrong")["auth"] >= 1
            ),
            "first polls",
        )
        before = exporter.scrape()
        # Tokens refused with 401 bodies that echo them, revoked, expired; 500s; garbage.
        controllers["env"].faults.fail_next(6, status=401)
        controllers["file"].revoke_tokens()
        controllers["literal"].expire_tokens()
        controllers["wrong"].faults.fail_next_logins(4, status=500)
        scrape_when(
            lambda s: (
                s.errors("env")["auth"] > before.errors("env")["auth"]
                and s.value("simplivity_logins_total", controller="file")
                != before.value("simplivity_logins_total", controller="file")
                and s.value("simplivity_logins_total", controller="literal")
                != before.value("simplivity_logins_total", controller="literal")
            ),
            "the token faults",
        )
        controllers["file"].faults.malformed = "not_json"
        scrape_when(lambda s: s.errors("file")["decode"] >= 1, "the garbage")
        controllers["file"].faults.malformed = None

        # A reload with the passwords misplaced is refused; its answer names no secret.
        secret = controllers["literal"].password
        config.write_text(yaml.safe_dump(bad_document(document, secret)), encoding="utf-8")
        status, body = exporter.get("/-/reload", method="POST")
        assert status == 500
        outputs["POST /-/reload (bad)"] = body.decode("utf-8", "replace")
        exporter.signal(signal.SIGHUP)
        config.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        status, body = exporter.get("/-/reload", method="POST")
        assert status == 200
        outputs["POST /-/reload"] = body.decode()

        for path in ("/", "/metrics", "/-/healthy", "/-/ready"):
            outputs[path] = exporter.get(path)[1].decode("utf-8", "replace")
        assert '<span class="failed">' in outputs["/"]  # the errors were really there
    assert exporter.process.returncode == 0
    outputs["log"] = exporter.log()
    once = subprocess.run(
        [sys.executable, "-m", "exporter", "--once", *args],
        capture_output=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **env},
        check=False,
    )
    assert once.returncode == 1  # "wrong" is refused
    outputs["--once stdout"] = once.stdout.decode("utf-8", "replace")
    outputs["--once stderr"] = once.stderr.decode("utf-8", "replace")

    tokens = [token for c in controllers.values() for token in c.issued_tokens()]
    assert len(tokens) >= 5  # first logins and the logins after every dead token
    # The log really is at debug level and holds the faults, so the search means something.
    assert " level=debug " in outputs["log"] or '"level": "debug"' in outputs["log"]
    assert "configuration reload failed" in outputs["log"]
    assert "refused the credentials" in outputs["log"]
    assert "HTTP 500" in outputs["log"]
    assert controllers["wrong"].stats.snapshot().login_failures >= 1

    passwords = [c.password for c in controllers.values()] + [wrong]
    leaks = [
        f"{where}: {form!r}"
        for where, text in outputs.items()
        for secret in passwords + tokens
        for form in variants(secret)
        if form and form in text
    ]
    assert leaks == []


def test_secrets_a_controller_echoes_back_are_shown_nowhere(tmp_path: Path) -> None:
    """One controller echoes the password it was sent in its login errors, another the
    ``Authorization`` header in its data errors: the messages are shown (on the landing page,
    in the log), the secrets in them are not."""
    configured = password("configured")
    small = FederationSpec(vms=6, backups_per_vm=10)
    refusing = SimulatedController(small, password="other")
    echoing = SimulatedController(small, password=password("echo"))
    for controller in (refusing, echoing):
        controller.faults.echo_secrets = True
        controller.start()
    try:
        refusing.faults.bad_credentials_status = 500  # an error, not a refusal: its text shows
        echoing.faults.paths = None  # every data request of the poll fails, echoing its token
        document = {
            "poll": {
                "interval_seconds": 1,
                "deadline_seconds": 60,
                "timeout_seconds": 2,
                "max_retries": 1,
            },
            "controllers": [
                {"name": "refusing", "url": refusing.url, "username": refusing.username,
                 "password": configured},
                {"name": "echoing", "url": echoing.url, "username": echoing.username,
                 "password": echoing.password},
            ],
        }  # fmt: skip
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
        args = ("--config.file", str(config), "--log.level", "debug")
        with ExporterProcess(*args, log_path=tmp_path / "exporter.log") as exporter:
            wait_until(lambda: exporter.scrape().up("echoing") == 1, timeout=20, what="a login")
            echoing.faults.fail_next(100, status=503)
            wait_until(
                lambda: (
                    errors_of(exporter.scrape(), "echoing") >= 1
                    and exporter.scrape().errors("refusing")["http"] >= 1
                ),
                timeout=20,
                what="the echoing errors",
            )
            outputs = {path: exporter.get(path)[1].decode() for path in ("/", "/metrics")}
        outputs["log"] = exporter.log()
    finally:
        refusing.stop()
        echoing.stop()
    # The echoes were there, and shown redacted: the search below means something.
    assert "Bad credentials: grant_type=password" in outputs["log"]
    assert "Authorization: Bearer ********" in outputs["log"]
    assert "********" in outputs["/"]
    secrets_ = [configured, echoing.password, *echoing.issued_tokens()]
    leaks = [
        f"{where}: {form!r}"
        for where, text in outputs.items()
        for secret in secrets_
        for form in variants(secret)
        if form and form in text
    ]
    assert leaks == []

"""What a controller cannot make the client do: stall a poll, lock an account, leak a secret.

Real sockets on 127.0.0.1: the real client (through the poller where the poll is the point)
against simulated controllers that drip, hang, refuse the credentials, hand out tokens that
cannot be sent and echo secrets; and a port that drops every connection, as a firewall does.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from exporter.config import ControllerConfig, PollConfig, Secret, load_config
from exporter.model import AuthError, ConnectError, HTTPStatusError
from exporter.poller import ControllerPoller, ControllerReader, Poller, connect
from exporter.scan import Scanner
from exporter.simplivity import REDACTED, SimplivityClient, worst_case_poll_seconds
from exporter.simulator import FederationSpec, SimulatedController
from tests.test_client import FakeClock, client_for, scan_ids, scanner_of, serve_tls

Start = Callable[..., SimulatedController]
SMALL = FederationSpec(vms=6, backups_per_vm=20)
SECURITY = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def controller_of(simulator: SimulatedController, password: str | None = None) -> ControllerConfig:
    return ControllerConfig(
        name="sim",
        url=simulator.url,
        username=simulator.username,
        password=Secret(password or simulator.password),
    )


def fast(controller: ControllerConfig, poll: PollConfig, stop: threading.Event) -> Scanner:
    return connect(controller, poll, stop, backoff_seconds=0.01)


def poller_for(
    simulator: SimulatedController,
    password: str | None = None,
    factory: Callable[[ControllerConfig, PollConfig, threading.Event], ControllerReader] = fast,
    **poll: Any,
) -> ControllerPoller:
    settings = PollConfig(**{"timeout_seconds": 5, "page_size": 100, **poll})
    return ControllerPoller(controller_of(simulator, password), settings, client_factory=factory)


def timed(poller: ControllerPoller) -> float:
    started = time.monotonic()
    poller.poll_once()
    return time.monotonic() - started


# -- a poll no controller can stall ------------------------------------------------------------


@pytest.mark.parametrize("drip", ["headers", "body"])
def test_a_controller_dripping_its_answer_fails_the_poll_within_the_timeout(
    start_simulator: Start, drip: str
) -> None:
    simulator = start_simulator(SMALL)
    poller = poller_for(simulator, timeout_seconds=2, max_retries=0)
    simulator.faults.drip = drip  # type: ignore[assignment]
    simulator.faults.drip_seconds = 0.2  # far below the per-read timeout: reads never time out
    took = timed(poller)
    assert poller.status.errors["timeout"] == 1
    assert "no answer within 2 s (headers and body)" in (poller.status.last_error or "")
    assert took < 2 + 1


def test_a_poll_past_its_deadline_fails_as_timeout_and_keeps_the_last_good_values(
    start_simulator: Start,
) -> None:
    simulator = start_simulator(FederationSpec(total_backups=3000, vms=20))
    poller = poller_for(simulator, deadline_seconds=1.5, max_concurrency=1)
    poller.poll_once()
    good = poller.status.snapshot
    assert poller.status.up
    assert good is not None
    simulator.faults.request_cost_seconds = 0.2  # each page is quick; 30 pages are not
    took = timed(poller)
    assert not poller.status.up
    assert poller.status.errors["timeout"] == 1
    assert "poll.deadline" in (poller.status.last_error or "")
    assert poller.status.snapshot is good
    assert took < 1.5 + 1


def test_an_answer_that_streams_forever_ends_at_the_poll_deadline(start_simulator: Start) -> None:
    simulator = start_simulator(SMALL)
    poller = poller_for(simulator, timeout_seconds=30, deadline_seconds=2, max_retries=0)
    simulator.faults.malformed = "endless"  # 200, no length, a body that never ends
    took = timed(poller)
    assert poller.status.errors["timeout"] == 1
    assert "the poll ran out of time (2 s, poll.deadline_seconds)" in (
        poller.status.last_error or ""
    )
    assert took < 2 + 1


def test_a_silent_controller_fails_within_the_documented_bound_whatever_the_threads(
    start_simulator: Start,
) -> None:
    """Both of the poll's threads wait for answers that never come: their retries come out of
    one budget, so the poll ends within the bound docs/security.md states for one thread."""
    simulator = start_simulator(SMALL)
    poller = poller_for(simulator, timeout_seconds=1, max_retries=2)
    simulator.faults.paths = None  # the inventory's requests hang too
    simulator.faults.hang_seconds = 3600
    took = timed(poller)
    assert poller.status.errors["timeout"] == 1
    assert took < worst_case_poll_seconds(poller.poll_config, connects=True, backoff=0.01) + 1
    data_requests = sum(
        count
        for path, count in simulator.stats.snapshot().requests_per_path.items()
        if path != "/api/oauth/token"
    )
    # GET /api/version (it answers: the faults hang the listings and the report), then the
    # budget's max_retries retries beside the first try of each of the two threads.
    assert data_requests <= 1 + 2 + 2


def test_an_unreachable_controller_fails_fast_and_says_why(blackhole: int) -> None:
    poll = PollConfig(connect_timeout_seconds=1, timeout_seconds=30, max_retries=1)
    controller = ControllerConfig("sim", f"http://127.0.0.1:{blackhole}", "u", Secret("p"))
    poller = ControllerPoller(controller, poll, client_factory=fast)
    took = timed(poller)
    assert poller.status.errors["connection"] == 1
    assert "within 1 s: wrong address, port or a firewall?" in (poller.status.last_error or "")
    assert took < worst_case_poll_seconds(poll, connects=False, backoff=0.01) + 1


def test_a_tls_handshake_that_trickles_ends_with_the_exchange() -> None:
    """A port that answers the TLS handshake a byte at a time, each in time for the socket's
    timeout: the exchange's deadline ends it all the same."""
    stop = threading.Event()

    def trickle(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            # A handshake record of 16 KiB is announced, then sent a byte every 0.2 s.
            conn.sendall(b"\x16\x03\x03\x40\x00")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"\x02")
                except OSError:
                    return  # the client gave up

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        server = threading.Thread(target=trickle, args=(listener,), daemon=True)
        server.start()
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        poll = PollConfig(timeout_seconds=2, max_retries=0)
        poller = ControllerPoller(
            ControllerConfig("sim", url, "u", Secret("p")), poll, client_factory=fast
        )
        took = timed(poller)
        stop.set()
        server.join(timeout=5)
    assert poller.status.errors["timeout"] == 1
    assert took < 2 + 1


def test_a_refused_connection_names_the_cause(start_simulator: Start) -> None:
    simulator = start_simulator(SMALL)
    simulator.stop()
    with pytest.raises(ConnectError, match="connection refused: nothing listens on that port"):
        scan_ids(scanner_of(client_for(simulator, max_retries=0)))


def test_plain_http_to_a_tls_port_says_to_use_https(start_simulator: Start, tmp_path: Path) -> None:
    simulator = serve_tls(start_simulator, trustme.CA(), tmp_path, "127.0.0.1")
    url = simulator.url.replace("https://", "http://")
    with pytest.raises(ConnectError, match="the port speaks TLS: use https://"):
        scan_ids(
            Scanner(client_for(simulator, url=url, max_retries=0), page_size=100, max_concurrency=1)
        )


def test_the_docs_state_the_bounds_the_code_keeps() -> None:
    text = " ".join(SECURITY.read_text(encoding="utf-8").split())
    defaults = PollConfig()
    unreachable = worst_case_poll_seconds(defaults, connects=False)
    silent = worst_case_poll_seconds(defaults, connects=True)
    assert f"{unreachable:.0f} s" in text  # the default bounds, in the security section
    assert f"{silent:.0f} s" in text
    assert "(max_retries + 1) \N{MULTIPLICATION SIGN} connect_timeout_seconds" in text


# -- logins that cannot lock an account --------------------------------------------------------


def test_a_wrong_password_costs_one_failed_login_per_backoff_step(start_simulator: Start) -> None:
    """Fifty polls of a controller that refuses the credentials: the simulator sees a failed
    login only where the back-off (one interval, doubling, at most the maximum) has run out."""
    clock = FakeClock()
    simulator = start_simulator(SMALL)

    def factory(c: ControllerConfig, p: PollConfig, stop: threading.Event) -> Scanner:
        client = SimplivityClient(c, p, stop=stop, clock=clock, backoff_seconds=0.01)
        return Scanner(client, page_size=p.page_size, max_concurrency=p.max_concurrency)

    interval, longest = 60.0, 600.0
    poller = poller_for(
        simulator,
        "wrong-password",
        factory,
        interval_seconds=interval,
        max_login_backoff_seconds=longest,
    )
    attempts: list[int] = []
    for n in range(50):
        before = simulator.stats.snapshot().login_failures
        poller.poll_once()
        if simulator.stats.snapshot().login_failures > before:
            attempts.append(n)
        assert poller.status.errors["auth"] == n + 1  # every poll fails, and says why
        clock.now += interval
    # The schedule the back-off promises, step by step.
    expected, at, step = [], 0, 1
    while at < 50:
        expected.append(at)
        at += step
        step = min(step * 2, int(longest / interval))
    assert attempts == expected
    assert simulator.stats.snapshot().login_failures == len(expected)
    assert poller.status.login_backoff_seconds == longest
    message = poller.status.last_error or ""
    assert "next attempt at the first poll after" in message
    assert "reload after fixing the password" in message
    assert "wrong-password" not in message


def test_one_login_serves_every_reader_of_a_poll(start_simulator: Start) -> None:
    simulator = start_simulator(SMALL)
    poller = poller_for(simulator, "wrong-password")
    poller.poll_once()
    assert simulator.stats.snapshot().login_failures == 1  # not one per thread
    assert poller.status.errors["auth"] == 1
    assert poller.status.login_backoff_seconds == poller.poll_config.interval_seconds
    good = poller_for(simulator)
    good.poll_once()
    assert good.status.up
    assert simulator.stats.snapshot().logins == 1


def test_fixing_the_password_file_and_reloading_logs_in_at_once(
    start_simulator: Start, tmp_path: Path
) -> None:
    simulator = start_simulator(SMALL)
    secret = tmp_path / "svt-password"
    secret.write_text("wrong-password\n", encoding="utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"controllers:\n  - name: sim\n    url: {simulator.url}\n"
        f"    username: {simulator.username}\n    password_file: {secret}\n",
        encoding="utf-8",
    )
    poller = Poller(load_config(config), client_factory=fast)
    (status,) = poller.poll_all_once()
    assert status.errors["auth"] == 1
    poller.apply(load_config(config))  # a reload that changes nothing keeps the back-off
    (status,) = poller.poll_all_once()
    assert status.errors["auth"] == 2
    assert simulator.stats.snapshot().login_failures == 1
    secret.write_text(simulator.password + "\n", encoding="utf-8")
    poller.apply(load_config(config))
    (status,) = poller.poll_all_once()
    assert status.up
    assert status.login_backoff_seconds == 0
    assert simulator.stats.snapshot().logins == 1
    poller.shutdown()


@pytest.mark.parametrize("kind", ["crlf", "oversized"])
def test_a_token_that_cannot_be_sent_fails_the_poll_as_auth_and_the_next_logs_in(
    start_simulator: Start, kind: str
) -> None:
    simulator = start_simulator(SMALL)
    simulator.faults.bad_tokens_next(1, kind)  # type: ignore[arg-type]
    poller = poller_for(simulator)
    poller.poll_once()
    assert poller.status.errors["auth"] == 1
    assert "cannot be sent in a header" in (poller.status.last_error or "")
    assert poller.status.login_backoff_seconds == 0  # not the credentials: no back-off
    poller.poll_once()
    assert poller.status.up
    assert simulator.stats.snapshot().logins == 2


# -- secrets stay secret even when the controller leaks them -----------------------------------


def test_an_echoed_password_is_redacted_from_the_error(start_simulator: Start) -> None:
    simulator = start_simulator(SMALL)
    simulator.faults.echo_secrets = True
    simulator.faults.bad_credentials_status = 500  # not a refusal: its message is shown
    password = 'pw-"quoted" & spaced+plus%'
    client = client_for(simulator, password=password, max_retries=0)
    with pytest.raises(HTTPStatusError) as caught:
        scan_ids(scanner_of(client))
    message = str(caught.value)
    assert "Bad credentials: grant_type=password" in message  # the echo is really there
    assert REDACTED in message
    for form in ("pw-", "quoted", "spaced"):
        assert form not in message


def test_an_echoed_token_is_redacted_from_the_error(start_simulator: Start) -> None:
    simulator = start_simulator(SMALL)
    simulator.faults.echo_secrets = True
    simulator.faults.fail_next(5, status=503)
    client = client_for(simulator, max_retries=0)
    with pytest.raises(HTTPStatusError) as caught:
        scan_ids(scanner_of(client))
    message = str(caught.value)
    (token,) = simulator.issued_tokens()
    assert f"Authorization: Bearer {REDACTED}" in message
    assert token not in message
    assert client.redact(f"token {token}, or bearer  {token}x") == (
        f"token {REDACTED}, or bearer  {REDACTED}"
    )


def test_a_refused_login_says_nothing_the_controller_wrote(start_simulator: Start) -> None:
    simulator = start_simulator(SMALL)
    simulator.faults.echo_secrets = True
    with pytest.raises(AuthError) as caught:
        scan_ids(
            Scanner(client_for(simulator, password="wrong-pw"), page_size=100, max_concurrency=1)
        )
    assert "wrong-pw" not in str(caught.value)
    assert re.search(r"HTTP 401", str(caught.value))

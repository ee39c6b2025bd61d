"""The real REST client against the simulated controller, over sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme

from exporter.backups import BACKUPS, FIELDS, Aggregator
from exporter.config import ControllerConfig, PollConfig, Secret, TLSConfig
from exporter.model import (
    AuthError,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    RequestTimeout,
    SimplivityError,
    TLSError,
)
from exporter.pages import PageCounter
from exporter.scan import Scanner
from exporter.simplivity import SimplivityClient
from exporter.simulator import FederationSpec, SimulatedController, generate_backups
from exporter.store import StoreScan
from tests.conftest import wait_until

Start = Callable[..., SimulatedController]
NOW = 1_709_500_000.0
NO_TLS_OPTIONS = TLSConfig()


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def client_for(
    controller: SimulatedController,
    *,
    password: str | None = None,
    tls: TLSConfig = NO_TLS_OPTIONS,
    url: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    **poll: Any,
) -> SimplivityClient:
    config = ControllerConfig(
        name="sim",
        url=url or controller.url,
        username=controller.username,
        password=Secret(password or controller.password),
        tls=tls,
    )
    settings = PollConfig(**{"timeout_seconds": 5, "page_size": 100, **poll})
    return SimplivityClient(config, settings, clock=clock, backoff_seconds=0.01)


def scanner_of(client: SimplivityClient) -> Scanner:
    """The client paged as a poll pages it."""
    poll = client.poll
    return Scanner(client, page_size=poll.page_size, max_concurrency=poll.max_concurrency)


def reader_for(controller: SimulatedController, **options: Any) -> Scanner:
    return scanner_of(client_for(controller, **options))


def read_backups(reader: Scanner, sink: Callable[[dict[str, Any]], None]) -> None:
    """Every backup of the federation to ``sink``, once, through the real paging and stitching."""
    reader.read(BACKUPS, PageCounter(BACKUPS, sink))


def scan_ids(reader: Scanner) -> list[str]:
    ids: list[str] = []
    read_backups(reader, lambda backup: ids.append(backup["id"]))
    return ids


def test_pages_through_every_backup_exactly_once(start_simulator: Start) -> None:
    backups = generate_backups(FederationSpec(total_backups=2345, vms=60), NOW)
    simulator = start_simulator(backups)
    reader = reader_for(simulator, page_size=100)
    ids = scan_ids(reader)
    assert len(ids) == len(set(ids)) == 2345
    assert set(ids) == {backup["id"] for backup in backups}
    assert reader.logins == 1
    # Every page asked for the same limit; the offsets step through the whole listing.
    pages = simulator.stats.snapshot().pages
    assert {limit for _, limit in pages} == {100}
    assert len(pages) >= 24


def test_asks_only_for_the_fields_the_metrics_need(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    received: list[dict[str, Any]] = []
    read_backups(reader_for(simulator), received.append)
    assert received
    assert all(set(backup) <= set(FIELDS) for backup in received)
    assert any(set(backup) == set(FIELDS) for backup in received)


def test_aggregates_like_a_direct_count_of_the_federation(start_simulator: Start) -> None:
    backups = generate_backups(FederationSpec(), NOW)
    simulator = start_simulator(backups)
    through_api = StoreScan(keep=False)
    reader_for(simulator, page_size=37).read(BACKUPS, through_api)
    direct = Aggregator()
    for backup in backups:
        direct.add(backup)
    assert through_api.snapshot() == direct.snapshot()


def test_one_login_is_reused_across_polls(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    reader = reader_for(simulator, page_size=50)
    for _ in range(3):
        scan_ids(reader)
    assert simulator.stats.snapshot().logins == reader.logins == 1


def test_logs_in_again_when_the_controller_expired_the_token(start_simulator: Start) -> None:
    controller_clock = FakeClock()
    simulator = start_simulator(FederationSpec(), clock=controller_clock)
    reader = reader_for(simulator)
    first = scan_ids(reader)
    controller_clock.now += 601  # idle for more than 10 minutes, as the controller sees it
    assert scan_ids(reader) == first
    assert reader.logins == 2
    assert simulator.stats.snapshot().status_counts.get(401) == 1


def test_renews_a_token_about_to_die_without_being_refused(start_simulator: Start) -> None:
    shared = FakeClock()
    simulator = start_simulator(FederationSpec(), clock=shared)
    reader = reader_for(simulator, clock=shared)
    scan_ids(reader)
    shared.now += 570  # within a minute of the idle limit: renew before the controller refuses
    scan_ids(reader)
    assert reader.logins == 2
    assert 401 not in simulator.stats.snapshot().status_counts
    shared.now += 86400 - 30  # the 24-hour limit, even though the token was just used
    scan_ids(reader)
    assert reader.logins == 3


def test_a_revoked_token_costs_one_login_and_no_error(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    reader = reader_for(simulator, page_size=50)
    scan_ids(reader)
    simulator.revoke_tokens()
    assert len(scan_ids(reader)) == simulator.backup_count()
    assert reader.logins == 2


def test_transient_500s_are_retried_within_the_poll(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    simulator.faults.fail_next(2, status=500)
    reader = reader_for(simulator, max_retries=3)
    assert len(scan_ids(reader)) == simulator.backup_count()
    assert simulator.stats.snapshot().status_counts[500] == 2


def test_persistent_500s_fail_the_scan_as_http(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    simulator.faults.fail_next(100, status=500)
    with pytest.raises(HTTPStatusError) as caught:
        scan_ids(reader_for(simulator, max_retries=2))
    assert caught.value.reason == "http"
    assert "HTTP 500" in str(caught.value)
    assert "JDBC" in str(caught.value)
    # The simulator counts an answer once it is sent: the client may have it a moment before.
    wait_until(lambda: simulator.stats.snapshot().status_counts[500] >= 3)
    assert simulator.stats.snapshot().status_counts[500] == 3


@pytest.mark.parametrize("status", [400, 401])
def test_refused_credentials_are_auth_errors(start_simulator: Start, status: int) -> None:
    simulator = start_simulator(FederationSpec())
    simulator.faults.bad_credentials_status = status
    with pytest.raises(AuthError) as caught:
        scan_ids(reader_for(simulator, password="wrong-password"))
    assert caught.value.reason == "auth"
    assert "wrong-password" not in str(caught.value)


def test_a_hanging_controller_times_out(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    simulator.faults.hang_seconds = 30
    started = time.monotonic()
    with pytest.raises(RequestTimeout):
        scan_ids(reader_for(simulator, timeout_seconds=1, max_retries=1))
    assert time.monotonic() - started < 20  # two tries of one second, not the 30 s hang


def test_an_answer_that_never_ends_times_out(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    simulator.faults.malformed = "endless"
    with pytest.raises(RequestTimeout):
        scan_ids(reader_for(simulator, timeout_seconds=1, max_retries=0))


def test_connection_refused_is_a_connection_error(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    url = simulator.url
    simulator.stop()
    with pytest.raises(ConnectError) as caught:
        scan_ids(reader_for(simulator, url=url, max_retries=1))
    assert "connection refused" in str(caught.value)


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "not_json",
        "count_too_large",
        "short_page",
        "empty_page",
    ],
)
def test_malformed_answers_are_decode_errors(start_simulator: Start, kind: str) -> None:
    simulator = start_simulator(FederationSpec())
    simulator.faults.malformed = kind  # type: ignore[assignment]
    reader = reader_for(simulator, page_size=50)
    with pytest.raises(DecodeError) as caught:
        reader.read(BACKUPS, StoreScan(keep=False))
    assert caught.value.reason == "decode"


def test_concurrent_pages_stay_within_max_concurrency(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec(total_backups=3000))
    simulator.faults.request_cost_seconds = 0.02
    reader = reader_for(simulator, page_size=100, max_concurrency=4)
    ids = scan_ids(reader)
    assert len(ids) == len(set(ids)) == 3000
    assert 2 <= simulator.stats.snapshot().max_in_flight <= 4


@pytest.mark.parametrize("concurrency", [1, 3])
def test_churn_during_a_scan_never_double_counts_or_misses_a_survivor(
    start_simulator: Start, concurrency: int
) -> None:
    simulator = start_simulator(FederationSpec(total_backups=3000, seed=7))
    before = simulator.backup_ids()
    simulator.faults.churn_create_per_request = 40
    simulator.faults.churn_expire_per_request = 40
    ids = scan_ids(reader_for(simulator, page_size=100, max_concurrency=concurrency))
    simulator.faults.churn_create_per_request = 0
    simulator.faults.churn_expire_per_request = 0
    after = simulator.backup_ids()
    duplicates = [backup_id for backup_id, n in Counter(ids).items() if n > 1]
    assert duplicates == []
    survivors = before & after
    assert survivors - set(ids) == set()
    assert set(ids) <= before | after | set(ids)  # nothing invented
    assert len(before - after) > 100  # the churn really happened


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def serve_tls(start: Start, ca: trustme.CA, tmp_path: Path, *names: str) -> SimulatedController:
    cert = ca.issue_cert(*names)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return start(FederationSpec(), tls=(str(cert_file), str(key_file)))


def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_tls_from_an_unknown_ca_fails_as_tls(
    start_simulator: Start, ca: trustme.CA, tmp_path: Path
) -> None:
    simulator = serve_tls(start_simulator, ca, tmp_path, "127.0.0.1")
    with pytest.raises(TLSError) as caught:
        scan_ids(reader_for(simulator))
    assert "unknown CA" in str(caught.value) or "verification failed" in str(caught.value)


def test_tls_with_ca_file_succeeds(start_simulator: Start, ca: trustme.CA, tmp_path: Path) -> None:
    simulator = serve_tls(start_simulator, ca, tmp_path, "127.0.0.1")
    reader = reader_for(simulator, tls=TLSConfig(ca_file=ca_file(ca, tmp_path)))
    assert len(scan_ids(reader)) == simulator.backup_count()


def test_tls_with_a_wrong_host_name_fails_and_server_name_fixes_it(
    start_simulator: Start, ca: trustme.CA, tmp_path: Path
) -> None:
    simulator = serve_tls(start_simulator, ca, tmp_path, "ovc01.example.test")
    trusted = ca_file(ca, tmp_path)
    with pytest.raises(TLSError) as caught:
        scan_ids(reader_for(simulator, tls=TLSConfig(ca_file=trusted)))
    assert "tls.server_name" in str(caught.value)
    named = TLSConfig(ca_file=trusted, server_name="ovc01.example.test")
    assert len(scan_ids(reader_for(simulator, tls=named))) == simulator.backup_count()


def test_insecure_skip_verify_is_explicit(
    start_simulator: Start, ca: trustme.CA, tmp_path: Path
) -> None:
    simulator = serve_tls(start_simulator, ca, tmp_path, "127.0.0.1")
    reader = reader_for(simulator, tls=TLSConfig(insecure_skip_verify=True))
    with pytest.warns(requests.packages.urllib3.exceptions.InsecureRequestWarning):  # type: ignore[attr-defined]
        assert len(scan_ids(reader)) == simulator.backup_count()


def test_no_error_message_carries_a_secret(start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    client = client_for(simulator)
    reader = scanner_of(client)
    scan_ids(reader)
    simulator.revoke_tokens()
    simulator.faults.fail_next(10, status=401)  # every request refused, token echoed in body
    with pytest.raises(SimplivityError) as caught:
        scan_ids(reader)
    token = client._token or ""
    message = str(caught.value)
    assert simulator.password not in message
    assert not token or token not in message


def test_a_netrc_entry_for_the_controller_does_not_replace_the_token(
    start_simulator: Start, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password from-netrc\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    simulator = start_simulator(FederationSpec())
    assert len(scan_ids(reader_for(simulator))) == simulator.backup_count()


def test_proxies_come_from_the_environment(
    start_simulator: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = start_simulator(FederationSpec())
    with socket.socket() as probe:  # a port nobody listens on: the "proxy" refuses
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectError):
        scan_ids(reader_for(simulator, max_retries=0))
    # Nothing reached the controller: it went to the proxy.
    assert simulator.stats.snapshot().logins == 0
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert len(scan_ids(reader_for(simulator))) == simulator.backup_count()

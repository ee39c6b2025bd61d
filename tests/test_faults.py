"""Controllers that misbehave, as a user of ``/metrics`` sees them.

One exporter polls a healthy controller and one simulated controller per fault, every second.
All faults start together, last until every faulty controller's data has gone stale, and are
then cleared; every scrape of that run is kept, and each test reads the run of its fault:

- the exporter kept answering ``/metrics``;
- the fault is counted under its ``reason`` of ``simplivity_poll_errors_total`` and
  ``simplivity_up`` is 0;
- the last good data stays while it is younger than ``stale_after_seconds`` and is dropped
  after, while the controller's health series stay;
- the exporter recovers by itself once the fault is cleared (a TLS fault: once the config says
  which CA or name to trust);
- the healthy controller never noticed.

The client-level behaviour of each fault (exact exception, retries) is in ``test_client.py``.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trustme

from exporter.config import ControllerConfig, PollConfig, TLSConfig
from exporter.model import REASONS
from exporter.pages import SORT_FIELD, Collection, PageOutcome, PageSink
from exporter.poller import ControllerReader
from exporter.simulator import FederationSpec, Malformed, SimulatedController
from tests.conftest import wait_until
from tests.live_exporter import (
    FAST_POLL,
    InProcessExporter,
    Lab,
    NameService,
    Scrape,
    controller_config,
    fast_retries,
    patched_resolver,
)
from tests.snapshots import ReaderWrapper

HEALTHY = "healthy"
#: Long enough for a fault that needs two timeouts to be counted before the data goes stale.
POLL = PollConfig(
    interval_seconds=1,
    timeout_seconds=1,
    page_size=50,
    stale_after_seconds=6,
    max_concurrency=2,
    max_retries=1,
    deadline_seconds=30,  # polls under faults last longer than the interval
    # Every poll reads every page, so a broken page shows at each poll whatever the time of
    # day: an incremental poll reads only the backups of the last quarter of an hour, which
    # may be fewer than a short page needs to be short.
    full_scan_interval_seconds=0,
)
UNRESOLVABLE = "ovc-unresolvable.invalid"


@dataclass
class Site:
    """One faulty controller: its simulator, its config, and what the scenario may need."""

    name: str
    simulator: SimulatedController
    config: ControllerConfig
    port: int
    expected: float  # what simplivity_backups of the controller adds up to
    run: Scenario


@dataclass(frozen=True)
class Fault:
    reason: str
    #: What the landing page says about the controller while the fault lasts.
    words: str
    inject: Callable[[Site], None]
    clear: Callable[[Site], None]
    #: Reasons the start of the fault may also show (a controller restarting refuses a moment).
    also: tuple[str, ...] = ()
    tls: bool = False
    hostname: str | None = None


@dataclass
class Scenario:
    """Everything one run needs and everything it saw."""

    lab: Lab
    names: NameService
    pki_dir: Path
    trusted_ca: trustme.CA
    other_ca: trustme.CA
    sites: dict[str, Site] = field(default_factory=dict)
    exporter: InProcessExporter | None = None
    before: Scrape | None = None
    during: list[Scrape] = field(default_factory=list)
    after: list[Scrape] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    landing: str = ""
    injected_at: float = 0.0
    cleared_at: float = 0.0

    def tls_files(self, ca: trustme.CA, host: str) -> tuple[str, str]:
        cert = ca.issue_cert(host)
        stem = self.pki_dir / f"{id(ca)}-{host}"
        cert.cert_chain_pems[0].write_to_path(f"{stem}.crt")
        cert.private_key_pem.write_to_path(f"{stem}.key")
        return f"{stem}.crt", f"{stem}.key"

    def ca_file(self, ca: trustme.CA) -> str:
        path = self.pki_dir / f"ca-{id(ca)}.pem"
        ca.cert_pem.write_to_path(str(path))
        return str(path)


def restart(site: Site, tls: tuple[str, str] | None = None) -> None:
    """Stop the controller and start it again on the same port (with another certificate)."""
    simulator = site.simulator
    simulator.stop()
    simulator.port = site.port
    if tls is not None:
        simulator.tls = tls
    simulator.start()


def malformed(kind: Malformed, words: str) -> Fault:
    def inject(site: Site) -> None:
        site.simulator.faults.malformed = kind

    def clear(site: Site) -> None:
        site.simulator.faults.malformed = None

    return Fault("decode", words, inject, clear)


def _clear_faults(site: Site) -> None:
    site.simulator.faults.clear()


def _hang(site: Site) -> None:
    site.simulator.faults.hang_seconds = 3600  # the simulator ends it when it stops


def _endless(site: Site) -> None:
    site.simulator.faults.malformed = "endless"


def _burst_of_500s(site: Site) -> None:
    site.simulator.faults.fail_next(100_000, status=500)


def _resets(site: Site) -> None:
    site.simulator.faults.disconnect_next(100_000)


def _refuse(site: Site) -> None:
    site.simulator.stop()


def _accept(site: Site) -> None:
    restart(site)


def _break_name(site: Site) -> None:
    # The name stops resolving and the controller drops the connections the exporter keeps
    # open, so the next request needs the name again.
    site.run.names.names[UNRESOLVABLE] = False
    restart(site)


def _fix_name(site: Site) -> None:
    site.run.names.names[UNRESOLVABLE] = True


def _rotate_password(site: Site) -> None:
    # The credentials changed on the controller side, and its sessions were dropped.
    site.simulator.password = "rotated-by-the-vcenter-admin"
    site.simulator.revoke_tokens()


def _restore_password(site: Site) -> None:
    site.simulator.password = site.config.password.reveal()


def _unknown_ca(site: Site) -> None:
    restart(site, site.run.tls_files(site.run.other_ca, "127.0.0.1"))


def _trust_the_new_ca(site: Site) -> None:
    ca_file = site.run.ca_file(site.run.other_ca)
    assert site.run.exporter is not None
    site.run.exporter.replace_controller(
        ControllerConfig(
            site.name,
            site.config.url,
            site.config.username,
            site.config.password,
            TLSConfig(ca_file=ca_file),
        )
    )


def _wrong_host_name(site: Site) -> None:
    restart(site, site.run.tls_files(site.run.trusted_ca, "ovc01.example.test"))


def _name_the_host(site: Site) -> None:
    assert site.run.exporter is not None
    tls = TLSConfig(ca_file=site.config.tls.ca_file, server_name="ovc01.example.test")
    site.run.exporter.replace_controller(
        ControllerConfig(
            site.name, site.config.url, site.config.username, site.config.password, tls
        )
    )


FAULTS: dict[str, Fault] = {
    "burst-of-500s": Fault("http", "HTTP 500", _burst_of_500s, _clear_faults),
    "hang-past-the-timeout": Fault("timeout", "no answer within 1 s", _hang, _clear_faults),
    "endless-answer": Fault("timeout", "no answer within 1 s", _endless, _clear_faults),
    "connection-refused": Fault("connection", "connection refused", _refuse, _accept),
    "connection-reset": Fault("connection", "closed the connection", _resets, _clear_faults),
    "name-does-not-resolve": Fault(
        "connection", "does not resolve", _break_name, _fix_name, hostname=UNRESOLVABLE
    ),
    "credentials-refused": Fault(
        "auth", "refused the credentials", _rotate_password, _restore_password
    ),
    "tls-unknown-ca": Fault(
        "tls", "unknown CA", _unknown_ca, _trust_the_new_ca, also=("connection",), tls=True
    ),
    "tls-wrong-host-name": Fault(
        "tls", "tls.server_name", _wrong_host_name, _name_the_host, also=("connection",), tls=True
    ),
    "truncated-json": malformed("truncated", "invalid JSON"),
    "not-json": malformed("not_json", "an HTML page, not JSON"),
    "count-larger-than-the-pages": malformed("count_too_large", "although count says"),
    "short-page": malformed("short_page", "although count says"),
    "empty-page": malformed("empty_page", "although count says"),
}


def scrapes(
    exporter: InProcessExporter,
    run: Scenario,
    into: list[Scrape],
    waiting: Callable[[Scrape], list[str]],
) -> None:
    """Scrape every 0.2 s into ``into`` until nothing is ``waiting``; failures are kept."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            into.append(exporter.scrape(timeout=10))
        except Exception as err:  # the test reports it: the exporter must always answer
            run.failures.append(f"{type(err).__name__}: {err}")
        left = waiting(into[-1]) if into else ["a scrape"]
        if not left:
            return
        time.sleep(0.2)  # the scrape interval of this run, not a wait for an event
    run.failures.append(f"still waiting after 30 s for {', '.join(left)}")


def _stale(scrape: Scrape, site: Site) -> bool:
    return scrape.up(site.name) == 0 and scrape.backup_series(site.name) == 0


def _recovered(scrape: Scrape, site: Site) -> bool:
    return scrape.up(site.name) == 1 and scrape.total(
        "simplivity_backups", controller=site.name
    ) == pytest.approx(site.expected)


@contextmanager
def fault_run() -> Iterator[Scenario]:
    """Start every controller and the exporter, run the faults, stop everything; the record."""
    with tempfile.TemporaryDirectory() as pki, patched_resolver() as names, Lab() as lab:
        run = Scenario(lab, names, Path(pki), trustme.CA(), trustme.CA())
        trusted = run.ca_file(run.trusted_ca)
        healthy = lab.controller(HEALTHY)
        configs = [controller_config(HEALTHY, healthy)]
        for name, fault in FAULTS.items():
            tls = run.tls_files(run.trusted_ca, "127.0.0.1") if fault.tls else None
            simulator = lab.controller(name, FederationSpec(vms=8, backups_per_vm=10), tls=tls)
            port = int(urlsplit(simulator.url).port or 0)
            url = simulator.url
            if fault.hostname:
                names.names[fault.hostname] = True
                url = f"http://{fault.hostname}:{port}"
            config = controller_config(
                name, simulator, url=url, tls=TLSConfig(ca_file=trusted) if fault.tls else None
            )
            configs.append(config)
            expected = float(simulator.backup_count())
            run.sites[name] = Site(name, simulator, config, port, expected, run)
        exporter = run.exporter = lab.start_exporter(POLL, controllers=tuple(configs))
        everyone = [*run.sites.values()]

        def all_good() -> Scrape | None:
            scrape = exporter.scrape()
            good = all(_recovered(scrape, site) for site in everyone)
            return scrape if good and scrape.up(HEALTHY) == 1 else None

        run.before = wait_until(all_good, timeout=30, what="every controller's first poll")

        def not_yet(shows: Callable[[Scrape, Site], bool]) -> Callable[[Scrape], list[str]]:
            """The sites a scrape does not yet show as ``shows`` says."""
            return lambda scrape: [site.name for site in everyone if not shows(scrape, site)]

        run.injected_at = time.time()
        for site in everyone:
            FAULTS[site.name].inject(site)
        scrapes(exporter, run, run.during, not_yet(_stale))
        run.landing = exporter.get("/")[1].decode()
        run.cleared_at = time.time()
        for site in everyone:
            FAULTS[site.name].clear(site)
        scrapes(exporter, run, run.after, not_yet(_recovered))
        yield run


def test_each_fault_as_the_user_sees_it(subtests: pytest.Subtests) -> None:
    with fault_run() as run:
        pass
    assert run.failures == [], "the exporter stopped answering /metrics"
    assert len(run.during) >= 2
    for name in FAULTS:
        with subtests.test(fault=name):
            check_fault(run, name)
    with subtests.test(controller=HEALTHY):
        check_healthy(run)


def check_fault(run: Scenario, name: str) -> None:
    site, fault = run.sites[name], FAULTS[name]
    stale = POLL.stale_after_seconds
    assert run.before is not None
    assert run.before.total("simplivity_backups", controller=name) == site.expected > 0

    # The fault is counted under its reason, and under no other.
    final = run.during[-1]
    errors = final.errors(name)
    assert set(errors) == set(REASONS)
    assert errors[fault.reason] >= 1, errors
    unexpected = {r: n for r, n in errors.items() if n and r not in (fault.reason, *fault.also)}
    assert unexpected == {}

    row = next(line for line in run.landing.splitlines() if f"<td>{name}</td>" in line)
    assert fault.words in row, row
    assert "failed" in row

    counted = [s for s in run.during if s.errors(name)[fault.reason] >= 1]
    assert counted, "no scrape showed the error"

    # The last good data stays while it is fresh, unchanged, and goes once it is stale; the
    # controller's health series stay. The text was written in [floor(started) - 1, finished]:
    # a scrape may be served the text of the second before while the next is written.
    held = [s for s in counted if s.backup_series(name) > 0]
    dropped = [s for s in counted if s.backup_series(name) == 0]
    assert held, "the last good data was dropped before it was stale"
    assert dropped, "the stale data was never dropped"
    for scrape in counted:
        assert scrape.up(name) == 0
        assert scrape.value("simplivity_poll_duration_seconds", controller=name) is not None
        age_at_most = scrape.finished - scrape.last_success(name)
        age_at_least = math.floor(scrape.started) - 1 - scrape.last_success(name)
        if age_at_most < stale:
            assert scrape.backup_series(name) > 0
            assert scrape.total("simplivity_backups", controller=name) == site.expected
        if age_at_least > stale:
            assert scrape.backup_series(name) == 0

    # It recovers once the fault is cleared, with the same data as before.
    assert run.after, "no scrape after the fault was cleared"
    assert _recovered(run.after[-1], site)
    assert run.after[-1].last_success(name) > run.cleared_at


def check_healthy(run: Scenario) -> None:
    assert run.before is not None
    expected = run.before.total("simplivity_backups", controller=HEALTHY)
    assert expected > 0
    for scrape in [run.before, *run.during, *run.after]:
        assert scrape.up(HEALTHY) == 1
        assert scrape.errors(HEALTHY) == dict.fromkeys(REASONS, 0)
        assert scrape.total("simplivity_backups", controller=HEALTHY) == expected
    # It kept being polled every second while every other controller failed.
    successes = {scrape.last_success(HEALTHY) for scrape in run.during}
    assert len(successes) >= POLL.stale_after_seconds - 1


# --- faults the user should not even see ------------------------------------------------------


class ExpiringMidScan(ReaderWrapper):
    """The real client, whose controller drops every token when a scan is half way."""

    def __init__(self, client: ControllerReader, controller: SimulatedController, how: str) -> None:
        super().__init__(client)
        self.controller = controller
        self.how = how
        self.expired = 0

    def read(self, collection: Collection, pages: PageSink) -> None:
        seen = 0
        wrapper = self

        class Counting:
            def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
                nonlocal seen
                outcome = pages.count(offset, body, order)
                before, seen = seen, seen + outcome.counted
                if before < 60 <= seen:  # past the first page of 50: the next request
                    wrapper.kill_tokens()  # carries a dead token
                return outcome

        self.inner.read(collection, Counting())

    def kill_tokens(self) -> None:
        if self.how == "expire":
            self.controller.expire_tokens()
        else:
            self.controller.revoke_tokens()
        self.expired += 1


@pytest.mark.parametrize("how", ["expire", "revoke"])
def test_a_token_dying_mid_scan_costs_one_login_and_nothing_else(how: str) -> None:
    with Lab() as lab:
        simulator = lab.controller("boston", FederationSpec(vms=20, backups_per_vm=10))
        wrappers: list[ExpiringMidScan] = []

        def factory(
            controller: ControllerConfig, poll: PollConfig, stop: threading.Event
        ) -> ControllerReader:
            wrapper = ExpiringMidScan(fast_retries(controller, poll, stop), simulator, how)
            wrappers.append(wrapper)
            return wrapper

        exporter = lab.start_exporter(
            # Every poll a full scan, the kind whose pages outlive a token.
            replace_poll(
                timeout_seconds=5,
                stale_after_seconds=30,
                max_concurrency=1,
                full_scan_interval_seconds=0,
            ),
            client_factory=factory,
        )
        expected = float(simulator.backup_count())
        seen: list[Scrape] = []

        def scrape() -> Scrape:
            seen.append(exporter.scrape())
            return seen[-1]

        wait_until(lambda: exporter.scrape().up("boston") == 1, what="the first poll")
        wait_until(lambda: scrape() and wrappers[0].expired >= 3, what="three dead tokens")
        third = time.time()
        wait_until(lambda: scrape().last_success("boston") > third, what="a poll after that")
        for seen_scrape in seen:
            assert seen_scrape.up("boston") == 1
            assert seen_scrape.errors("boston") == dict.fromkeys(REASONS, 0)
            assert seen_scrape.total("simplivity_backups", controller="boston") == expected
        # One login at the start, then one per token that died, never more.
        logins = seen[-1].value("simplivity_logins_total", controller="boston")
        assert logins is not None
        assert logins - 1 <= wrappers[0].expired <= logins
        assert simulator.stats.snapshot().status_counts.get(401, 0) >= 3


def test_a_short_burst_of_500s_is_retried_within_the_poll() -> None:
    with Lab() as lab:
        simulator = lab.controller("boston")
        exporter = lab.start_exporter(replace_poll(max_retries=3))
        wait_until(lambda: exporter.scrape().up("boston") == 1, what="the first poll")
        served = simulator.stats.snapshot().status_counts.get(500, 0)
        seen: list[Scrape] = []

        def scrape() -> Scrape:
            seen.append(exporter.scrape())
            return seen[-1]

        simulator.faults.fail_next(3, status=500)
        wait_until(lambda: simulator.faults.pending_failures() == 0, what="the burst")
        consumed = time.time()
        wait_until(lambda: scrape().last_success("boston") > consumed, what="a poll after it")
        assert simulator.stats.snapshot().status_counts[500] == served + 3
        for seen_scrape in seen:
            assert seen_scrape.up("boston") == 1
            assert seen_scrape.errors("boston") == dict.fromkeys(REASONS, 0)


def replace_poll(**changes: Any) -> PollConfig:
    return replace(FAST_POLL, **changes)


# --- /metrics never waits for a controller -----------------------------------------------------


def test_metrics_answer_while_a_poll_hangs() -> None:
    """A scrape started while a poll hangs returns while that poll is still hanging."""
    with Lab() as lab:
        slow = lab.controller("slow")
        lab.controller("fast")
        exporter = lab.start_exporter(replace_poll(timeout_seconds=60, stale_after_seconds=120))
        wait_until(
            lambda: {exporter.scrape().up(n) for n in ("slow", "fast")} == {1.0},
            what="the first polls",
        )
        slow.faults.hang_seconds = 3600
        wait_until(lambda: slow.stats.snapshot().in_flight > 0, what="a request to hang")
        hanging = next(s for s in exporter.poller.statuses() if s.name == "slow")
        for _ in range(5):
            scrape = exporter.scrape(timeout=30)
            assert scrape.up("slow") == 1  # the last good poll, still fresh
            assert scrape.total("simplivity_backups", controller="slow") == slow.backup_count()
            # The hang has not ended: the request is still in the controller, the poll goes on.
            assert slow.stats.snapshot().in_flight > 0
            current = next(s for s in exporter.poller.statuses() if s.name == "slow")
            assert current.polls == hanging.polls
        # Meanwhile the other controller is polled as usual.
        before = exporter.scrape().last_success("fast")
        wait_until(lambda: exporter.scrape().last_success("fast") > before, what="a fast poll")
        assert exporter.get("/-/healthy")[0] == 200
        slow.stop()  # ends the hang; the poll fails as a connection error

"""``--controller.check``: the report a person reads, against simulated controllers on 127.0.0.1.

Healthy, wrong password, TLS mismatched (http:// on the TLS port, a certificate from an unknown
CA, one for another name), unreachable (a closed port), slow, old. Each test reads the report's
words (the failing line and its fix), and what the controller saw: how many logins, which
requests. The command itself runs as users run it for its exit codes and its secrets.
"""

from __future__ import annotations

import datetime
import doctest
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from exporter import check
from exporter.check import Report, check_controller, check_controllers
from exporter.config import ControllerConfig, PollConfig, Secret, TLSConfig
from exporter.simulator import FederationSpec, SimulatedController
from tests.pki import PKI, make_pki
from tests.test_cli import free_port, run, write_config

Start = Callable[..., SimulatedController]
ROOT = Path(__file__).resolve().parent.parent
#: A configuration's settings that a check must not follow: retries, and long waits.
POLL = PollConfig(timeout_seconds=5, max_retries=3)
NO_TLS = TLSConfig()


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return make_pki(tmp_path)


@pytest.fixture
def simulator(start_simulator: Start) -> SimulatedController:
    """A controller of the default federation, up for the test."""
    return start_simulator(FederationSpec())


def controller(
    simulator: SimulatedController,
    *,
    url: str | None = None,
    password: str | None = None,
    tls: TLSConfig = NO_TLS,
    name: str = "boston",
) -> ControllerConfig:
    return ControllerConfig(
        name=name,
        url=url or simulator.url,
        username=simulator.username,
        password=Secret(password if password is not None else simulator.password),
        tls=tls,
    )


def serve_tls(start: Start, pki: PKI, **options: object) -> SimulatedController:
    """A controller with a certificate for 127.0.0.1 (and localhost) from ``pki.ca``."""
    files = (str(pki.dir / "server.crt"), str(pki.dir / "server.key"))
    return start(FederationSpec(), tls=files, **options)


def serve_certificate(start: Start, pki: PKI, *names: str, **cert: object) -> SimulatedController:
    leaf = pki.ca.issue_cert(*names, **cert)  # type: ignore[arg-type]
    leaf.cert_chain_pems[0].write_to_path(str(pki.dir / "other.crt"))
    leaf.private_key_pem.write_to_path(str(pki.dir / "other.key"))
    return start(FederationSpec(), tls=(str(pki.dir / "other.crt"), str(pki.dir / "other.key")))


def trusted(pki: PKI, **options: object) -> TLSConfig:
    ca_file = pki.dir / "ca.pem"
    pki.ca.cert_pem.write_to_path(str(ca_file))
    return TLSConfig(ca_file=str(ca_file), **options)  # type: ignore[arg-type]


def line(report: Report, topic: str, level: str | None = None) -> str:
    """The report's line on ``topic``, with its fix if it has one; at ``level`` (``ok``,
    ``warn`` or ``FAIL``) if one is given."""
    lines = report.render().splitlines()
    for number, found in enumerate(lines):
        if found[8:].startswith(f"{topic} "):  # after "  FAIL  " / "  ok    "
            if level is not None:
                assert found.split()[0] == level, found
            following = lines[number + 1] if number + 1 < len(lines) else ""
            return found + ("\n" + following if following.lstrip().startswith("fix:") else "")
    raise AssertionError(f"no line on {topic!r} in:\n{report.render()}")


def requests_seen(simulator: SimulatedController) -> dict[str, int]:
    return dict(simulator.stats.snapshot().requests_per_path)


# -- the report -----------------------------------------------------------------------------------


def test_a_healthy_controller_shows_its_version_certificate_and_counts(
    start_simulator: Start, pki: PKI
) -> None:
    simulator = serve_tls(start_simulator, pki)
    report = check_controller(controller(simulator, tls=trusted(pki)), POLL)

    assert report.ok, report.render()
    assert "ok    reachable" in line(report, "reachable")
    tls = line(report, "TLS")
    assert tls.split()[0] == "ok"
    assert "verified against tls.ca_file" in tls
    certificate = line(report, "certificate")
    assert certificate.startswith("  ok    certificate      for localhost, 127.0.0.1, issued by")
    assert "issued by Testing CA" in certificate  # trustme's CA, by its name
    assert f"REST API         {simulator.api_version}, OmniStack" in line(report, "REST API")
    assert "accepted for user 'administrator@vsphere.local' (1 login)" in line(
        report, "credentials"
    )
    live = sum(1 for vm in simulator.virtual_machines() if vm["state"] == "ALIVE")
    expected = {
        "backups": simulator.backup_count(),
        "live VMs": live,
        "policies": len(simulator.policies()),
        "hosts": len(simulator.hosts()),
        "clusters": len(simulator.clusters()),
    }
    for topic, count in expected.items():
        assert line(report, topic).split()[-2:] == [str(count), "listed"]
    schedule = simulator.schedule_report()
    limits = (
        f"daily backups {schedule['daily_backup_rate']} of {schedule['daily_backup_rate_limit']}"
    )
    assert limits in line(report, "schedule report")
    assert report.render().endswith("boston: works in " + f"{report.seconds:.2f} s")
    # One login, one record of each listing, nothing retried.
    stats = simulator.stats.snapshot()
    assert (stats.logins, stats.login_failures) == (1, 0)
    assert all(pages == ((0, 1),) for pages in stats.pages_per_path.values())
    assert stats.status_counts == {200: 8}  # version, login, 5 listings, the schedule report
    assert set(stats.pages_per_path) == {
        "/api/backups",
        "/api/virtual_machines",
        "/api/policies",
        "/api/hosts",
        "/api/omnistack_clusters",
    }


def test_a_wrong_password_costs_one_refused_login_and_names_the_fix(
    simulator: SimulatedController,
) -> None:
    report = check_controller(controller(simulator, password="not-the-password"), POLL)

    assert not report.ok
    credentials = line(report, "credentials", "FAIL")
    assert "refused the credentials of user 'administrator@vsphere.local'" in credentials
    assert "fix: check the user name" in credentials
    assert "next attempt" not in credentials  # a check does not try again
    assert "password_file" in credentials
    assert "not-the-password" not in report.render()
    # The controller answered, so the rest of what it said is still there.
    assert "REST API" in report.render()
    assert "FAILED (credentials)" in report.render()
    # One refused login and then nothing: no listing asked for (each would log in again).
    stats = simulator.stats.snapshot()
    assert (stats.logins, stats.login_failures) == (0, 1)
    assert set(requests_seen(simulator)) == {"/api/version", "/api/oauth/token"}


def test_a_login_that_fails_otherwise_is_not_called_accepted_nor_retried(
    simulator: SimulatedController,
) -> None:
    simulator.faults.fail_next_logins(5, status=500)
    report = check_controller(controller(simulator), POLL)

    login = line(report, "login", "FAIL")
    assert "/api/oauth/token answered HTTP 500" in login
    assert "fix: the controller failed to answer" in login
    assert "credentials" not in report.render()
    assert simulator.stats.snapshot().login_failures == 1
    assert "/api/backups" not in requests_seen(simulator)


def test_http_against_the_tls_port_says_use_https(start_simulator: Start, pki: PKI) -> None:
    simulator = serve_tls(start_simulator, pki)
    url = simulator.url.replace("https://", "http://")
    report = check_controller(controller(simulator, url=url, tls=trusted(pki)), POLL)

    assert not report.ok
    reachable = line(report, "reachable", "FAIL")
    assert f"url: {simulator.url}" in reachable
    assert simulator.stats.snapshot().login_failures == 0


def test_https_against_a_plain_port_says_check_the_port(simulator: SimulatedController) -> None:
    url = simulator.url.replace("http://", "https://")
    report = check_controller(controller(simulator, url=url), POLL)

    tls = line(report, "TLS", "FAIL")
    assert "fix: check the port in url (a controller's HTTPS port is 443)" in tls
    assert simulator.stats.snapshot().login_failures == 0
    assert "/api/oauth/token" not in requests_seen(simulator)


def test_a_certificate_from_an_unknown_ca_says_set_ca_file_and_sends_no_credentials(
    start_simulator: Start, pki: PKI
) -> None:
    simulator = serve_tls(start_simulator, pki)
    report = check_controller(controller(simulator), POLL)  # the default CAs: not ours

    assert not report.ok
    tls = line(report, "TLS", "FAIL")
    assert "unknown CA" in tls
    assert "fix: export the controller's CA certificate" in tls
    assert "set tls.ca_file" in tls
    assert "credentials" not in report.render()
    stats = simulator.stats.snapshot()
    assert (stats.logins, stats.login_failures) == (0, 0)


def test_a_certificate_for_another_name_says_which_server_name_to_set(
    start_simulator: Start, pki: PKI
) -> None:
    simulator = serve_certificate(start_simulator, pki, "ovc01.example.test")
    report = check_controller(controller(simulator, tls=trusted(pki)), POLL)
    tls = line(report, "TLS", "FAIL")
    assert "set tls.server_name to a name the certificate carries (ovc01.example.test)" in tls

    # With that fix, it works.
    named = trusted(pki, server_name="ovc01.example.test")
    fixed = check_controller(controller(simulator, tls=named), POLL)
    assert fixed.ok, fixed.render()
    assert "name ovc01.example.test (tls.server_name)" in line(fixed, "TLS")


def test_a_certificate_about_to_expire_is_a_warning(start_simulator: Start, pki: PKI) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5)
    simulator = serve_certificate(start_simulator, pki, "127.0.0.1", not_after=soon)
    report = check_controller(controller(simulator, tls=trusted(pki)), POLL)

    assert report.ok, report.render()  # a warning, not a failure
    certificate = line(report, "certificate", "warn")
    assert f"valid until {soon:%Y-%m-%d}" in certificate
    assert "fix: renew the controller's certificate" in certificate


def test_a_closed_port_says_nothing_listens(simulator: SimulatedController) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    report = check_controller(controller(simulator, url=url), POLL)

    assert time.monotonic() - started < POLL.timeout_seconds  # no wait, no retries
    reachable = line(report, "reachable", "FAIL")
    assert "connection refused" in reachable
    assert f"fix: check the port in url ({port};" in reachable
    assert report.render().count("\n") == 3  # the heading, one finding, its fix, the verdict


@pytest.fixture
def blackholed_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose connections never open: its listener's queue is full and
    never accepted from, so the kernel drops further SYNs, as a firewall that drops does."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


def test_a_controller_that_never_answers_fails_within_the_timeout(
    simulator: SimulatedController, blackholed_port: int
) -> None:
    poll = PollConfig(timeout_seconds=60, max_retries=3)  # what polls may wait: not a check
    url = f"https://127.0.0.1:{blackholed_port}"
    started = time.monotonic()
    report = check_controller(controller(simulator, url=url), poll, timeout_seconds=2)

    assert time.monotonic() - started < 2 + 1  # one try of its own timeout, not four of 60 s
    reachable = line(report, "reachable", "FAIL")
    assert "within 2 s" in reachable
    assert "fix: check the address and port in url" in reachable
    assert "that no firewall drops the traffic to 127.0.0.1" in reachable


def test_plain_http_works_with_a_warning_that_the_password_goes_in_clear(
    simulator: SimulatedController,
) -> None:
    report = check_controller(controller(simulator), POLL)
    assert report.ok, report.render()
    tls = line(report, "TLS", "warn")
    assert "the password crosses the network in clear" in tls
    assert "fix: use https://" in tls


def test_a_slow_listing_fails_within_the_timeout_without_retries(
    simulator: SimulatedController,
) -> None:
    simulator.faults.hang_seconds = 30  # /api/backups only
    poll = PollConfig(timeout_seconds=1, max_retries=3)
    started = time.monotonic()
    report = check_controller(controller(simulator), poll)
    took = time.monotonic() - started

    assert took < poll.timeout_seconds + 1  # one try of one second, not four
    backups = line(report, "backups", "FAIL")
    assert "within 1 s" in backups
    assert "fix: the controller is slow to answer" in backups
    assert "accepted for user" in line(report, "credentials")
    assert requests_seen(simulator)["/api/backups"] == 1
    # A controller that stopped answering is not asked for more.
    assert "/api/virtual_machines" not in requests_seen(simulator)


def check_older(start_simulator: Start, api_version: str) -> tuple[SimulatedController, Report]:
    """A controller of an older REST API, checked: it works, and says its version."""
    simulator = start_simulator(FederationSpec(), api_version=api_version)
    report = check_controller(controller(simulator), POLL)
    assert report.ok, report.render()
    assert f"REST API         {api_version}" in line(report, "REST API")
    return simulator, report


def test_an_old_controller_has_no_schedule_report_and_is_not_asked_for_it(
    start_simulator: Start,
) -> None:
    simulator, report = check_older(start_simulator, "1.10")
    schedule = line(report, "schedule report", "warn")
    assert "none before REST API 1.11" in schedule
    assert "/api/policies/policy_schedule_report" not in requests_seen(simulator)


def test_a_controller_before_rest_api_1_9_is_asked_only_what_it_documents(
    start_simulator: Start,
) -> None:
    # Its hosts name no cluster: a poll reads no cluster listing, and asks the hosts without
    # omnistack_cluster_id (the simulator, like a real controller, refuses an unknown field).
    simulator, report = check_older(start_simulator, "1.8")
    assert line(report, "hosts").split()[-2:] == [str(len(simulator.hosts())), "listed"]
    assert " clusters " not in report.render()
    assert "/api/omnistack_clusters" not in requests_seen(simulator)


def test_no_credentials_go_to_an_address_that_is_not_a_controller(
    simulator: SimulatedController,
) -> None:
    report = check_controller(controller(simulator, url=simulator.url + "/ui"), POLL)
    rest = line(report, "REST API", "FAIL")
    assert "answered HTTP 404" in rest
    assert "without a path" in rest
    assert "/api/oauth/token" not in requests_seen(simulator)


def test_a_user_without_read_access_is_told_what_to_grant(simulator: SimulatedController) -> None:
    simulator.faults.paths = frozenset({"/api/hosts"})
    simulator.faults.fail_next(1, status=403)
    report = check_controller(controller(simulator), POLL)
    hosts = line(report, "hosts", "FAIL")
    assert "fix: give user 'administrator@vsphere.local' read access to /api/hosts" in hosts
    # The other listings were still read: one failure does not hide the rest.
    assert "listed" in line(report, "policies")
    line(report, "schedule report", "ok")


def test_a_listing_that_refuses_what_a_poll_asks_is_worth_a_report(
    simulator: SimulatedController,
) -> None:
    simulator.faults.paths = frozenset({"/api/virtual_machines"})
    simulator.faults.fail_next(1, status=400)
    report = check_controller(controller(simulator), POLL)
    vms = line(report, "live VMs", "FAIL")
    assert "/api/virtual_machines answered HTTP 400" in vms
    assert "fix: polls ask the same: please report this message" in vms


def test_a_listing_larger_than_its_setting_says_which_setting_to_raise(
    simulator: SimulatedController,
) -> None:
    live = sum(1 for vm in simulator.virtual_machines() if vm["state"] == "ALIVE")
    poll = replace(POLL, max_vms=live - 1)
    report = check_controller(controller(simulator), poll)

    vms = line(report, "live VMs")
    assert vms.startswith(f"  FAIL  live VMs         {live} listed, more than poll.max_vms")
    assert f"fix: raise poll.max_vms above {live}" in vms
    line(report, "backups", "ok")  # poll.max_backups is another setting


def test_several_controllers_are_checked_together_and_reported_in_order(
    start_simulator: Start,
) -> None:
    good = start_simulator(FederationSpec())
    controllers = (
        controller(good, name="a"),
        controller(good, name="b", url=f"http://127.0.0.1:{free_port()}"),
        controller(good, name="c"),
    )
    reports = list(check_controllers(controllers, POLL))
    assert [(r.name, r.ok) for r in reports] == [("a", True), ("b", False), ("c", True)]


def test_the_docstring_example_of_a_report_holds() -> None:
    results = doctest.testmod(check)
    assert results.attempted >= 1
    assert results.failed == 0


# -- the command ----------------------------------------------------------------------------------


def check_command(config: Path, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    """``--controller.check`` as users run it, the password in ``SIM_PASSWORD``."""
    flags = ("--config.file", str(config), "--controller.check", *args)
    return run(*flags, env={"SIM_PASSWORD": password})


def test_the_command_exits_0_when_all_work_and_1_when_one_does_not(
    start_simulator: Start, tmp_path: Path
) -> None:
    simulator = start_simulator(FederationSpec())
    down = start_simulator(FederationSpec())
    down.stop()  # its port is closed now
    config = write_config(tmp_path / "c.yaml", simulator, down)  # c0 and c1

    one = check_command(config, "c0", password=simulator.password)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "controller c0 at" in one.stdout
    assert "c1" not in one.stdout
    assert "c0: works" in one.stdout

    both = check_command(config, password=simulator.password)
    assert both.returncode == 1, both.stdout + both.stderr
    assert both.stdout.index("c0: works") < both.stdout.index("c1: FAILED (reachable)")


def test_the_command_exits_2_for_a_name_not_in_the_config(
    simulator: SimulatedController, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", simulator)
    result = check_command(config, "c00", password=simulator.password)
    assert result.returncode == 2
    assert "no controller is named 'c00' (did you mean 'c0'?)" in result.stderr
    assert "Traceback" not in result.stderr
    assert simulator.stats.snapshot().requests_per_path == {}

    broken = tmp_path / "broken.yaml"
    broken.write_text("controllers:\n  - {name: a, url: 'ftp://x'}\n", encoding="utf-8")
    result = check_command(broken, password=simulator.password)
    assert result.returncode == 2
    assert "problem(s)" in result.stderr


def test_the_command_never_prints_a_password_or_a_token(
    simulator: SimulatedController, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", simulator)
    works = check_command(config, "--log.level", "debug", password=simulator.password)
    refused = check_command(config, "--log.level", "debug", password="Wr0ng-Secret")
    assert works.returncode == 0, works.stdout + works.stderr
    assert refused.returncode == 1
    assert "FAIL  credentials" in refused.stdout
    tokens = simulator.issued_tokens()
    assert len(tokens) == 1
    for output in (works.stdout, works.stderr, refused.stdout, refused.stderr):
        assert simulator.password not in output
        assert "Wr0ng-Secret" not in output
        assert tokens[0] not in output


def test_the_demo_checks_its_own_simulated_controller() -> None:
    result = run("--demo", "--controller.check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "controller demo at http://127.0.0.1:" in result.stdout
    assert "  ok    credentials" in result.stdout
    assert "demo: works in" in result.stdout

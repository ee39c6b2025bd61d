"""Reload and shutdown of the real command: SIGHUP, ``POST /-/reload`` and SIGTERM.

A reload re-reads the config file: controllers added, changed and removed take effect without a
restart, the others keep going untouched, and a bad file is refused with a logged reason while
the old config keeps running. ``simplivity_exporter_config_last_reload_successful`` and
``..._success_timestamp_seconds`` say how the last reload went. SIGTERM ends the process within
seconds, even while a poll hangs on a controller.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from exporter.app import Reloader, Shard
from exporter.config import Config, ControllerConfig, Secret
from exporter.poller import Poller
from exporter.simulator import FederationSpec, SimulatedController
from tests.conftest import wait_until
from tests.live_exporter import ExporterProcess, Scrape, write_config

Start = Callable[..., SimulatedController]
POLL = (
    "{interval_seconds: 1, timeout_seconds: 2, max_retries: 0, stale_after_seconds: 60, "
    "deadline_seconds: 30}"
)
SUCCESSFUL = "simplivity_exporter_config_last_reload_successful"
SUCCESS_TIME = "simplivity_exporter_config_last_reload_success_timestamp_seconds"
LOGINS = "simplivity_logins_total"


class Reload:
    """Makes the running exporter re-read its config, the way a user would."""

    def __init__(self, exporter: ExporterProcess, how: str) -> None:
        self.exporter = exporter
        self.how = how

    def __call__(self) -> tuple[int, str] | None:
        """The HTTP answer for ``POST /-/reload``; None for SIGHUP (it has none)."""
        if self.how == "SIGHUP":
            self.exporter.signal(signal.SIGHUP)
            return None
        status, body = self.exporter.get("/-/reload", method="POST")
        return status, body.decode()


@pytest.fixture
def controllers(start_simulator: Start) -> dict[str, SimulatedController]:
    """Three controllers told apart by the size of their federation."""
    return {
        "a": start_simulator(FederationSpec(vms=5, backups_per_vm=10, seed=1)),
        "b": start_simulator(FederationSpec(vms=7, backups_per_vm=10, seed=2)),
        "c": start_simulator(FederationSpec(vms=9, backups_per_vm=10, seed=3)),
    }


def has(controller: str, simulator: SimulatedController) -> Callable[[Scrape], bool]:
    def check(scrape: Scrape) -> bool:
        total = scrape.total("simplivity_backups", controller=controller)
        return scrape.up(controller) == 1 and total == simulator.backup_count()

    return check


def scraped_until(
    exporter: ExporterProcess, condition: Callable[[Scrape], bool], what: str
) -> Scrape:
    def check() -> Scrape | None:
        scrape = exporter.scrape()
        return scrape if condition(scrape) else None

    result: Scrape = wait_until(check, timeout=15, what=what)
    return result


def sigterm(exporter: ExporterProcess) -> float:
    """Sends SIGTERM and checks that the exporter exits with 0; the seconds that took."""
    started = time.monotonic()
    exporter.signal(signal.SIGTERM)
    code = exporter.process.wait(timeout=15)
    took = time.monotonic() - started
    assert code == 0
    return took


@pytest.mark.parametrize("how", ["SIGHUP", "POST /-/reload"])
def test_reload_adds_changes_and_removes_controllers_and_refuses_a_bad_file(
    tmp_path: Path, controllers: dict[str, SimulatedController], how: str
) -> None:
    a, b, c = controllers["a"], controllers["b"], controllers["c"]
    config = write_config(tmp_path / "config.yaml", {"ca": a}, poll=POLL)
    lifecycle = ["--web.enable-lifecycle"] if how != "SIGHUP" else []
    with ExporterProcess(
        "--config.file", str(config), *lifecycle, log_path=tmp_path / "exporter.log"
    ) as exporter:
        reload = Reload(exporter, how)
        first = scraped_until(exporter, has("ca", a), "the first poll")
        assert first.value(SUCCESSFUL) == 1
        loaded_at = first.value(SUCCESS_TIME) or 0.0
        assert loaded_at > 0

        # Added: a second controller, polled without a restart; the first one is untouched.
        write_config(config, {"ca": a, "cb": b}, poll=POLL)
        answer = reload()
        assert answer in (None, (200, "configuration reloaded: 2 controller(s)\n"))
        # (The new poller may publish a moment before the reload's own metrics change.)
        added = scraped_until(
            exporter,
            lambda s: has("cb", b)(s) and (s.value(SUCCESS_TIME) or 0) > loaded_at,
            "the added controller",
        )
        assert added.value(SUCCESSFUL) == 1
        assert added.value(LOGINS, controller="ca") == 1  # the same client, never re-created
        assert exporter.alive()

        # Changed: the same name now points at another controller.
        write_config(config, {"ca": a, "cb": c}, poll=POLL)
        reload()
        scraped_until(exporter, has("cb", c), "the changed controller")

        # Removed: every series of the controller goes, the other stays.
        write_config(config, {"cb": c}, poll=POLL)
        reload()
        removed = scraped_until(
            exporter, lambda s: "ca" not in s.controllers(), "the removed controller to go"
        )
        assert not [key for key in removed.samples if ("controller", "ca") in key[1]]
        assert has("cb", c)(removed)
        good_at = removed.value(SUCCESS_TIME) or 0.0

        # A bad file is refused with its reason; the old config keeps running.
        config.write_text(
            config.read_text() + "  - name: cd\n    url: ftp://nowhere\n    usernme: x\n",
            encoding="utf-8",
        )
        answer = reload()
        if answer is not None:
            status, message = answer
            assert status == 500
            assert "unknown key 'usernme'" in message
            assert "must start with https://" in message
        refused = scraped_until(exporter, lambda s: s.value(SUCCESSFUL) == 0, "the refusal")
        assert refused.value(SUCCESS_TIME) == good_at
        wait_until(lambda: "unknown key 'usernme'" in exporter.log(), what="the reason in the log")
        assert "configuration reload failed, keeping the previous one" in exporter.log()
        refused_at = time.time()
        still = scraped_until(
            exporter,
            lambda s: s.last_success("cb") > refused_at and has("cb", c)(s),
            "a poll under the old config",
        )
        assert still.controllers() == {"cb"}

        # Fixed again: accepted, and the metrics say so.
        write_config(config, {"cb": c, "ca": a}, poll=POLL)
        reload()
        fixed = scraped_until(
            exporter, lambda s: s.value(SUCCESSFUL) == 1 and has("ca", a)(s), "the fixed file"
        )
        assert (fixed.value(SUCCESS_TIME) or 0) > good_at
        assert exporter.alive()
    assert exporter.process.returncode == 0


def test_a_reload_takes_effect_while_a_poll_hangs(
    tmp_path: Path, controllers: dict[str, SimulatedController]
) -> None:
    a, b = controllers["a"], controllers["b"]
    a.faults.hang_seconds = 3600  # every backups request of "ca" hangs until the test ends
    poll = (
        "{interval_seconds: 1, deadline_seconds: 600, timeout_seconds: 30, max_retries: 0, "
        "stale_after_seconds: 60}"
    )
    config = write_config(tmp_path / "config.yaml", {"ca": a}, poll=poll)
    with ExporterProcess(
        "--config.file", str(config), log_path=tmp_path / "exporter.log"
    ) as exporter:
        wait_until(lambda: a.stats.snapshot().in_flight > 0, what="a poll to hang")
        write_config(config, {"ca": a, "cb": b}, poll=poll)
        exporter.signal(signal.SIGHUP)
        added = scraped_until(exporter, has("cb", b), "the added controller")
        assert a.stats.snapshot().in_flight > 0  # the hanging poll has not ended: it did not block
        assert added.value(SUCCESSFUL) == 1
        assert added.up("ca") == 0  # never polled successfully


def test_sigterm_stops_within_seconds_during_a_hanging_poll(
    tmp_path: Path, controllers: dict[str, SimulatedController]
) -> None:
    a, b = controllers["a"], controllers["b"]
    a.faults.hang_seconds = 3600
    poll = (
        "{interval_seconds: 1, deadline_seconds: 600, timeout_seconds: 60, max_retries: 3, "
        "stale_after_seconds: 600}"
    )
    config = write_config(tmp_path / "config.yaml", {"ca": a, "cb": b}, poll=poll)
    with ExporterProcess(
        "--config.file", str(config), log_path=tmp_path / "exporter.log"
    ) as exporter:
        scraped_until(exporter, has("cb", b), "the healthy controller")
        wait_until(lambda: a.stats.snapshot().in_flight > 0, what="a poll to hang")
        took = sigterm(exporter)
        # The poll was still hanging: the timeout is 60 s and the controller never answered.
        assert a.stats.snapshot().in_flight > 0
    assert took < 5, f"SIGTERM took {took:.1f} s"
    assert "shutting down" in exporter.log()
    assert "Traceback" not in exporter.log()


def test_sigterm_stops_an_idle_exporter_at_once(
    tmp_path: Path, controllers: dict[str, SimulatedController]
) -> None:
    a = controllers["a"]
    config = write_config(tmp_path / "config.yaml", {"ca": a}, poll=POLL)
    with ExporterProcess(
        "--config.file", str(config), log_path=tmp_path / "exporter.log"
    ) as exporter:
        scraped_until(exporter, has("ca", a), "the first poll")
        took = sigterm(exporter)
    assert took < 3, f"SIGTERM took {took:.1f} s"


def test_a_reload_of_the_poll_settings_keeps_data_health_and_readiness(
    tmp_path: Path, controllers: dict[str, SimulatedController]
) -> None:
    """Every controller gets a new poller, but what users see must not blink."""
    a, b = controllers["a"], controllers["b"]
    config = write_config(tmp_path / "config.yaml", {"ca": a, "cb": b}, poll=POLL)
    with ExporterProcess(
        "--config.file", str(config), "--web.enable-lifecycle", log_path=tmp_path / "log"
    ) as exporter:
        before = scraped_until(exporter, lambda s: has("ca", a)(s) and has("cb", b)(s), "polls")
        assert exporter.get("/-/ready")[0] == 200
        # The polls under the new settings will take a while: what is seen meanwhile counts.
        for simulator in (a, b):
            simulator.faults.request_cost_seconds = 0.5
        slower = POLL.replace("timeout_seconds: 2", "timeout_seconds: 3")
        write_config(config, {"ca": a, "cb": b}, poll=slower)
        assert exporter.get("/-/reload", method="POST")[0] == 200
        after = exporter.scrape()
        assert exporter.get("/-/ready")[0] == 200
        for name, simulator in (("ca", a), ("cb", b)):
            assert has(name, simulator)(after)
            assert after.last_success(name) >= before.last_success(name)
            assert after.errors(name) == before.errors(name)
        # The new pollers log in afresh; the login counter still only goes up.
        reloaded_at = time.time()
        polled = scraped_until(
            exporter,
            lambda s: min(s.last_success("ca"), s.last_success("cb")) > reloaded_at,
            "polls under the new settings",
        )
        for name in ("ca", "cb"):
            logins = polled.value(LOGINS, controller=name) or 0
            assert logins == (before.value(LOGINS, controller=name) or 0) + 1


def test_a_storm_of_sighups_neither_deadlocks_nor_loses_the_last_reload(
    tmp_path: Path, controllers: dict[str, SimulatedController]
) -> None:
    """Signals that come close together, or while the main loop holds a lock, are safe."""
    a, b = controllers["a"], controllers["b"]
    config = write_config(tmp_path / "config.yaml", {"ca": a}, poll=POLL)
    with ExporterProcess("--config.file", str(config), log_path=tmp_path / "log") as exporter:
        scraped_until(exporter, has("ca", a), "the first poll")
        for n in range(300):
            exporter.signal(signal.SIGHUP)
            time.sleep(0.002 * (n % 5))  # a pace that lands signals inside the main loop's work
        assert exporter.alive()
        write_config(config, {"ca": a, "cb": b}, poll=POLL)
        exporter.signal(signal.SIGHUP)
        scraped_until(exporter, has("cb", b), "the reload after the storm")
        took = sigterm(exporter)
    assert took < 3, f"SIGTERM took {took:.1f} s"


def test_a_bad_web_config_refuses_the_whole_reload_and_a_good_one_applies_both(
    tmp_path: Path,
) -> None:
    """Both files are checked before anything changes: a web config that does not load keeps
    the old config too, and says why."""
    applied: list[Config] = []

    class Applied:
        def apply(self, config: Config) -> None:
            applied.append(config)

    controller = ControllerConfig("a", "http://127.0.0.1:1", "user", Secret("pw"))
    config = Config(controllers=(controller,))
    web_config = tmp_path / "web.yml"
    web_config.write_text("tls_server_config: {cert_file: absent.crt, key_file: absent.key}\n")
    reloader = Reloader(cast(Poller, Applied()), Shard(), lambda: config, config, str(web_config))

    ok, message = reloader.reload()
    assert not ok
    assert "absent.crt" in message
    assert applied == []
    assert not reloader.state.reload_successful

    web_config.write_text("http_server_config: {headers: {X-Frame-Options: deny}}\n")
    ok, message = reloader.reload()
    assert ok, message
    assert applied == [config]
    assert reloader.state.reload_successful


def test_reload_over_http_is_closed_without_the_lifecycle_flag(
    tmp_path: Path, controllers: dict[str, SimulatedController]
) -> None:
    """As in Prometheus: POST /-/reload is refused unless --web.enable-lifecycle; SIGHUP works."""
    a, b = controllers["a"], controllers["b"]
    config = write_config(tmp_path / "config.yaml", {"ca": a}, poll=POLL)
    with ExporterProcess(
        "--config.file", str(config), log_path=tmp_path / "exporter.log"
    ) as exporter:
        scraped_until(exporter, has("ca", a), "the first poll")
        write_config(config, {"ca": a, "cb": b}, poll=POLL)
        assert exporter.get("/-/reload", method="POST") == (403, b"Lifecycle API is not enabled.\n")
        assert exporter.get("/-/reload")[0] == 405
        assert "reloaded" not in exporter.log()
        assert exporter.scrape().controllers() == {"ca"}
        Reload(exporter, "SIGHUP")()
        scraped_until(exporter, has("cb", b), "the reload by SIGHUP")

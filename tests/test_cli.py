"""The command line as users run it: exit codes, messages, --once output, a running exporter."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter import cli
from exporter.config import load_config
from exporter.simplivity import worst_case_poll_seconds
from exporter.simulator import FAILING_VM, STALE_VM, FederationSpec, SimulatedController
from tests import live_exporter
from tests.conftest import wait_until
from tests.live_exporter import ExporterProcess, parse, scrape
from tests.promtool import promtool

Start = Callable[..., SimulatedController]
ROOT = Path(__file__).parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def write_config(path: Path, *controllers: SimulatedController, extra: str = "") -> Path:
    """The controllers named ``c0``, ``c1``..., their password read from ``${SIM_PASSWORD}``."""
    named = {f"c{number}": controller for number, controller in enumerate(controllers)}
    passwords = dict.fromkeys(named, "${SIM_PASSWORD}")
    return live_exporter.write_config(path, named, passwords=passwords, extra=extra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_config_check_accepts_a_valid_file(tmp_path: Path, start_simulator: Start) -> None:
    config = write_config(tmp_path / "c.yaml", start_simulator(FederationSpec()))
    result = run("--config.file", str(config), "--config.check", env={"SIM_PASSWORD": "x"})
    assert result.returncode == 0, result.stderr
    assert "valid, 1 controller(s)" in result.stdout


def test_config_check_warns_about_a_bare_dollar_name_and_plain_http(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "controllers:\n  - {name: a, url: 'http://127.0.0.1:9', username: u, "
        "password: $SVT_PASSWORD}\n",
        encoding="utf-8",
    )
    result = run("--config.file", str(config), "--config.check")
    assert result.returncode == 0, result.stderr
    assert "valid, 1 controller(s)" in result.stdout
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2, result.stderr
    assert all(line.startswith("simplivity-exporter: warning: ") for line in warnings)
    assert "plain http://" in warnings[0]
    assert "is written ${NAME}" in warnings[1]
    assert "SVT_PASSWORD" not in result.stderr


def test_config_check_lists_every_problem_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "poll: {interval_seconds: 0}\ncontrollers:\n  - {name: a, url: 'ftp://x'}\n",
        encoding="utf-8",
    )
    result = run("--config.file", str(config), "--config.check")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"simplivity-exporter: {config} has 4 problem(s):")
    assert "poll.interval_seconds: must be a finite number of seconds >= 1, not 0" in result.stderr
    assert "controllers[0].username: is required" in result.stderr


def test_a_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = run("--config.file", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read the file: No such file or directory" in result.stderr


def test_the_demo_listens_on_loopback_unless_told_otherwise() -> None:
    """Made-up data and its landing page stay on this machine (the README's
    http://127.0.0.1:10025/); a real config keeps listening on every interface."""
    assert cli.listen_address(None, demo=True) == "127.0.0.1:10025"
    assert cli.listen_address(None, demo=False) == ":10025"
    assert cli.listen_address(":9999", demo=True) == ":9999"
    assert "with --demo, 127.0.0.1:10025" in " ".join(run("--help").stdout.split())


def test_bad_flags_exit_2() -> None:
    assert run("--log.level", "loud").returncode == 2
    result = run("--demo", "--shard.count", "2", "--shard.index", "5")
    assert result.returncode == 2
    assert "shard index must be between 0 and 1" in result.stderr


def test_once_writes_the_metrics_atomically_and_exits_0(
    tmp_path: Path, start_simulator: Start
) -> None:
    simulator = start_simulator(FederationSpec())
    config = write_config(tmp_path / "c.yaml", simulator)
    output = tmp_path / "textfile" / "simplivity.prom"
    output.parent.mkdir()
    result = run(
        "--config.file", str(config), "--once", "--output", str(output),
        env={"SIM_PASSWORD": simulator.password},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert [p.name for p in output.parent.iterdir()] == ["simplivity.prom"]  # no temp file left
    families = {f.name: f for f in text_string_to_metric_families(output.read_text())}
    up = families["simplivity_up"].samples[0]
    assert (up.labels, up.value) == ({"controller": "c0"}, 1.0)
    assert "simplivity_backups" in families


def test_the_ready_simulator_config_polls_the_standalone_simulator(tmp_path: Path) -> None:
    """The README's "Try it against a simulated controller": config.simulator.yaml holds the
    simulator's defaults, and polls the simulator started as documented (here on a free port
    instead of 8443, which a parallel run may hold)."""
    from exporter.simulator import cli as simulator_cli

    ready = yaml.safe_load((ROOT / "config.simulator.yaml").read_text(encoding="utf-8"))
    (controller,) = ready["controllers"]
    defaults = simulator_cli._parser().parse_args([])
    assert controller["url"] == f"http://{defaults.host}:{defaults.port}"
    assert (controller["username"], controller["password"]) == (
        defaults.username,
        defaults.password,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip().removeprefix("url: ")
        assert url.startswith("http://127.0.0.1:"), url
        controller["url"] = url
        config = tmp_path / "config.simulator.yaml"
        config.write_text(yaml.safe_dump(ready), encoding="utf-8")
        result = run("--config.file", str(config), "--once")
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert 'simplivity_up{controller="simulator"} 1.0' in result.stdout
    assert 'simplivity_vm_protection_status{controller="simulator",status="overdue"' in (
        result.stdout
    )


def test_once_exits_1_when_a_controller_fails(tmp_path: Path, start_simulator: Start) -> None:
    good = start_simulator(FederationSpec())
    config = write_config(tmp_path / "c.yaml", good, good)
    result = run("--config.file", str(config), "--once", env={"SIM_PASSWORD": "wrong"})
    assert result.returncode == 1
    assert 'simplivity_poll_errors_total{controller="c0",reason="auth"} 1.0' in result.stdout
    assert "wrong" not in result.stderr.replace("wrong-", "")


def test_once_against_a_firewalled_controller_ends_within_its_documented_bound(
    tmp_path: Path, blackhole: int
) -> None:
    url = f"https://127.0.0.1:{blackhole}"
    config = tmp_path / "c.yaml"
    config.write_text(
        "poll: {connect_timeout_seconds: 1, timeout_seconds: 30, max_retries: 2}\n"
        f"controllers:\n  - {{name: fw, url: '{url}', username: u, password: p}}\n",
        encoding="utf-8",
    )
    bound = worst_case_poll_seconds(load_config(config).poll, connects=False)
    started = time.monotonic()
    result = run("--config.file", str(config), "--once")
    took = time.monotonic() - started
    assert result.returncode == 1
    assert f"could not connect to {url} within 1 s: wrong address, port or a firewall?" in (
        result.stderr
    )
    assert 'simplivity_poll_errors_total{controller="fw",reason="connection"} 1.0' in result.stdout
    assert took < bound + 5  # the process's start-up and exit beside the poll


def test_demo_once_shows_realistic_metrics_and_no_ages() -> None:
    """--once output is read later (a textfile, for minutes): no *_age_seconds family, whose
    value would freeze at the run; the timestamps say the same and stay true."""
    started = time.time()
    result = run("--demo", "--once")
    assert result.returncode == 0, result.stderr
    families = list(text_string_to_metric_families(result.stdout))
    assert not [family.name for family in families if family.name.endswith("_age_seconds")]
    assert "simplivity_backup_newest_timestamp_seconds" in {family.name for family in families}
    vms = {
        sample.labels["vm"]: sample.value
        for family in families
        if family.name == "simplivity_vm_backup_newest_timestamp_seconds"
        for sample in family.samples
    }
    assert started - vms[STALE_VM] > 2 * 86400
    assert vms[FAILING_VM] == 0  # none


@contextmanager
def running_exporter(config: Path, password: str, log_path: Path) -> Iterator[str]:
    """The real command as a process on a free port; yields its base URL once it listens, then
    ends it with SIGTERM, which it obeys with exit code 0."""
    env = {"SIM_PASSWORD": password}
    with ExporterProcess("--config.file", str(config), log_path=log_path, env=env) as exporter:
        yield exporter.url
        assert exporter.stop(timeout=15) == 0, exporter.log()


def status(base: str, path: str, process: subprocess.Popen[Any] | None = None) -> int:
    try:
        return requests.get(base + path, timeout=2).status_code
    except requests.ConnectionError:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the exporter exited: {process.stderr.read() if process.stderr else ''}")
        return 0


def test_a_running_exporter_serves_every_endpoint(tmp_path: Path, start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    config = write_config(tmp_path / "c.yaml", simulator)
    with running_exporter(config, simulator.password, tmp_path / "exporter.log") as base:
        wait_until(lambda: status(base, "/-/ready") == 200, 20, "readiness")
        metrics = requests.get(base + "/metrics", timeout=5)
        assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        names = {f.name for f in text_string_to_metric_families(metrics.text)}
        assert {"simplivity_backups", "simplivity_up", "process_resident_memory_bytes"} <= names
        landing = requests.get(base + "/", timeout=5).text
        assert "<td>c0</td>" in landing
        assert simulator.url in landing
        assert simulator.password not in landing
        assert status(base, "/nope") == 404
        gzipped = requests.get(base + "/metrics", timeout=5, headers={"Accept-Encoding": "gzip"})
        assert gzipped.headers["Content-Encoding"] == "gzip"
        assert "simplivity_up" in gzipped.text


def test_not_ready_until_every_controller_finished_its_first_poll(
    tmp_path: Path, start_simulator: Start
) -> None:
    simulator = start_simulator(FederationSpec())
    simulator.faults.hang_seconds = 30
    config = write_config(tmp_path / "c.yaml", simulator)
    with running_exporter(config, simulator.password, tmp_path / "exporter.log") as base:
        assert status(base, "/-/ready") == 503
        wait_until(lambda: status(base, "/-/ready") == 200, 20, "the first poll to time out")
        assert status(base, "/-/healthy") == 200


# --- logs a pipeline can parse ------------------------------------------------------------------

#: Put first on the exporter's PYTHONPATH by the test, so that every Python process it runs (the
#: exporter and its decoding worker) raises, once its logging is set up, a warning and an
#: exception that nobody catches: nothing in the exporter's own code provokes them.
PROVOKE = """
import os, sys, threading, time, warnings

def provoke():
    deadline = time.monotonic() + 60
    while sys.excepthook is sys.__excepthook__ and time.monotonic() < deadline:
        time.sleep(0.01)
    where = os.path.basename(sys.argv[0])
    warnings.warn(f"forced by the test in {where}")
    raise RuntimeError(f"forced by the test in {where}")

threading.Thread(target=provoke, name="forced-by-test", daemon=True).start()
"""


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every complete line of ``text`` as a JSON object; fails on the first that is not one."""
    complete = text[: text.rfind("\n") + 1]
    records = []
    for line in complete.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"a stderr line is not JSON: {line!r}")
        assert isinstance(record, dict), line
        assert list(record)[:4] == ["time", "level", "source", "msg"], line
        records.append(record)
    return records


def test_with_log_format_json_every_stderr_line_is_a_json_object(
    tmp_path: Path, start_simulator: Start
) -> None:
    """Two HTTPS controllers with insecure_skip_verify, polled several times: every line the
    exporter and its worker write is a record, warnings and uncaught exceptions included, and
    the unverified certificate is said once per controller, not at every request."""
    ca = trustme.CA()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    simulators = {
        name: start_simulator(FederationSpec(vms=12, backups_per_vm=5), tls=(str(cert), str(key)))
        for name in ("boston", "austin")
    }
    settings = "{interval_seconds: 1, deadline_seconds: 60, timeout_seconds: 5, max_retries: 0}"
    lines = [f"poll: {settings}", "controllers:"]
    for name, simulator in simulators.items():
        lines += [
            f"  - name: {name}",
            f"    url: {simulator.url}",
            f"    username: {simulator.username}",
            f"    password: '{simulator.password}'",
            "    tls: {insecure_skip_verify: true}",
        ]
    config = tmp_path / "config.yaml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(PROVOKE, encoding="utf-8")
    pythonpath = os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")]))

    def seen_enough(exporter: ExporterProcess) -> bool:
        records = json_lines(exporter.log())
        polls = Counter(r["controller"] for r in records if "backups" in r)
        forced = [r for r in records if "forced by the test" in r["msg"]]
        return min(polls[name] for name in simulators) >= 3 and len(forced) >= 4

    with ExporterProcess(
        "--config.file", str(config), "--log.format", "json",
        log_path=tmp_path / "exporter.log", env={"PYTHONPATH": pythonpath},
    ) as exporter:  # fmt: skip
        wait_until(lambda: seen_enough(exporter), 60, "3 polls of each controller")
        assert exporter.stop() == 0
    text = exporter.log()
    assert text.endswith("\n")
    records = json_lines(text)

    tls_off = [r for r in records if "TLS certificate verification is OFF" in r["msg"]]
    assert sorted(r["controller"] for r in tls_off) == ["austin", "boston"]
    assert all(r["level"] == "warn" for r in tls_off)
    assert "Unverified HTTPS request" not in text
    for name, simulator in simulators.items():
        polls = [r for r in records if r.get("controller") == name and "backups" in r]
        assert len(polls) >= 3
        for poll in polls:
            assert poll["level"] == "info"
            assert poll["source"].startswith("poller.py:")
            assert poll["backups"] == simulator.backup_count()
            assert isinstance(poll["duration_seconds"], float)
            assert poll["msg"].startswith(f"controller {name}: {simulator.backup_count()} backups")
    # The warning and the exception each process was made to raise, as records (a worker is
    # started again after each full scan, and each raises its own).
    programs = {"__main__.py", "worker.py"}
    warned = {r["msg"] for r in records if r.get("category") == "UserWarning"}
    assert warned == {f"forced by the test in {program}" for program in programs}
    raised = [r for r in records if "traceback" in r and "forced by the test" in r["msg"]]
    assert {r["msg"] for r in raised} == {
        f"uncaught exception in thread forced-by-test: RuntimeError: forced by the test in {p}"
        for p in programs
    }
    for record in raised:
        assert record["traceback"].startswith("Traceback (most recent call last):\n")
        assert record["source"].startswith("sitecustomize.py:")


# --- --once files side by side in node_exporter's textfile directory ----------------------------

Series = tuple[str, frozenset[tuple[str, str]]]


def write_once_file(
    tmp_path: Path, simulator: SimulatedController, name: str, interval: int, directory: Path
) -> Path:
    """``--once --output`` for a config of one controller, as a cron job or timer runs it."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"poll: {{interval_seconds: {interval}, timeout_seconds: 5}}\n"
        "controllers:\n"
        f"  - name: {name}\n"
        f"    url: {simulator.url}\n"
        f"    username: {simulator.username}\n"
        f"    password: '{simulator.password}'\n",
        encoding="utf-8",
    )
    output = directory / f"simplivity-{name}.prom"
    result = run("--config.file", str(config), "--once", "--output", str(output))
    assert result.returncode == 0, result.stderr
    return output


def textfile_conflicts(files: Sequence[Path]) -> list[str]:
    """What node_exporter's textfile collector refuses when it merges the files' families by
    name: a series that two files hold, a family whose help text or type differs."""
    families: dict[str, tuple[str, str, str]] = {}
    series: dict[Series, str] = {}
    problems = []
    for path in files:
        for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
            first = families.setdefault(family.name, (path.name, family.documentation, family.type))
            if first[1:] != (family.documentation, family.type):
                problems.append(f"{family.name}: help or type differ in {first[0]}, {path.name}")
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                if key in series:
                    problems.append(f"{sample.name}{sample.labels} in {series[key]}, {path.name}")
                series.setdefault(key, path.name)
    return problems


@contextmanager
def node_exporter(directory: Path, log_path: Path) -> Iterator[str]:
    """The real node_exporter with only its textfile collector; yields its base URL."""
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    assert binary, "node_exporter is missing: run ./dev setup (Debian prometheus-node-exporter)"
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [binary, "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={directory}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status(base, "/metrics", process) == 200, 20, "node_exporter")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_once_files_of_two_configs_combine_in_a_textfile_directory(
    tmp_path: Path, start_simulator: Start
) -> None:
    """Two --once runs (other controllers, other settings) write two files into one textfile
    directory: node_exporter serves every series of both, and refuses none."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    files = [
        write_once_file(
            tmp_path, start_simulator(FederationSpec(seed=seed)), name, interval, directory
        )
        for seed, name, interval in ((1, "boston", 300), (2, "austin", 900))
    ]
    for path in files:
        checked = promtool("check", "metrics", stdin=path.read_text("utf-8"))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    assert textfile_conflicts(files) == []
    written = {
        key: value
        for path in files
        for key, value in parse(path.read_text("utf-8")).samples.items()
    }
    assert {dict(labels)["controller"] for name, labels in written if name == "simplivity_up"} == {
        "boston",
        "austin",
    }
    assert not [name for name, _ in written if name.startswith("simplivity_exporter_")]

    log_path = tmp_path / "node_exporter.log"
    with node_exporter(directory, log_path) as base:
        served = scrape(base)
        assert served.value("node_textfile_scrape_error") == 0
        missing = {key: value for key, value in written.items() if served.samples.get(key) != value}
        assert missing == {}, "node_exporter left out or changed these series"
        assert "error gathering metrics" not in log_path.read_text("utf-8")
        # Concatenated, the files would repeat each family's HELP, which no parser takes:
        # what node_exporter serves is their merge, and that is what Prometheus scrapes.
        checked = promtool("check", "metrics", stdin=served.text)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        # The check can fail: the same controller in a second file is refused, by both.
        shutil.copy(files[0], directory / "simplivity-boston-copy.prom")
        assert textfile_conflicts(sorted(directory.glob("*.prom")))
        scrape(base)
        wait_until(
            lambda: (
                "collected before with the same name and label values"
                in log_path.read_text("utf-8")
            ),
            10,
            "node_exporter to refuse the duplicate series",
        )

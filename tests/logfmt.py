"""A small logfmt reader for the tests, written from the format's rules, not from our writer:
``key=value`` pairs separated by spaces; a quoted value may hold anything, with ``\\"``,
``\\\\``, ``\\n``, ``\\r``, ``\\t`` and ``\\uXXXX`` escaped."""

from __future__ import annotations

_UNESCAPED = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


def parse_line(line: str) -> dict[str, str]:
    """The fields of one logfmt line; ValueError if it is not one."""
    if "\n" in line:
        raise ValueError(f"a record spans lines: {line!r}")
    fields: dict[str, str] = {}
    i, end = 0, len(line)
    while i < end:
        if line[i] == " ":
            i += 1
            continue
        equals = line.find("=", i)
        if equals < 0:
            raise ValueError(f"a key without a value at {i}: {line!r}")
        key, i = line[i:equals], equals + 1
        if any(c in key for c in ' "'):
            raise ValueError(f"a malformed key {key!r}: {line!r}")
        if i < end and line[i] == '"':
            value, i = _quoted(line, i + 1)
        else:
            stop = line.find(" ", i)
            stop = end if stop < 0 else stop
            value, i = line[i:stop], stop
            if '"' in value:
                raise ValueError(f"a quote in an unquoted value {value!r}: {line!r}")
        if key in fields:
            raise ValueError(f"the key {key!r} twice: {line!r}")
        fields[key] = value
    return fields


def _quoted(line: str, i: int) -> tuple[str, int]:
    """The value of the quoted string starting at ``i`` (after its quote), and where it ends."""
    out: list[str] = []
    while True:
        if i >= len(line):
            raise ValueError(f"an unterminated quoted value: {line!r}")
        c = line[i]
        if c == '"':
            if i + 1 < len(line) and line[i + 1] != " ":
                raise ValueError(f"no space after a quoted value: {line!r}")
            return "".join(out), i + 1
        if c == "\\":
            escaped = line[i + 1 : i + 2]
            if escaped == "u":
                out.append(chr(int(line[i + 2 : i + 6], 16)))
                i += 6
                continue
            if escaped not in _UNESCAPED:
                raise ValueError(f"an unknown escape \\{escaped}: {line!r}")
            out.append(_UNESCAPED[escaped])
            i += 2
            continue
        out.append(c)
        i += 1

"""Logging: Prometheus' flags and formats, one record a line on stderr, context as fields.

``--log.format logfmt`` (the default), as Prometheus and its exporters write it::

    time=2026-11-30T22:40:01.123Z level=info source=poller.py:182 msg="controller boston: …" \
controller=boston duration_seconds=1.41 backups=100000

``--log.format json``, the same fields as one object a line::

    {"time": "2026-11-30T22:40:01.123Z", "level": "info", "source": "poller.py:182", \
"msg": "controller boston: …", "controller": "boston", "duration_seconds": 1.41, …}

A log call keeps its sentence in ``msg`` and gives its context with ``extra=``
(``log.info("…", extra={"controller": name, "backups": n})``): each key becomes a field.
Records of other libraries carry a ``logger`` field, and a traceback goes in a ``traceback``
field (its newlines escaped), so a record is always one line.

Whatever else Python would write on stderr comes through here as well: warnings (with the file
and line that warned, like :func:`logging.captureWarnings`), uncaught exceptions in the main
thread or any other, exceptions Python can only report (``sys.unraisablehook``), and a record
that cannot be formatted. The decoding worker, a child process, logs the same way: it gets the
settings through :meth:`LogSettings.environment`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO, cast

#: ``--log.level`` values; ``warning`` is the exporter's old spelling of ``warn``.
LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: ``--log.format`` values; ``text`` is the exporter's old name of the default.
FORMATS: Mapping[str, str] = {"logfmt": "logfmt", "text": "logfmt", "json": "json"}

#: How the decoding worker learns the parent's settings (it logs on the same stderr).
ENV_LEVEL = "SIMPLIVITY_EXPORTER_LOG_LEVEL"
ENV_FORMAT = "SIMPLIVITY_EXPORTER_LOG_FORMAT"

#: The fields every record starts with; a context key of the same name is renamed.
_FIXED = ("time", "level", "source", "msg", "logger", "traceback", "stack")
#: What every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(
    [*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName"]
)

log = logging.getLogger("exporter")


@dataclass(frozen=True)
class LogSettings:
    """What ``--log.level`` and ``--log.format`` chose, aliases resolved."""

    level: str = "info"
    format: str = "logfmt"

    @classmethod
    def of(cls, level: str, format: str) -> LogSettings:
        """From the flags' values (aliases included); ValueError for any other."""
        if level not in LEVELS or format not in FORMATS:
            raise ValueError(f"unknown log level {level!r} or format {format!r}")
        return cls("warn" if level == "warning" else level, FORMATS[format])

    def environment(self) -> dict[str, str]:
        """For a child process that logs on the same stderr (:meth:`from_environment`)."""
        return {ENV_LEVEL: self.level, ENV_FORMAT: self.format}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> LogSettings:
        try:
            return cls.of(environ.get(ENV_LEVEL, "info"), environ.get(ENV_FORMAT, "logfmt"))
        except ValueError:
            return cls()


_current = LogSettings()


def current() -> LogSettings:
    """The settings :func:`setup` last applied (the defaults before)."""
    return _current


def setup(settings: LogSettings, stream: TextIO | None = None) -> None:
    """Send every record, warning and uncaught exception to ``stream`` (stderr) as lines."""
    global _current
    handler = LineHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JSONFormatter() if settings.format == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[settings.level])
    # urllib3 logs every request URL at debug; keep that out even at --log.level debug.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    warnings.showwarning = _log_warning
    # urllib3 warns at every request to a controller whose certificate is not verified; the
    # client says so once per controller instead ("TLS certificate verification is OFF").
    warnings.filterwarnings("ignore", message="Unverified HTTPS request", module=r"urllib3\.")
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    sys.unraisablehook = _log_unraisable
    _current = settings


# -- the formats ---------------------------------------------------------------------------------


class StructuredFormatter(logging.Formatter):
    """A record as its fields: time, level, source, msg, then its context, then a traceback."""

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        fields: dict[str, object] = {
            "time": _timestamp(record),
            "level": level_name(record.levelno),
            "source": f"{record.filename}:{record.lineno}",
            "msg": record.getMessage(),
        }
        if record.name != "exporter" and not record.name.startswith("exporter."):
            fields["logger"] = record.name
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                fields[f"field_{key}" if key in _FIXED else key] = value
        if record.exc_info:
            fields["traceback"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return fields


class LogfmtFormatter(StructuredFormatter):
    """``key=value`` pairs, quoted where go-logfmt quotes (a space, ``=``, ``"``, a control
    character), with ``\\``, ``"`` and control characters escaped inside the quotes."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(
            f"{_logfmt_key(key)}={logfmt_value(value)}"
            for key, value in self.fields(record).items()
        )


class JSONFormatter(StructuredFormatter):
    """One JSON object: numbers, booleans and null as themselves, anything else as a string."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {key: _json_value(value) for key, value in self.fields(record).items()}
        return json.dumps(fields, ensure_ascii=False)


def level_name(levelno: int) -> str:
    """Prometheus' four levels; anything above error (critical) is an error too."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    return "info" if levelno >= logging.INFO else "debug"


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def logfmt_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and text != "null" and all(c > " " and c not in '="' and c.isprintable() for c in text):
        return text
    escaped = "".join(
        _ESCAPES.get(c) or (c if c.isprintable() else f"\\u{ord(c):04x}") for c in text
    )
    return f'"{escaped}"'


def _logfmt_key(key: str) -> str:
    return "".join("_" if c <= " " or c in '="' else c for c in key) or "_"


def _json_value(value: object) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


class LineHandler(logging.StreamHandler[TextIO]):
    """Writes each record as one line; a record that cannot be formatted becomes a record
    that says so, instead of the multi-line report ``logging`` would print."""

    def handleError(self, record: logging.LogRecord) -> None:
        try:
            # Not the record's arguments: they are what failed, and may be anything.
            failure = logging.LogRecord(
                record.name,
                logging.ERROR,
                record.pathname,
                record.lineno,
                "a log record could not be written: %r",
                (record.msg,),
                sys.exc_info(),
            )
            self.stream.write(self.format(failure) + self.terminator)
            self.flush()
        except Exception:  # noqa: S110 (stderr itself is gone: nowhere left to say it)
            pass


# -- what else would reach stderr ----------------------------------------------------------------


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """``warnings.showwarning``: a record from the file and line that warned."""
    if file is not None:  # to a file of the caller's choosing, as Python writes it
        file.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    logger = logging.getLogger("py.warnings")
    if logger.isEnabledFor(logging.WARNING):
        record = logger.makeRecord(
            logger.name,
            logging.WARNING,
            filename,
            lineno,
            "%s",
            (str(message),),
            None,
            extra={"category": category.__name__},
        )
        logger.handle(record)


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """``sys.excepthook``: the main thread's uncaught exception as one record."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _log_exception("uncaught exception: %s", (_describe(exc_type, exc),), (exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook``: a thread's uncaught exception as one record."""
    if args.exc_type is SystemExit:  # ends a thread quietly, as the default hook lets it
        return
    name = args.thread.name if args.thread is not None else "unknown"
    exc = cast(BaseException, args.exc_value)  # None only if raised so by hand; shown as None
    _log_exception(
        "uncaught exception in thread %s: %s",
        (name, _describe(args.exc_type, exc)),
        (args.exc_type, exc, args.exc_traceback),
        {"thread_name": name},
    )


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """``sys.unraisablehook``: an exception Python could only report (in ``__del__``, …)."""
    what = unraisable.err_msg or "Exception ignored in"
    try:
        target = repr(unraisable.object)
    except Exception:
        target = f"<{type(unraisable.object).__name__} object>"
    if unraisable.exc_value is None:
        log.error("%s: %s", what, target)
        return
    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    _log_exception("%s: %s", (what, target), exc_info)


def _log_exception(
    message: str,
    args: tuple[object, ...],
    exc_info: tuple[type[BaseException], BaseException, TracebackType | None],
    extra: Mapping[str, object] | None = None,
) -> None:
    """An error record whose source is where the exception was raised, not this module."""
    if not log.isEnabledFor(logging.ERROR):
        return
    pathname, lineno, tb = __file__, 0, exc_info[2]
    while tb is not None:
        pathname, lineno, tb = tb.tb_frame.f_code.co_filename, tb.tb_lineno, tb.tb_next
    record = log.makeRecord(
        log.name, logging.ERROR, pathname, lineno, message, args, exc_info, extra=extra
    )
    log.handle(record)


def _describe(exc_type: type[BaseException], exc: BaseException) -> str:
    text = str(exc)
    return f"{exc_type.__name__}: {text}" if text else exc_type.__name__

"""Logs a pipeline can parse: Prometheus' flags, logfmt and JSON lines read back field by field,
and everything else that reaches stderr (warnings, uncaught exceptions, the decoding worker's
reports) as records of the same format, one line each."""

from __future__ import annotations

import inspect
import io
import json
import logging
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from urllib3.exceptions import InsecureRequestWarning, SystemTimeWarning

from exporter import logs
from exporter.cli import build_parser
from exporter.logs import LogSettings
from exporter.model import DecodeError
from exporter.worker import DecodingWorker
from tests.logfmt import parse_line

ROOT = Path(__file__).resolve().parent.parent
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

Setup = Callable[[str, str], io.StringIO]


def records(text: str, format: str) -> list[Mapping[str, object]]:
    """Every line of ``text`` as a record; fails on any line that is not one."""
    parsed: list[Mapping[str, object]] = []
    for line in text.splitlines():
        value = json.loads(line) if format == "json" else parse_line(line)
        assert isinstance(value, dict), line
        record: Mapping[str, object] = value
        assert list(record)[:4] == ["time", "level", "source", "msg"], line
        assert TIME.fullmatch(str(record["time"])), line
        parsed.append(record)
    return parsed


def here() -> str:
    """``source`` of a record logged on the caller's next line."""
    frame = inspect.currentframe()
    assert frame is not None
    assert frame.f_back is not None
    return f"test_logs.py:{frame.f_back.f_lineno + 1}"


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """``setup(level, format)`` logs into the returned buffer; everything is put back after."""
    root = logging.getLogger()
    handlers, levels = (
        list(root.handlers),
        {name: logging.getLogger(name).level for name in ("", "urllib3", "apscheduler")},
    )
    for hook in ("excepthook", "unraisablehook"):
        monkeypatch.setattr(sys, hook, getattr(sys, hook))
    monkeypatch.setattr("threading.excepthook", __import__("threading").excepthook)
    monkeypatch.setattr(logs, "_current", logs.current())

    def start(level: str, format: str) -> io.StringIO:
        stream = io.StringIO()
        logs.setup(LogSettings.of(level, format), stream)
        return stream

    with warnings.catch_warnings():  # filters and showwarning come back as they were
        warnings.simplefilter("always")  # every warning shows, not only a location's first
        yield start
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


# -- the flags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "settings"),
    [
        ([], LogSettings("info", "logfmt")),
        (["--log.level", "debug", "--log.format", "json"], LogSettings("debug", "json")),
        (["--log.level", "warn"], LogSettings("warn", "logfmt")),
        (["--log.level", "warning"], LogSettings("warn", "logfmt")),  # the old spelling
        (["--log.level", "error", "--log.format", "logfmt"], LogSettings("error", "logfmt")),
        (["--log.format", "text"], LogSettings("info", "logfmt")),  # the old name
    ],
)
def test_the_flags_take_prometheus_values_and_the_old_ones(
    argv: list[str], settings: LogSettings
) -> None:
    args = build_parser().parse_args(argv)
    assert LogSettings.of(args.log_level, args.log_format) == settings


@pytest.mark.parametrize(
    "argv", [["--log.level", "critical"], ["--log.level", "INFO"], ["--log.format", "logfmt2"]]
)
def test_other_flag_values_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_worker_reads_the_settings_from_its_environment() -> None:
    settings = LogSettings("debug", "json")
    assert LogSettings.from_environment(settings.environment()) == settings
    assert LogSettings.from_environment({}) == LogSettings()
    broken = {logs.ENV_LEVEL: "loud", logs.ENV_FORMAT: "json"}
    assert LogSettings.from_environment(broken) == LogSettings()


# -- the formats ------------------------------------------------------------------------------

CONTEXT: dict[str, object] = {
    "controller": "boston",
    "duration_seconds": 1.41,
    "backups": 100000,
    "reason": "decode",
    "error": 'page at offset 0 said "count": 3\tthen a\\b=c\nand more',
    "url": "https://ovc.example.test:8443/api?x=1",
    "empty": "",
    "word": "null",
    "unicode": "Zürich é",
    "control": "bell\x07",
    "ok": True,
    "missing": None,
}


def test_logfmt_lines_read_back_with_every_field(setup: Setup) -> None:
    stream = setup("info", "logfmt")
    source = here()
    logging.getLogger("exporter.poller").info(
        'controller %s: %d backups in "%.2f" s', "boston", 100000, 1.41, extra=CONTEXT
    )
    line = stream.getvalue()
    assert line.count("\n") == 1
    [record] = records(line, "logfmt")
    assert record == {
        "time": record["time"],
        "level": "info",
        "source": source,
        "msg": 'controller boston: 100000 backups in "1.41" s',
        "controller": "boston",
        "duration_seconds": "1.41",
        "backups": "100000",
        "reason": "decode",
        "error": CONTEXT["error"],
        "url": CONTEXT["url"],
        "empty": "",
        "word": "null",  # the string, quoted: a bare null is None
        "unicode": "Zürich é",
        "control": "bell\x07",
        "ok": "true",
        "missing": "null",
    }
    # Bare where go-logfmt writes them bare, quoted where it quotes.
    for written in ("controller=boston", "duration_seconds=1.41", "backups=100000", "ok=true"):
        assert f" {written} " in line
    for written in ('empty=""', 'word="null"', "missing=null", 'unicode="Zürich é"'):
        assert f" {written}" in line
    assert 'url="https://ovc.example.test:8443/api?x=1"' in line  # holds "="
    assert r'control="bell\u0007"' in line


def test_json_lines_hold_the_same_fields_with_their_types(setup: Setup) -> None:
    stream = setup("info", "json")
    source = here()
    logging.getLogger("exporter.poller").info("controller %s: done", "boston", extra=CONTEXT)
    [record] = records(stream.getvalue(), "json")
    assert record == {
        "time": record["time"],
        "level": "info",
        "source": source,
        "msg": "controller boston: done",
        **CONTEXT,
    }


@pytest.mark.parametrize("format", ["logfmt", "json"])
def test_levels_are_prometheus_four(setup: Setup, format: str) -> None:
    stream = setup("warn", format)
    log = logging.getLogger("exporter.test")
    log.debug("hidden")
    log.info("hidden")
    log.warning("a warning")
    log.error("an error")
    log.critical("critical, as an error")
    logged = records(stream.getvalue(), format)
    assert [(r["level"], r["msg"]) for r in logged] == [
        ("warn", "a warning"),
        ("error", "an error"),
        ("error", "critical, as an error"),
    ]


def test_other_libraries_records_name_their_logger(setup: Setup) -> None:
    stream = setup("info", "logfmt")
    logging.getLogger("apscheduler.scheduler").error("job failed")
    logging.getLogger("exporter").error("ours")
    theirs, ours = records(stream.getvalue(), "logfmt")
    assert theirs["logger"] == "apscheduler.scheduler"
    assert "logger" not in ours


def test_a_traceback_is_one_field_of_one_line(setup: Setup) -> None:
    stream = setup("info", "logfmt")
    try:
        raise KeyError("missing")
    except KeyError:
        logging.getLogger("exporter.poller").exception(
            "controller %s: unexpected error", "boston", extra={"controller": "boston"}
        )
    [record] = records(stream.getvalue(), "logfmt")
    assert record["controller"] == "boston"
    traceback = str(record["traceback"])
    assert traceback.startswith("Traceback (most recent call last):\n")
    assert traceback.endswith("KeyError: 'missing'")


def test_a_context_key_never_hides_a_fixed_field(setup: Setup) -> None:
    stream = setup("info", "json")
    logging.getLogger("exporter").info("hello", extra={"time": "then", "level": "loud"})
    [record] = records(stream.getvalue(), "json")
    assert record["level"] == "info"
    assert (record["field_time"], record["field_level"]) == ("then", "loud")


def test_a_record_that_cannot_be_formatted_is_one_record_that_says_so(setup: Setup) -> None:
    stream = setup("info", "json")
    logging.getLogger("exporter").info("%d backups", "many")
    [record] = records(stream.getvalue(), "json")
    assert record["level"] == "error"
    assert record["msg"] == "a log record could not be written: '%d backups'"
    assert "TypeError" in str(record["traceback"])


# -- warnings ---------------------------------------------------------------------------------


def test_a_warning_is_a_record_from_where_it_was_raised(setup: Setup) -> None:
    stream = setup("info", "json")
    source = here()
    warnings.warn("the sky is low", UserWarning, stacklevel=1)
    [record] = records(stream.getvalue(), "json")
    assert record == {
        "time": record["time"],
        "level": "warn",
        "source": source,
        "msg": "the sky is low",
        "logger": "py.warnings",
        "category": "UserWarning",
    }


def test_only_urllib3s_per_request_tls_warning_is_dropped(setup: Setup) -> None:
    stream = setup("info", "logfmt")
    unverified = (
        "Unverified HTTPS request is being made to host '127.0.0.1'. Adding certificate "
        "verification is strongly advised."
    )
    # As urllib3 raises it, at every request to a controller with insecure_skip_verify: the
    # client said so once already ("TLS certificate verification is OFF").
    warnings.warn_explicit(
        unverified, InsecureRequestWarning, "connectionpool.py", 1, "urllib3.connectionpool"
    )
    # Anything else still shows: another urllib3 warning, the same words from elsewhere.
    warnings.warn_explicit(
        "System time is way off", SystemTimeWarning, "connection.py", 2, "urllib3.connection"
    )
    warnings.warn_explicit(unverified, UserWarning, "other.py", 3, "otherlib.client")
    logged = records(stream.getvalue(), "logfmt")
    assert [(r["source"], r["category"]) for r in logged] == [
        ("connection.py:2", "SystemTimeWarning"),
        ("other.py:3", "UserWarning"),
    ]


# -- uncaught exceptions ----------------------------------------------------------------------

UNCAUGHT = """
import sys, threading
from exporter import logs
logs.setup(logs.LogSettings.of("info", sys.argv[1]))

class Leaky:
    def __del__(self):
        raise ValueError("raised in __del__")

leaky = Leaky()
del leaky
thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
thread.start()
thread.join()
raise RuntimeError("raised in the main thread")
"""


@pytest.mark.parametrize("format", ["logfmt", "json"])
def test_uncaught_exceptions_are_one_record_each(format: str) -> None:
    """In a real process, with Python's real hooks: __del__, a thread, the main thread."""
    result = subprocess.run(
        [sys.executable, "-c", UNCAUGHT, format],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 1
    logged = records(result.stderr, format)
    # The messages hold an address and words that vary: compare their start.
    expected = [
        ("<string>:8", "Exception ignored in: <function Leaky.__del__ at 0x"),
        ("<string>:12", "uncaught exception in thread doomed: ZeroDivisionError: division by"),
        ("<string>:15", "uncaught exception: RuntimeError: raised in the main thread"),
    ]
    assert [
        (r["level"], r["source"], str(r["msg"])[: len(start)])
        for r, (_, start) in zip(logged, expected, strict=True)
    ] == [("error", source, start) for source, start in expected]
    unraisable, in_thread, in_main = (str(r["traceback"]) for r in logged)
    assert unraisable.endswith("ValueError: raised in __del__")
    assert in_thread.endswith("ZeroDivisionError: division by zero")
    assert in_main.endswith("RuntimeError: raised in the main thread")
    assert logged[1]["thread_name"] == "doomed"


# -- the decoding worker ----------------------------------------------------------------------


@pytest.mark.parametrize("format", ["logfmt", "json"])
def test_the_worker_reports_a_bug_in_the_parents_format(
    format: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The child shares the exporter's stderr: its report of a bug is a record like ours."""
    worker = DecodingWorker(log_settings=LogSettings("info", format))
    try:
        worker.open_scan()  # starts the child
        capfd.readouterr()
        with pytest.raises(DecodeError, match="internal error in the decoding worker"):
            worker.call(("no-such-request", 0))  # a request the child has no answer for
    finally:
        worker.close()
    [record] = records(capfd.readouterr().err, format)
    assert record["level"] == "error"
    assert str(record["source"]).startswith("worker.py:")
    assert record["msg"] == "decoding worker: no-such-request request failed"
    assert str(record["traceback"]).endswith("ValueError: unknown request 'no-such-request'")

"""The decoding worker: pages are decoded and counted in a child process, off the exporter's GIL.

Decoding and counting the pages is the CPU-heavy half of a poll, and it holds the interpreter
lock. In the exporter's own process that time is taken from the threads that answer
``/metrics``: each waits for the lock at every turn, and scrapes slow down while a poll runs.
So the exporter's threads only move bytes (HTTP in, pipe out, both without the lock held) and
one child process, started by the first poll and shared by every controller, does the
decoding and counting:

    exporter (fetches pages)  --page body-->  python -m exporter.worker
                              <--outcome----  (a PageCounter and an Aggregator per scan)

The exporter's :class:`~exporter.scan.Scanner` still pages through the listing; the child only
runs the other half, :class:`~exporter.pages.PageCounter`. It gets page bodies, never
credentials or tokens. It keeps one :class:`~exporter.store.StoreScan` per scan in
progress and sends back a small :class:`~exporter.pages.PageOutcome` per page, with the
page's backups in columns when the scan keeps them (:class:`~exporter.store.Rows`: the store
is built in the exporter as the pages come, never whole in the child), then the scan's
snapshot (one entry per VM). An incremental poll's store is counted here too, sent a chunk of
rows at a time (:meth:`~exporter.store.StoreScan.count_rows`) and counted as it comes.
Messages are a header pickled onto the pipe as it is made, with the length of a raw body (a
page) that follows it, on the child's stdin and stdout; it exits when its stdin closes, so it
never outlives the exporter. Its stderr is the exporter's, and it logs there in the
exporter's format (:mod:`exporter.logs`).

A full scan's child is stopped once that scan and every other open one have closed, and the
next scan starts a new one. Decoding a million backups leaves a child holding 32-35 MiB
(Python's arenas that the freed tallies and pages leave behind) which nothing gives back but
its exit; an incremental poll's count, from the store's columns, leaves one at about 20, so
the child that counts them lives on.

If the child cannot be started, scans are counted in the exporter's own process (slower
scrapes while polling, nothing else changes) and a warning says so. If it dies during a scan,
that poll fails with reason ``decode`` and the next one starts a new child.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from exporter import logs
from exporter.memory import keep_large_buffers_off_the_heap
from exporter.model import BackupSnapshot, DecodeError, OrderError, VMBackups
from exporter.pages import SORT_FIELD, PageOutcome
from exporter.store import BackupScan, BackupStore, Rows, SharedWith, StoreScan

log = logging.getLogger(__name__)

#: How much lower the child's CPU priority is than the exporter's (``nice``).
WORKER_NICENESS = 10
#: The environment variables the child inherits.
_PASSED_ON = re.compile(r"PYTHON[A-Z0-9_]*|PATH|HOME|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR")
#: A snapshot's VMs are sent this many at a time: a pickle keeps a memo of every object in it,
#: on both sides, while it is made and read (one of 20,000 VMs: 8.8 MB in the child while it
#: is made, 6 MB in the exporter while it is read; in parts of 2,000, about 1 and 0.6).
VMS_PER_PART = 2_000
#: A page is at most 64 MiB (the client refuses larger answers); a body is never near this.
_MAX_BODY_BYTES = 256 * 1024 * 1024


class WorkerLost(DecodeError):
    """The child process ended or stopped answering; the scan in progress is lost."""


class DecodingWorker:
    """The child process, shared by every controller's scans; started on first use.

    Calls are one at a time (a request, then its answer), so scans of several controllers take
    turns, a page each. Thread-safe.
    """

    def __init__(
        self, command: list[str] | None = None, log_settings: logs.LogSettings | None = None
    ) -> None:
        """The child logs on this process's stderr with ``log_settings`` (by default, those
        this process logs with)."""
        self._command = command or [sys.executable, "-m", "exporter.worker"]
        self._log_settings = log_settings
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._scan_ids = itertools.count(1)
        self._open_scans = 0
        self._retiring = False  # a full scan was counted: stop the child once no scan is open
        self._closed = False
        self._warned = False
        self.starts = 0

    def open_scan(self, keep: bool = True) -> BackupScan:
        """A new scan in the child (keeping its backups for the next poll, or not:
        :class:`~exporter.store.StoreScan`); in this process instead if the child cannot be
        started."""
        scan_id = next(self._scan_ids)
        with self._lock:  # counted before the child is asked: it is not stopped meanwhile
            self._open_scans += 1
        try:
            _, generation = self._exchange(("open", scan_id, keep), None)
        except WorkerLost as err:
            self._scan_closed(decoded_pages=False)
            if not self._warned:
                log.warning(
                    "%s; counting backups in the exporter's own process instead",
                    err,
                    extra={"error": str(err)},
                )
                self._warned = True
            return StoreScan(keep)
        except BaseException:
            self._scan_closed(decoded_pages=False)
            raise
        self._warned = False
        return _WorkerScan(self, scan_id, generation, keep)

    def call(
        self,
        request: tuple[Any, ...],
        generation: int | None = None,
        body: bytes = b"",
        published: Sequence[VMBackups] = (),
    ) -> Any:
        """Send one request and return its answer; :class:`DecodeError` if the child refused it.

        With ``generation`` (what ``open`` answered), only to the child that answered it: a
        scan's state dies with its child, and a new child is not started just to hear that.
        """
        return self._exchange(request, generation, body, published)[0]

    def _exchange(
        self,
        request: tuple[Any, ...],
        generation: int | None,
        body: bytes = b"",
        published: Sequence[VMBackups] = (),
    ) -> tuple[Any, int]:
        """The answer, and the generation of the child that gave it; a snapshot's VMs shared
        with ``published`` (:class:`~exporter.store.SharedWith`)."""
        with self._lock:
            if self._closed:
                raise WorkerLost("the decoding worker is closed")
            if generation is not None and (self._process is None or generation != self.starts):
                raise WorkerLost("the decoding worker restarted during the scan")
            process = self._process if self._process is not None else self._start()
            assert process.stdin is not None
            assert process.stdout is not None
            try:
                _send(process.stdin, request, body)
                status, value = _receive_answer(process.stdout, published)
            except (OSError, EOFError, ValueError, pickle.UnpicklingError):
                self._stop_process()
                raise WorkerLost(
                    f"the exporter's decoding worker (pid {process.pid}) ended unexpectedly"
                    + _how_it_ended(process.returncode)
                ) from None
            except BaseException:
                self._stop_process()  # half a conversation: the next answer would be this one's
                raise
            answered_by = self.starts
        if status == "order":
            raise OrderError(value)
        if status == "error":
            raise DecodeError(value)
        return value, answered_by

    def close(self) -> None:
        """Stop the child (it exits when its stdin closes); later calls raise WorkerLost."""
        with self._lock:
            self._closed = True
            self._stop_process()

    def _scan_closed(self, decoded_pages: bool) -> None:
        with self._lock:
            self._open_scans -= 1
            self._retiring = self._retiring or decoded_pages
            if self._open_scans == 0 and self._retiring:
                self._retiring = False
                process = self._process
                self._stop_process()
                if process is not None:
                    log.debug(
                        "decoding worker stopped after a full scan, pid %d",
                        process.pid,
                        extra={"pid": process.pid},
                    )

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None else None

    def _start(self) -> subprocess.Popen[bytes]:
        # Only what Python itself reads: the exporter's environment may hold passwords
        # (``${VAR}`` in the config), and the child has no use for them.
        env = {key: value for key, value in os.environ.items() if _PASSED_ON.fullmatch(key)}
        # The child imports the very package this process runs, wherever it was found.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        env.update((self._log_settings or logs.current()).environment())
        try:
            process = subprocess.Popen(
                self._command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as err:
            raise WorkerLost(
                f"the decoding worker could not be started ({err.strerror or err})"
            ) from None
        self._process = process
        self.starts += 1
        log.debug("decoding worker started, pid %d", process.pid, extra={"pid": process.pid})
        return process

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class _WorkerScan:
    """One scan counted in the child; what :class:`~exporter.store.BackupScan` asks for.

    With ``keep``, each page's answer carries the backups it added (a few columns' bytes,
    :class:`~exporter.store.Rows`), which go into this process's store as they come: the
    child never holds more than a page of them, and neither process a second copy."""

    def __init__(self, worker: DecodingWorker, scan_id: int, generation: int, keep: bool) -> None:
        self._worker = worker
        self._id = scan_id
        self._generation = generation
        self._store = BackupStore() if keep else None
        self._decoded_pages = False
        self._closed = False

    def count(self, offset: int, body: bytes, order: str = SORT_FIELD) -> PageOutcome:
        self._decoded_pages = True
        request = ("page", self._id, offset, order)
        outcome: PageOutcome
        rows: Rows | None
        outcome, rows = self._worker.call(request, self._generation, body)
        if rows is not None and self._store is not None:
            self._store.extend(rows)
        return outcome

    def count_rows(self, rows: Rows) -> None:
        self._worker.call(("rows", self._id, rows), self._generation)

    def snapshot(self, published: Sequence[VMBackups] = ()) -> BackupSnapshot:
        request = ("snapshot", self._id)
        snapshot: BackupSnapshot = self._worker.call(request, self._generation, b"", published)
        return snapshot

    def take_store(self) -> BackupStore | None:
        """The scan's backups, for the next poll (whose changes are few, and counted here)."""
        return self._store

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(DecodeError):  # the child is gone, and the scan with it
                self._worker.call(("close", self._id), self._generation)
        finally:
            self._worker._scan_closed(self._decoded_pages)


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return ""
    if code < 0:
        return f", killed by signal {-code}"
    return f" with exit code {code}"


def _send(stream: IO[bytes], message: object, body: bytes = b"") -> None:
    """``message`` and the length of ``body``, pickled onto the stream as they are made (64 KiB
    frames: a snapshot or a chunk of rows is never held whole as a pickle, by either side),
    then ``body`` as it is (a page is never copied into a pickle)."""
    pickle.dump((message, len(body)), stream, pickle.HIGHEST_PROTOCOL)
    stream.write(body)
    stream.flush()


def _receive(stream: IO[bytes]) -> tuple[Any, bytes]:
    # Our own child or parent, on a pipe nobody else holds: pickles are safe here.
    message, body_length = pickle.load(stream)  # noqa: S301
    if not 0 <= body_length <= _MAX_BODY_BYTES:
        raise ValueError(f"a message of {body_length} bytes")
    return message, _read_exactly(stream, body_length)


def _send_answer(stream: IO[bytes], answer: tuple[str, Any]) -> None:
    """An answer; a snapshot's VMs :data:`VMS_PER_PART` at a time, each part a pickle of its
    own after the rest of it."""
    status, value = answer
    vms: tuple[Any, ...] = ()
    if isinstance(value, BackupSnapshot):
        value, vms = replace(value, vms=()), value.vms
    pickle.dump((status, value, len(vms)), stream, pickle.HIGHEST_PROTOCOL)
    for first in range(0, len(vms), VMS_PER_PART):
        pickle.dump(vms[first : first + VMS_PER_PART], stream, pickle.HIGHEST_PROTOCOL)
    stream.flush()


def _receive_answer(stream: IO[bytes], published: Sequence[VMBackups] = ()) -> tuple[str, Any]:
    """An answer; a snapshot's VMs equal to one of ``published`` given as that one, part by
    part, so that the new snapshot is never held whole beside the published one."""
    status, value, vms = pickle.load(stream)  # noqa: S301 (our own child, as above)
    if vms:
        shared = SharedWith(published)
        parts = [
            tuple(shared(pickle.load(stream)))  # noqa: S301
            for _ in range(-(-vms // VMS_PER_PART))
        ]
        value = replace(value, vms=tuple(itertools.chain.from_iterable(parts)))
    return status, value


def _read_exactly(stream: IO[bytes], length: int) -> bytes:
    data = stream.read(length) if length else b""
    if len(data) < length:
        raise EOFError
    return data


def _answer(scans: dict[int, StoreScan], request: tuple[Any, ...], body: bytes) -> Any:
    operation, scan_id, *arguments = request
    if operation == "page":
        offset, order = arguments
        scan = _scan(scans, scan_id)
        return scan.count(offset, body, order), scan.drain()
    if operation == "open":
        (keep,) = arguments
        scans[scan_id] = StoreScan(keep)
        return None
    if operation == "close":
        scans.pop(scan_id, None)
        return None
    if operation == "rows":
        (rows,) = arguments
        _scan(scans, scan_id).count_rows(rows)
        return None
    if operation == "snapshot":
        return _scan(scans, scan_id).snapshot()
    raise ValueError(f"unknown request {operation!r}")


def _scan(scans: dict[int, StoreScan], scan_id: int) -> StoreScan:
    scan = scans.get(scan_id)
    if scan is None:
        raise DecodeError("the decoding worker restarted during the scan")
    return scan


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer requests until ``requests`` ends: the child's whole life.

    The cycle collector is off while pages are counted: a page decodes into thousands of
    dicts that live until it is counted, and collections kept scanning them (and every scan's
    tallies) over and over, a large share of the child's time. Nothing here makes reference cycles
    but an exception's traceback, so a collection after each scan is enough.
    """
    gc.disable()
    gc.freeze()  # what the imports left stays out of every collection
    scans: dict[int, StoreScan] = {}
    while True:
        try:
            request, body = _receive(requests)
        except EOFError:
            return
        try:
            answer: tuple[str, Any] = ("ok", _answer(scans, request, body))
        except OrderError as err:  # the scanner may ask again in another order
            answer = ("order", str(err))
        except DecodeError as err:
            answer = ("error", str(err))
        except Exception as err:  # a bug: say so on stderr, keep serving the other scans
            log.exception("decoding worker: %s request failed", request[0])
            answer = ("error", f"internal error in the decoding worker: {type(err).__name__}")
        del body  # a page's body is not kept while waiting for the next
        _send_answer(answers, answer)
        if request[0] == "close":
            gc.collect()


def main() -> int:
    # Ctrl-C in a terminal reaches the whole process group; the exporter decides, and the
    # child ends when the exporter closes its stdin (or exits).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(logs.LogSettings.from_environment(os.environ))
    # Counting backups can wait; answering a scrape should not. When the CPU is short, the
    # exporter's own threads (serving /metrics) go first.
    os.nice(WORKER_NICENESS)
    keep_large_buffers_off_the_heap()
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries answers only: a stray print would corrupt them
    serve(sys.stdin.buffer, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())

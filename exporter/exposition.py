"""The ``/metrics`` text: the collector's families, written by prometheus_client, and cached.

The exposition owns everything it caches: the text of each controller's snapshot (written
once, when the snapshot first shows) and the whole text with its gzip (written at most once
per second and per change of the statuses). The poller knows nothing of it: the app subscribes
:meth:`Exposition.refresh` to the poller, so that each poll writes the text of its new
snapshot before a scrape asks for it.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.collector import (
    AGE_FAMILIES,
    BackupCollector,
    ExporterState,
    age_families,
    controller_families,
    exporter_families,
    health_families,
    snapshot_families,
)
from exporter.model import ControllerSnapshot

log = logging.getLogger(__name__)


def _write(families: Sequence[Metric]) -> str:
    """``families`` as prometheus_client writes them: the one writer of ``/metrics``."""
    return generate_latest(_Families(families)).decode("utf-8")


def _series(family: Metric) -> str:
    """A gauge family's series as prometheus_client writes them, without its HELP and TYPE
    lines: one line each, as the writer escapes a newline in the help text."""
    return _write([family]).split("\n", 2)[2]


@dataclass(frozen=True)
class _WrittenSnapshot:
    """One controller's snapshot, its series written out by family name (all but the ages)."""

    snapshot: ControllerSnapshot
    #: The state it was written under: whether its per-VM series are shown, say.
    state: ExporterState
    series: Mapping[str, str]

    @classmethod
    def of(
        cls, controller: str, snapshot: ControllerSnapshot, state: ExporterState
    ) -> _WrittenSnapshot:
        families = snapshot_families(controller, snapshot, state)
        return cls(snapshot, state, {family.name: _series(family) for family in families})


class TextWriter:
    """Writes the text of the collector's families, each snapshot's series once.

    Writing a snapshot with thousands of VMs costs far more than the ages that change every
    second (README, "Performance"): the series of each snapshot are written when it first
    shows, the ages and the few health series at each render. Several controllers share each
    family's HELP and TYPE lines: their series follow one another under them.
    """

    def __init__(self, collector: BackupCollector) -> None:
        self._collector = collector
        # controller -> that controller's snapshot, written out
        self._written: dict[str, _WrittenSnapshot] = {}

    def text(self) -> str:
        return "".join(self.parts())

    def parts(self) -> list[str]:
        """The text in pieces: each snapshot's series are the very string objects written when
        it first showed, so that what is made of them (their gzip) can be kept too."""
        reading = self._collector.read()
        state = reading.state
        written = self._written_snapshots(reading.fresh, state)
        ages = {family.name: family for family in age_families(reading.fresh, state, reading.now)}
        out: list[str] = []
        for family in controller_families(state):
            name = family.name
            if name in AGE_FAMILIES:
                out.append(_write([ages[name]]))
            else:
                out.append(_write([family]))  # no series: its HELP and TYPE lines
                out += [w.series.get(name, "") for w in written]
        out.append(_write([*health_families(reading.statuses), *exporter_families(state)]))
        return out

    def _written_snapshots(
        self, fresh: Sequence[tuple[str, ControllerSnapshot]], state: ExporterState
    ) -> list[_WrittenSnapshot]:
        cache = self._written
        written = []
        for controller, snapshot in fresh:
            entry = cache.get(controller)
            if entry is None or entry.snapshot is not snapshot or entry.state != state:
                entry = _WrittenSnapshot.of(controller, snapshot, state)
            written.append(entry)
        # Replaced, never changed in place: concurrent renders each see a whole cache.
        self._written = {
            controller: entry for (controller, _), entry in zip(fresh, written, strict=True)
        }
        return written


@dataclass(frozen=True)
class _Rendered:
    key: tuple[object, int]  # (generation, second)
    plain: bytes
    gzipped: bytes


#: A gzip member's header as ``gzip.compress(data, compresslevel=1, mtime=0)`` writes it.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
#: The last, empty deflate block that ends a member.
_DEFLATE_END = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
#: Pieces of the text shorter than this are joined and compressed with their neighbours.
_SEGMENT_MIN_CHARS = 16 * 1024


def _deflate(data: bytes) -> bytes:
    """``data`` as deflate blocks that any deflate stream may go on from: a fresh compressor
    refers back to nothing before it, and a sync flush ends on a byte boundary.

    Level 1, the fastest: the ages are compressed again every second, and a higher level
    costs several times the CPU for a body only slightly smaller.
    """
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


class _Encoder:
    """Writes the text as bytes and as one gzip member, keeping both for the pieces that
    stay the same from one second to the next.

    Only the ages change every second, yet the whole text used to be encoded and compressed
    again each time (the CPU this saves: README, "Performance"). A piece's deflate blocks are
    compressed on their own, so the member is the cached blocks of the unchanged pieces and
    the new blocks of the ages, between one header and one CRC-32 trailer.
    """

    def __init__(self) -> None:
        # id of a piece -> (the piece, its bytes, its deflate blocks); the piece is held, so
        # its id is not reused while the entry lives. Only the last text's pieces are kept.
        self._kept: dict[int, tuple[str, bytes, bytes]] = {}

    def encode(self, pieces: Sequence[str], tail: bytes = b"") -> tuple[bytes, bytes]:
        """(the text as UTF-8 followed by ``tail``, the same as gzip)."""
        kept, self._kept = self._kept, {}
        plain: list[bytes] = []
        deflated: list[bytes] = []
        pending: list[str] = []

        def flush_pending() -> None:
            if pending:
                data = "".join(pending).encode()
                plain.append(data)
                deflated.append(_deflate(data))
                pending.clear()

        for piece in pieces:
            if len(piece) < _SEGMENT_MIN_CHARS:
                pending.append(piece)
                continue
            flush_pending()
            entry = kept.get(id(piece))
            if entry is None or entry[0] is not piece:
                data = piece.encode()
                entry = (piece, data, _deflate(data))
            self._kept[id(piece)] = entry
            plain.append(entry[1])
            deflated.append(entry[2])
        flush_pending()
        plain.append(tail)
        deflated.append(_deflate(tail))
        text = b"".join(plain)
        trailer = struct.pack("<II", zlib.crc32(text), len(text) & 0xFFFFFFFF)
        return text, b"".join([_GZIP_HEADER, *deflated, _DEFLATE_END, trailer])


class _Families(Collector):
    """Some already built families, for ``generate_latest``."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


class Exposition:
    """The ``/metrics`` text, rendered at most once per second and per change of the statuses.

    Ages are computed with one-second resolution; between two changes of the snapshots every
    scrape within the same second is served the same bytes (and the same gzip), so many
    concurrent scrapers cost little more than one. No scrape waits for the text of a new
    second while the last second's is at hand: it is served that one (ages one second behind
    at most) and the new text is written in the background. While one scrape writes the text
    of new snapshots, the others are served the last text rather than wait. Only a scrape
    that finds nothing recent enough (the first, or one after a quiet spell) writes the text
    before answering.

    ``backups`` is written first, by a :class:`TextWriter`; then ``registry`` (the process's
    own series).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        generation: Callable[[], object],
        *,
        backups: BackupCollector,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._generation = generation
        self._clock = clock
        self._text = TextWriter(backups)
        self._encoder = _Encoder()
        self._lock = threading.Lock()  # held while a text is written
        self._rendered: _Rendered | None = None  # replaced as a whole

    def render(self, *, gzipped: bool = False) -> bytes:
        generation, second = self._generation(), int(self._clock())
        rendered = self._rendered
        if rendered is None:
            with self._lock:
                rendered = self._write_locked(generation, second)
        elif rendered.key != (generation, second):
            if rendered.key == (generation, second - 1):
                self._write_in_background()
            elif self._lock.acquire(blocking=False):  # else: serve the last while it is written
                try:
                    rendered = self._write_locked(generation, second)
                finally:
                    self._lock.release()
        return rendered.gzipped if gzipped else rendered.plain

    def refresh(self) -> None:
        """Write the text now, if it has ever been asked for (after a poll, in its thread).

        So the first scrape after a poll does not write the new snapshot's series itself: it
        finds the text written, or, while it is being written, gets the last one.
        """
        if self._rendered is not None:
            with self._lock:
                self._write_locked(self._generation(), int(self._clock()))

    def _write_locked(self, generation: object, second: int) -> _Rendered:
        rendered = self._rendered
        if rendered is None or rendered.key != (generation, second):
            pieces = self._text.parts()
            plain, gzipped = self._encoder.encode(pieces, generate_latest(self._registry))
            rendered = _Rendered((generation, second), plain, gzipped)
            self._rendered = rendered
        return rendered

    def _write_in_background(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # being written already

        def write() -> None:
            try:
                self._write_locked(self._generation(), int(self._clock()))
            except Exception:  # a bug; the next scrape that needs the text writes it itself
                log.exception("writing the /metrics text failed")
            finally:
                self._lock.release()

        try:
            threading.Thread(target=write, name="exposition", daemon=True).start()
        except BaseException:
            self._lock.release()
            raise

"""The ``/metrics`` text: the collector's families, written by :mod:`exporter.textformat`, cached.

:func:`exporter.textformat.write` is the only writer here (prometheus_client's
``generate_latest`` is its reference, byte for byte): each family is defined once, in
:mod:`exporter.collector`. The exposition owns everything it caches: the text of each
controller's snapshot (written once, by its poll, and held compressed: :class:`Deflated`)
and the whole text, plain and gzipped (written at most once per second and per change of the
statuses). Neither is ever joined: the gzip is the snapshots' very deflate blocks between the
few pieces compressed at each render, and the plain text (:class:`PlainText`) inflates them as
it is sent, a slice at a time. So a snapshot's series take their compressed size once, however
many texts and scrapes show them (with 20,000 VMs, a 38 MB text; docs/design.md, "Memory").
The poller knows nothing of it: the app subscribes
:meth:`Exposition.refresh` to the poller, so that each poll writes the text of its new
snapshot in its own thread, before a scrape asks for it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import struct
import sys
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple, cast

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from exporter import textformat
from exporter.collector import (
    AGE_FAMILIES,
    BackupCollector,
    ExporterState,
    age,
    age_series,
    controller_families,
    exporter_families,
    health_families,
    shown,
    snapshot_families,
)
from exporter.model import ControllerSnapshot

log = logging.getLogger(__name__)


def _write(families: Sequence[Metric]) -> str:
    """``families`` as prometheus_client writes them: the one writer of ``/metrics``."""
    return textformat.write(families)


def _series(family: Metric) -> str:
    """A gauge family's series as prometheus_client writes them, without its HELP and TYPE
    lines: one line each, as the writer escapes a newline in the help text."""
    return _write([family]).split("\n", 2)[2]


#: A text as chunks of UTF-8 (or of gzip), to be sent one after the other.
Body = tuple[bytes, ...]


class Deflated(NamedTuple):
    """A piece of the text held compressed: deflate blocks that any deflate stream may go on
    from (:func:`_deflate`), with what the gzip trailer needs of the UTF-8 they hold."""

    blocks: bytes
    size: int  # of the UTF-8
    crc: int  # its CRC-32
    zeros_crc: int  # the CRC-32 of as many zero bytes (:func:`_crc_of_both`)

    @classmethod
    def of(cls, data: bytes) -> Deflated:
        return cls(_deflate(data), len(data), zlib.crc32(data), _crc_of_zeros(len(data)))

    def inflated(self) -> Iterator[bytes]:
        """The UTF-8, a slice of at most :data:`_INFLATED_BYTES` at a time."""
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        data = self.blocks
        while data:
            yield inflater.decompress(data, _INFLATED_BYTES)
            data = inflater.unconsumed_tail
        yield inflater.flush()  # what the last input made beyond the limit, if anything


#: A piece of the text: UTF-8, or UTF-8 held compressed.
Piece = bytes | Deflated
#: Of a compressed piece, the most made at a time to be sent.
_INFLATED_BYTES = 256 * 1024
#: Zero bytes, for CRC-32s of runs of zeros (:func:`_crc_of_zeros`).
_ZEROS = bytes(_INFLATED_BYTES)


def _crc_of_zeros(length: int, crc: int = 0) -> int:
    """``zlib.crc32(bytes(length), crc)``, without making those bytes."""
    while length:
        step = min(length, len(_ZEROS))
        crc = zlib.crc32(memoryview(_ZEROS)[:step], crc)
        length -= step
    return crc


def _crc_of_both(crc: int, piece: Deflated) -> int:
    """The CRC-32 of some bytes whose CRC-32 is ``crc``, followed by ``piece``'s UTF-8.

    CRC-32 is linear over XOR, so with ``Z`` as many zero bytes as the piece holds:
    crc(A + B) = crc(A + Z) ^ crc(B) ^ crc(Z), whatever A's length (zlib's crc32_combine,
    which Python's zlib does not offer, computes the first term without the zeros).
    """
    return _crc_of_zeros(piece.size, crc) ^ piece.crc ^ piece.zeros_crc


def utf8(pieces: Iterable[Piece]) -> Iterator[bytes]:
    """The UTF-8 of ``pieces``, the compressed ones inflated a slice at a time."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
        else:
            yield from piece.inflated()


@dataclass(frozen=True)
class PlainText:
    """The text as it is sent plain: its pieces, the compressed ones inflated as they are sent
    (the HTTP server's ``Stream``), so that no scrape holds the whole text inflated."""

    pieces: tuple[Piece, ...]
    size: int

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        return utf8(self.pieces)


def _lines(family: Metric) -> list[str]:
    """A gauge family's series, one line each, without their newline (``str.splitlines``
    would also split at the other line breaks a label value may hold)."""
    return _series(family).split("\n")[:-1]


#: VMs whose families are made and written at once (:func:`snapshot_families`).
VMS_AT_ONCE = 1000

#: prometheus_client's own number format (untyped there).
_go_float = cast(Callable[[float], str], floatToGoString)


@dataclass(frozen=True)
class _WrittenSnapshot:
    """One controller's snapshot, its series written out by family name; of the ages, each
    line up to its value, with the creation time the value counts from."""

    #: Whose text this is; not held: the last snapshot's text is shown until the new one's is
    #: written, but the last snapshot itself (a third of a poll's memory: its judgements and
    #: inventory) is freed as soon as the poller has a new one.
    snapshot: weakref.ref[ControllerSnapshot]
    #: The state it was written under: whether its per-VM series are shown, say.
    state: ExporterState
    #: As UTF-8, compressed unless written for a text that is not kept (``--once``).
    series: Mapping[str, Piece]
    ages: Mapping[str, tuple[tuple[str, float | None], ...]]

    @classmethod
    def of(
        cls,
        controller: str,
        snapshot: ControllerSnapshot,
        state: ExporterState,
        *,
        compressed: bool = True,
    ) -> _WrittenSnapshot:
        # Family by family as they come, a batch of VMs at a time, each batch's series
        # compressed as they come: the samples and the text of one batch live at once, not
        # those of every VM (docs/design.md, "Memory").
        written: dict[str, list[bytes]] = {}  # per family: its batches' UTF-8, or deflated
        sums: dict[str, tuple[int, int]] = {}  # per family compressed: CRC-32 and size so far
        for family in snapshot_families(controller, snapshot, state, vms_at_once=VMS_AT_ONCE):
            data = _series(family).encode()
            if compressed:
                crc, size = sums.get(family.name, (0, 0))
                sums[family.name] = zlib.crc32(data, crc), size + len(data)
                data = _deflate(data)
            written.setdefault(family.name, []).append(data)
        ages = {
            series.family.name: tuple(
                # The line as prometheus_client writes it, but for its value (no timestamp).
                (line[: line.rindex(" ") + 1], created)
                for line, created in zip(_lines(series.family), series.created, strict=True)
            )
            for series in age_series(controller, snapshot, state)
        }
        series: dict[str, Piece] = {}
        for name in list(written):  # one family at a time, its batches freed as it is joined
            data = b"".join(written.pop(name))
            if compressed:
                crc, size = sums[name]
                series[name] = Deflated(data, size, crc, _crc_of_zeros(size))
            else:
                series[name] = data
        return cls(weakref.ref(snapshot), state, series, ages)

    def ages_at(self, name: str, now: float) -> bytes:
        """The lines of the age family ``name`` at ``now``: the only ones written each second."""
        return "".join(
            [f"{line}{_go_float(age(now, created))}\n" for line, created in self.ages.get(name, ())]
        ).encode()


class TextWriter:
    """Writes the text of the collector's families, each snapshot's series once.

    Writing a snapshot with thousands of VMs costs prometheus_client's writer far more than
    the ages that change every second (docs/design.md, "Performance"), so the series of each
    snapshot are written once, by :meth:`write_snapshots` after its poll, and only the ages and
    the few health series at each render. A render never writes a newer snapshot itself: until the
    poll's thread has written it, the controller's last written snapshot is shown, ages and
    all, so that no scrape waits for it. Several controllers share each family's HELP and
    TYPE lines: their series follow one another under them.
    """

    def __init__(self, collector: BackupCollector, *, compressed: bool = True) -> None:
        """``compressed``: hold each snapshot's series compressed (a text that is kept and
        served), or not (a text written once, by ``--once``)."""
        self._collector = collector
        self._compressed = compressed
        # controller -> the last snapshot of it written out; replaced, never changed in place
        self._written: dict[str, _WrittenSnapshot] = {}
        self._writing = threading.Lock()  # held while snapshots are written

    def write_snapshots(self) -> None:
        """Write the series of every fresh snapshot not written yet."""
        reading = self._collector.read()
        self._shown(reading.fresh, reading.state, newest=True)

    def text(self) -> str:
        return b"".join(utf8(self.parts())).decode()

    def parts(self) -> list[Piece]:
        """The text in pieces: each snapshot's series are the very objects written once, so
        that what is made of them can be kept too."""
        reading = self._collector.read()
        state = reading.state
        written = [w for _, w in self._shown(reading.fresh, state, newest=False)]
        out: list[Piece] = []
        for family in controller_families(state):
            name = family.name
            out.append(_write([family]).encode())  # no series: its HELP and TYPE lines
            if name in AGE_FAMILIES:
                out += [w.ages_at(name, reading.now) for w in written]
            else:
                out += [w.series.get(name, b"") for w in written]
        rest = shown([*health_families(reading.statuses), *exporter_families(state)], state)
        out.append(_write(rest).encode())
        return out

    def _shown(
        self, fresh: Sequence[tuple[str, ControllerSnapshot]], state: ExporterState, newest: bool
    ) -> list[tuple[str, _WrittenSnapshot]]:
        """The written snapshot to show of each fresh controller: written now if it has none
        under this state (its first, or after a reload), and, if ``newest``, if it is not
        the current snapshot."""

        def usable(controller: str, snapshot: ControllerSnapshot) -> _WrittenSnapshot | None:
            entry = self._written.get(controller)
            if entry is None or entry.state != state:
                return None
            return entry if entry.snapshot() is snapshot or not newest else None

        shown = [
            (controller, entry)
            for controller, snapshot in fresh
            if (entry := usable(controller, snapshot)) is not None
        ]
        if len(shown) == len(fresh):
            return shown
        with self._writing, _no_cycle_collection():
            written = [
                usable(controller, snapshot)
                or _WrittenSnapshot.of(controller, snapshot, state, compressed=self._compressed)
                for controller, snapshot in fresh
            ]
            self._written = {
                controller: entry for (controller, _), entry in zip(fresh, written, strict=True)
            }
        return [(controller, entry) for (controller, _), entry in zip(fresh, written, strict=True)]


@contextlib.contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cycle collector off, and the interpreter handed over every millisecond, while
    snapshots are written.

    A snapshot's families are a hundred thousand small containers (prometheus_client's
    samples and their labels), none in a cycle, all freed by their counts once written. Left
    on, the collector would run full collections of the whole heap meanwhile, stopping every
    thread, scrapes included, for tens of milliseconds each time. Building and writing them
    is a third of a second of pure Python at 5,000 VMs: at Python's 5 ms switch interval, a
    scrape waits that long for each of its turns (docs/design.md, "Performance"). Snapshots
    are written one at a time (under the writer's lock), so no other writer restores either
    setting early.
    """
    enabled = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(interval, _WRITING_SWITCH_INTERVAL_SECONDS))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        if enabled:
            gc.enable()


#: The switch interval while snapshots are written.
_WRITING_SWITCH_INTERVAL_SECONDS = 0.001


@dataclass(frozen=True)
class _Rendered:
    key: tuple[object, int]  # (generation, second)
    plain: PlainText
    gzipped: Body


#: A gzip member's header as ``gzip.compress(data, compresslevel=1, mtime=0)`` writes it.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"
#: The last, empty deflate block that ends a member.
_DEFLATE_END = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS).flush()


def _deflate(data: bytes) -> bytes:
    """``data`` as deflate blocks that any deflate stream may go on from: a fresh compressor
    refers back to nothing before it, and a sync flush ends on a byte boundary.

    Level 1, the fastest: the ages are compressed again every second, and a higher level
    costs several times the CPU for a body only slightly smaller.
    """
    compressor = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _encode(pieces: Sequence[Piece], tail: bytes = b"") -> tuple[PlainText, Body]:
    """The text followed by ``tail``, as it is sent plain and as one gzip member.

    A snapshot's series are held compressed, as blocks that a deflate stream may go on from:
    the member is the blocks of each, between one header and one CRC-32 trailer; only the few
    other pieces, mostly the ages that change every second, are compressed at each render
    (the CPU this saves: docs/design.md, "Performance"). Nothing is joined or inflated here: a
    plain answer inflates each piece as it is sent.
    """
    plain: list[Piece] = []
    deflated: list[bytes] = []
    pending: list[bytes] = []
    crc = size = 0

    def flush_pending() -> None:
        nonlocal crc, size
        if pending:
            data = b"".join(pending)
            plain.append(data)
            deflated.append(_deflate(data))
            crc, size = zlib.crc32(data, crc), size + len(data)
            pending.clear()

    for piece in [*pieces, tail]:
        if isinstance(piece, bytes):
            pending.append(piece)
            continue
        flush_pending()
        plain.append(piece)
        deflated.append(piece.blocks)
        crc, size = _crc_of_both(crc, piece), size + piece.size
    flush_pending()
    trailer = struct.pack("<II", crc, size & 0xFFFFFFFF)
    return PlainText(tuple(plain), size), (_GZIP_HEADER, *deflated, _DEFLATE_END + trailer)


class Exposition:
    """The ``/metrics`` text, rendered at most once per second and per change of the statuses.

    Ages are computed with one-second resolution; between two changes of the snapshots every
    scrape within the same second is served the same bytes (and the same gzip), so many
    concurrent scrapers cost little more than one. No scrape waits for a text while one at
    most a second old is at hand: it is served that one (its ages a second behind at most, or
    its snapshots one poll behind) and the new text, of a new second or new snapshots, is
    written in the background. Only a scrape that finds nothing that recent (the first, or
    one after a quiet spell) writes the text before answering, unless it is being written.

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
        self._lock = threading.Lock()  # held while a text is written
        self._rendered: _Rendered | None = None  # replaced as a whole
        # One thread, kept (until close()): starting a thread each second would keep the
        # scrape that asks for the new text waiting until the new thread runs, a switch
        # interval or more while a poll keeps the interpreter busy.
        self._background = ThreadPoolExecutor(1, thread_name_prefix="exposition")

    def render(self, *, gzipped: bool = False) -> Body | PlainText:
        generation, second = self._generation(), int(self._clock())
        rendered = self._rendered
        if rendered is None:
            with self._lock:
                rendered = self._write_locked(generation, second)
        elif rendered.key[1] >= second - 1:
            if rendered.key != (generation, second):
                self._write_in_background()
        elif self._lock.acquire(blocking=False):  # else: serve the last while it is written
            try:
                rendered = self._write_locked(generation, second)
            finally:
                self._lock.release()
        return rendered.gzipped if gzipped else rendered.plain

    def refresh(self) -> None:
        """Write the text of the new snapshots now (after a poll, in its thread).

        So that a snapshot's series are written once, by its poll, before a scrape asks; the
        scrapes meanwhile get the last text. Even before the first scrape: a first scrape
        that had to write every snapshot would wait for it (0.3 s of CPU at 5,000 VMs).
        """
        # Outside the lock: the text of each new second is written meanwhile.
        self._text.write_snapshots()
        with self._lock:
            # Even if this second's text was written: it may show the last snapshot.
            self._write_locked(self._generation(), int(self._clock()), again=True)

    def _write_locked(self, generation: object, second: int, *, again: bool = False) -> _Rendered:
        rendered = self._rendered
        if again or rendered is None or rendered.key != (generation, second):
            pieces = self._text.parts()
            own = _write(list(self._registry.collect())).encode()
            plain, gzipped = _encode(pieces, own)
            rendered = _Rendered((generation, second), plain, gzipped)
            self._rendered = rendered
        return rendered

    def close(self) -> None:
        """End the background thread once it has written what it was asked for; the texts
        already written are served from then on."""
        self._background.shutdown(wait=False)

    def _write_in_background(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # being written already
        try:
            self._background.submit(self._write_released)
        except RuntimeError:  # closed, or the interpreter is shutting down: the last will do
            self._lock.release()
        except BaseException:
            self._lock.release()
            raise

    def _write_released(self) -> None:
        """Write the text of now in the background thread, then release the lock the scrape
        that asked for it took."""
        try:
            self._write_locked(self._generation(), int(self._clock()))
        except Exception:  # a bug; the next scrape that needs the text writes it itself
            log.exception("writing the /metrics text failed")
        finally:
            self._lock.release()

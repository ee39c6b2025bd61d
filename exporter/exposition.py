"""The ``/metrics`` text: written from the collector's families, and cached.

The exposition owns everything it caches: the lines of each controller's snapshot (written
once, when the snapshot first shows) and the whole text with its gzip (written at most once
per second and per change of the statuses). The poller knows nothing of it: the app subscribes
:meth:`Exposition.refresh` to the poller, so that each poll writes the text of its new
snapshot before a scrape asks for it.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.collector import (
    AGE_FAMILIES,
    FEDERATION_FAMILIES,
    BackupCollector,
    cluster_families,
    exporter_families,
    federation_figures,
    health_families,
    inventory_families,
    shown,
    state_names,
    unowned_families,
    vm_families,
)
from exporter.model import ControllerSnapshot

log = logging.getLogger(__name__)

#: prometheus_client's own number format (untyped there).
_go_float = cast(Callable[[float], str], floatToGoString)


# -- the text, written directly -----------------------------------------------------------------
# The same text as prometheus_client's generate_latest: HELP with \ and newline escaped, label
# values with \, newline and " escaped (the label names here are already in sorted order),
# values as floatToGoString writes them.


def _header(family: Metric) -> str:
    documentation = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {family.name} {documentation}\n# TYPE {family.name} {family.type}\n"


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _age_text(now: float, created: float | None) -> str:
    """The age the collector yields, as ``floatToGoString`` writes it, in a fraction of its time."""
    if created is None:
        return "+Inf"
    seconds = max(0, math.floor(now - created))
    # A whole number of seconds below 10**6 is written "n.0"; Go switches to exponents above.
    return f"{seconds}.0" if seconds < 1_000_000 else _go_float(float(seconds))


def _ages(ages: Sequence[tuple[str, float | None]], now: float) -> str:
    return "".join([f"{prefix}{_age_text(now, created)}\n" for prefix, created in ages])


@dataclass(frozen=True)
class _WrittenSnapshot:
    """One controller's snapshot as exposition lines, by family name; the ages (which change
    every second) as (line up to the value, creation time), by family name."""

    per_vm: bool
    exclude: frozenset[str]  # metrics.exclude: families not written at all
    lines: Mapping[str, str]
    ages: Mapping[str, tuple[tuple[str, float | None], ...]]

    @classmethod
    def of(
        cls,
        controller: str,
        snapshot: ControllerSnapshot,
        per_vm: bool,
        exclude: frozenset[str] = frozenset(),
    ) -> _WrittenSnapshot:
        c = _label(controller)
        lines: dict[str, list[str]] = defaultdict(list)
        ages: dict[str, list[tuple[str, float | None]]] = defaultdict(list)
        for cluster in snapshot.backups.clusters:
            labels = f'controller="{c}",omnistack_cluster="{_label(cluster.name)}"'
            for state in state_names(cluster):
                with_state = f'{{{labels},state="{_label(state)}"}} '
                lines[_BACKUPS].append(
                    f"{_BACKUPS}{with_state}{_go_float(cluster.counts[state])}\n"
                )
                lines[_SIZES].append(f"{_SIZES}{with_state}{_go_float(cluster.sizes[state])}\n")
            newest = _go_float(cluster.newest_protected or 0.0)
            lines[_NEWEST].append(f"{_NEWEST}{{{labels}}} {newest}\n")
            ages[_NEWEST_AGE].append((f"{_NEWEST_AGE}{{{labels}}} ", cluster.newest_protected))
        for cluster_name, figures in snapshot.unowned():
            labels = f'{{controller="{c}",omnistack_cluster="{_label(cluster_name)}"}} '
            for name, value in zip(_UNOWNED, figures, strict=True):
                lines[name].append(f"{name}{labels}{_go_float(value)}\n")
        if per_vm:
            _write_vms(c, snapshot, lines, ages, exclude)
        _write_inventory(c, snapshot, lines)
        return cls(
            per_vm,
            exclude,
            {name: "".join(parts) for name, parts in lines.items() if name not in exclude},
            {name: tuple(parts) for name, parts in ages.items()},
        )


# Family names, for the writer's tables.
_BACKUPS = "simplivity_backups"
_SIZES = "simplivity_backup_size_bytes"
_NEWEST = "simplivity_backup_newest_timestamp_seconds"
_NEWEST_AGE = "simplivity_backup_newest_age_seconds"
_VM_NEWEST = "simplivity_vm_backup_newest_timestamp_seconds"
_VM_AGE = "simplivity_vm_backup_newest_age_seconds"
_VM_INFO = "simplivity_vm_info"
_VM_CREATED = "simplivity_vm_created_timestamp_seconds"
_VM_SCHEDULED = "simplivity_vm_policy_scheduled"
_VM_INTERVAL = "simplivity_vm_backup_expected_interval_seconds"
_VM_DESTINATION = "simplivity_vm_destination_backup_newest_timestamp_seconds"
_VM_FAILED = "simplivity_vm_backup_newest_failed_timestamp_seconds"
_VM_STATUS = "simplivity_vm_protection_status"
_VM_APP = "simplivity_vm_destination_app_consistent_backup_newest_timestamp_seconds"
_VM_RESTORE_POINTS = "simplivity_vm_destination_restore_points"
_VM_OLDEST = "simplivity_vm_destination_oldest_restore_point_timestamp_seconds"
_VM_WINDOW = "simplivity_vm_destination_recovery_window_seconds"
#: In the order of ControllerSnapshot.unowned.
_UNOWNED = (
    "simplivity_backups_orphaned",
    "simplivity_backups_orphaned_size_bytes",
    "simplivity_backups_never_expiring",
    "simplivity_backups_never_expiring_size_bytes",
)
_VMS = "simplivity_vms"
_POLICY_RULES = "simplivity_policy_rules"
_POLICY_VMS = "simplivity_policy_vms"
_HOST_ENABLED = "simplivity_host_policy_enabled"
_OVERDUE_FACTOR = "simplivity_protection_overdue_factor"
_GRACE = "simplivity_protection_grace_seconds"


def _write_vms(
    c: str,
    snapshot: ControllerSnapshot,
    lines: dict[str, list[str]],
    ages: dict[str, list[tuple[str, float | None]]],
    exclude: frozenset[str] = frozenset(),
) -> None:
    """The per-VM series; label names in sorted order, as ``generate_latest`` writes them.

    The per-destination families ``metrics.exclude`` names are not even written: with tens of
    thousands of VMs, they are what that setting is for."""
    newest, age, info, created = (
        lines[_VM_NEWEST],
        ages[_VM_AGE],
        lines[_VM_INFO],
        lines[_VM_CREATED],
    )
    scheduled, interval = lines[_VM_SCHEDULED], lines[_VM_INTERVAL]
    at_destination, failed = lines[_VM_DESTINATION], lines[_VM_FAILED]
    status, app, window = lines[_VM_STATUS], lines[_VM_APP], lines[_VM_WINDOW]
    restore_points, oldest = lines[_VM_RESTORE_POINTS], lines[_VM_OLDEST]
    # Thousands of VMs share a few destinations and many of their values (intervals, windows,
    # restore point counts): each is escaped or formatted once.
    destinations: dict[str, str] = {}
    numbers: dict[float, str] = {}
    write_app, write_window = _VM_APP not in exclude, _VM_WINDOW not in exclude
    write_points, write_oldest = _VM_RESTORE_POINTS not in exclude, _VM_OLDEST not in exclude
    write_restore_points = write_points or write_oldest

    def number(value: float) -> str:
        text = numbers.get(value)
        if text is None:
            text = numbers[value] = _go_float(value)
        return text

    for judged in snapshot.protection:
        vm = judged.vm
        ids = f'vm="{_label(vm.name)}",vm_id="{_label(vm.vm_id)}"'
        labels = f'{{controller="{c}",{ids}}} '
        anywhere = judged.newest_protected_anywhere
        newest.append(f"{_VM_NEWEST}{labels}{_go_float(anywhere or 0.0)}\n")
        age.append((f"{_VM_AGE}{labels}", anywhere))
        info.append(
            f'{_VM_INFO}{{app_aware_status="{_label(vm.app_aware_status)}",'
            f'controller="{c}",datastore="{_label(vm.datastore)}",'
            f'host="{_label(vm.host)}",omnistack_cluster="{_label(vm.cluster)}",'
            f'policy="{_label(vm.policy)}",{ids}}} 1.0\n'
        )
        if vm.created_at is not None:
            created.append(f"{_VM_CREATED}{labels}{_go_float(vm.created_at)}\n")
        scheduled.append(f"{_VM_SCHEDULED}{labels}{'1.0' if judged.scheduled else '0.0'}\n")
        where: dict[str, str] = {}  # the labels up to the value, per destination
        restored = judged.restore_destinations
        for destination in (*restored, *judged.recovery_windows, *judged.app_intervals):
            if destination in where:
                continue
            escaped = destinations.get(destination)
            if escaped is None:
                escaped = destinations[destination] = _label(destination)
            where[destination] = f'{{controller="{c}",destination="{escaped}",{ids}}} '
        for destination, seconds in judged.intervals.items():
            at = where[destination]
            interval.append(f"{_VM_INTERVAL}{at}{number(seconds)}\n")
            held = judged.newest_protected_at(destination) or 0.0
            at_destination.append(f"{_VM_DESTINATION}{at}{_go_float(held)}\n")
        failed.append(f"{_VM_FAILED}{labels}{_go_float(judged.newest_failed or 0.0)}\n")
        status.append(
            f'{_VM_STATUS}{{controller="{c}",status="{_label(judged.status)}",{ids}}} 1.0\n'
        )
        for destination in judged.app_intervals if write_app else ():
            newest_app = judged.newest_app_consistent_at(destination) or 0.0
            app.append(f"{_VM_APP}{where[destination]}{_go_float(newest_app)}\n")
        for destination in restored if write_restore_points else ():
            at = where[destination]
            points, first = judged.restore_points_at(destination)
            if write_points:
                restore_points.append(f"{_VM_RESTORE_POINTS}{at}{number(points)}\n")
            if write_oldest:
                oldest.append(f"{_VM_OLDEST}{at}{number(first or 0.0)}\n")
        for destination, seconds in judged.recovery_windows.items() if write_window else ():
            window.append(f"{_VM_WINDOW}{where[destination]}{number(seconds)}\n")


def _write_inventory(c: str, snapshot: ControllerSnapshot, lines: dict[str, list[str]]) -> None:
    vms = lines[_VMS]
    for cluster, statuses in snapshot.vms_by_status.items():
        prefix = f'{_VMS}{{controller="{c}",omnistack_cluster="{_label(cluster)}",protection="'
        vms += [f'{prefix}{_label(status)}"}} {_go_float(n)}\n' for status, n in statuses.items()]
    for policy in snapshot.inventory.policies:
        labels = f'{{controller="{c}",policy="{_label(policy.name)}"}} '
        lines[_POLICY_RULES].append(f"{_POLICY_RULES}{labels}{_go_float(policy.rules)}\n")
        users = snapshot.policy_vms.get(policy.name, 0)
        lines[_POLICY_VMS].append(f"{_POLICY_VMS}{labels}{_go_float(users)}\n")
    for host in snapshot.inventory.hosts:
        lines[_HOST_ENABLED].append(
            f'{_HOST_ENABLED}{{controller="{c}",host="{_label(host.name)}",'
            f'omnistack_cluster="{_label(host.cluster)}"}} '
            f"{'1.0' if host.policy_enabled else '0.0'}\n"
        )
    lines[_OVERDUE_FACTOR].append(
        f'{_OVERDUE_FACTOR}{{controller="{c}"}} {_go_float(snapshot.overdue_factor)}\n'
    )
    lines[_GRACE].append(f'{_GRACE}{{controller="{c}"}} {_go_float(snapshot.grace_seconds)}\n')
    for (name, _), value in zip(FEDERATION_FAMILIES, federation_figures(snapshot), strict=True):
        if value is not None:
            lines[name].append(f'{name}{{controller="{c}"}} {_go_float(value)}\n')


class TextWriter:
    """Writes exactly what ``generate_latest`` writes for a :class:`BackupCollector`, faster.

    Going through a ``Sample`` per series and prometheus_client's formatting costs a render
    with thousands of VMs far more than the ages that change (README, "Performance"). Here the
    series of each snapshot are written once, when it first shows, and only the ages are
    written at each render. ``tests/test_exposition_text.py`` holds it to ``generate_latest``'s
    bytes.
    """

    def __init__(self, collector: BackupCollector) -> None:
        self._collector = collector
        # controller -> (its snapshot, that snapshot's series written out)
        self._written: dict[str, tuple[ControllerSnapshot, _WrittenSnapshot]] = {}

    def text(self) -> str:
        return "".join(self.parts())

    def parts(self) -> list[str]:
        """The text in pieces: each snapshot's lines are the very string objects written when
        it first showed, so that what is made of them (their gzip) can be kept too."""
        reading = self._collector.read()
        state, now = reading.state, reading.now
        written = self._written_snapshots(reading.fresh, state.per_vm, state.exclude)
        families = [
            *shown(cluster_families(state), state),
            *shown(unowned_families(state), state),
            *(shown(vm_families(state), state) if state.per_vm else ()),
            *shown(inventory_families(state), state),
        ]
        out: list[str] = []
        for family in families:
            out.append(_header(family))
            name = family.name
            if name in AGE_FAMILIES:
                out += [_ages(w.ages.get(name, ()), now) for w in written]
            else:
                out += [w.lines.get(name, "") for w in written]
        # The health and exporter series are few: prometheus_client writes them.
        rest = shown([*health_families(reading.statuses), *exporter_families(state)], state)
        out.append(generate_latest(_Families(rest)).decode("utf-8"))
        return out

    def _written_snapshots(
        self,
        fresh: Sequence[tuple[str, ControllerSnapshot]],
        per_vm: bool,
        exclude: frozenset[str],
    ) -> list[_WrittenSnapshot]:
        cache = self._written
        written = []
        for controller, snapshot in fresh:
            entry = cache.get(controller)
            if (
                entry is None
                or entry[0] is not snapshot
                or (entry[1].per_vm, entry[1].exclude) != (per_vm, exclude)
            ):
                entry = (snapshot, _WrittenSnapshot.of(controller, snapshot, per_vm, exclude))
            written.append(entry)
        # Replaced, never changed in place: concurrent renders each see a whole cache.
        self._written = {
            controller: entry for (controller, _), entry in zip(fresh, written, strict=True)
        }
        return [entry[1] for entry in written]


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

    ``backups``, if given, is written first, by a :class:`TextWriter` (register it in
    ``registry`` only when not given here).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        generation: Callable[[], object],
        *,
        clock: Callable[[], float] = time.time,
        backups: BackupCollector | None = None,
    ) -> None:
        self._registry = registry
        self._generation = generation
        self._clock = clock
        self._text = TextWriter(backups) if backups is not None else None
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
            pieces = self._text.parts() if self._text is not None else []
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

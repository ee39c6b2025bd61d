"""The shared vocabulary: what a poll asks for, what it finds, how it fails, what it publishes.

Every layer imports this module and it imports no other part of the exporter: the REST client
raises its errors, the backup and inventory readers share how the API writes a value
(``"NA"``, timestamps), the aggregation builds its snapshot types, the poller publishes a
:class:`ControllerStatus` per controller, and the scrape path (collector, exposition, web)
reads those statuses without importing the client or the poller.
"""

from __future__ import annotations

import json
import re

# hashlib's blake2b is this one (CPython's own BLAKE2, for labels here and the store's ids), but
# importing hashlib loads OpenSSL's libcrypto too: 3.5 MB of the decoding worker, which has no
# other use for it.
from _blake2 import blake2b as blake2b
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, TypeGuard

#: Every value the ``reason`` label of ``simplivity_poll_errors_total`` can take, all exported
#: from the start: one per :class:`SimplivityError` subclass.
REASONS = ("auth", "timeout", "connection", "tls", "http", "decode")
#: Why a poll scanned every backup (``simplivity_poll_full_scans_total``): the poller's first
#: poll, its first after a reload changed the controller's settings, the full-scan interval
#: (or every poll, at 0), after a failed poll, after counts that did not add up, or after a
#: scan with records it could not read (the counts could never match).
FULL_SCAN_REASONS = ("start", "reload", "schedule", "failure", "mismatch", "unreadable")

#: The documented backup states, in the order the API reference lists them.
STATES = (
    "NEW",
    "SAVING",
    "FAILED",
    "PROTECTED",
    "UNKNOWN",
    "CANCELING",
    "CANCELED",
    "QUEUED",
    "REBUILDING",
    "DELETED",
    "DEGRADED",
)
#: Where a state outside :data:`STATES` is counted.
OTHER_STATE = "OTHER"
#: The ``consistency_type`` of an application-consistent backup; FAILEDVSS (the VSS part
#: failed and a crash-consistent backup was kept), NONE and NOT_APPLICABLE are not.
APP_CONSISTENT_TYPES = frozenset({"VSS", "DEFAULT"})


# -- how a poll fails ---------------------------------------------------------------------------


class SimplivityError(Exception):
    """A poll failed; ``reason`` says how, the message says what in plain words.

    Messages are written for operators and never hold a password or a token.
    """

    reason: ClassVar[str] = "http"


class AuthError(SimplivityError):
    reason = "auth"


class RequestTimeout(SimplivityError):
    reason = "timeout"


class ConnectError(SimplivityError):
    reason = "connection"


class TLSError(SimplivityError):
    reason = "tls"


class HTTPStatusError(SimplivityError):
    reason = "http"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DecodeError(SimplivityError):
    """An answer that cannot be read: bad JSON, a wrong envelope, a page that contradicts the
    listing, a record without what the metrics need; or the decoding worker lost the scan."""

    reason = "decode"


class OrderError(DecodeError):
    """A page not in the order asked for: the controller ignored ``sort``."""


class Cancelled(Exception):
    """The exporter is shutting down; the scan was abandoned (not a controller failure)."""


class RecordError(ValueError):
    """A record of a listing that the exporter cannot read (a missing field, a wrong type)."""


def decode_json(path: str, body: bytes) -> Any:
    """``body`` as JSON, or :class:`DecodeError` saying where it broke (never quoting it)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as err:
        # ValueError covers bad UTF-8 and bad JSON, and also an integer of thousands of digits;
        # RecursionError: arrays nested thousands deep.
        if looks_like_html(body):
            raise DecodeError(
                f"{path} answered with an HTML page, not JSON ({len(body)} bytes): "
                "a proxy in front of the controller?"
            ) from None
        where = f" at byte {err.pos}" if isinstance(err, json.JSONDecodeError) else ""
        raise DecodeError(f"{path} answered with invalid JSON{where} ({len(body)} bytes)") from None


def looks_like_html(body: bytes) -> bool:
    """An HTML page (a reverse proxy's error page), to be named as such and never quoted."""
    start = body[:512].lstrip().lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<title"))


# -- how the API writes a value ---------------------------------------------------------------

#: How the API writes a value it does not have.
MISSING = "NA"
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z")
_SURROGATES = re.compile("[\ud800-\udfff]")


def is_timestamp(value: object) -> TypeGuard[str]:
    """A time as the API writes it, in UTC: ``2018-05-08T10:00:01Z`` (fractions allowed)."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)  # the pattern lets 2024-02-30 or hour 24 through
    except ValueError:
        return False
    return True


def timestamp_seconds(value: str) -> float:
    """A text :func:`is_timestamp` accepts, as Unix seconds."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()


def text_field(record: Mapping[str, object], key: str) -> str:
    """A text value of a record as a label value (:func:`label_value`); "" when it is missing,
    the API's "NA", or not a text (a number, a list)."""
    value = record.get(key)
    if not isinstance(value, str) or value == MISSING:
        return ""
    return value if value.isascii() and len(value) <= MAX_LABEL_LENGTH else label_value(value)


def clean_text(value: str) -> str:
    """``value`` as /metrics can carry it: JSON's ``"\\ud800"`` decodes to a lone surrogate, which
    UTF-8 cannot encode."""
    return value if value.isascii() else _SURROGATES.sub("\ufffd", value)


#: The longest label value taken from a controller, in characters. Real names are far shorter
#: (vSphere caps VM, cluster and datastore names at 80, a host name is at most 253); a longer
#: one is cut, so that a controller cannot blow up /metrics (or Prometheus) with huge names.
MAX_LABEL_LENGTH = 256
#: What ends a value the exporter had to change: ``~`` and 8 hex digits of the original's hash.
_MARK_LENGTH = 9


def label_value(value: str) -> str:
    """A text from a controller as a label value: at most :data:`MAX_LABEL_LENGTH` characters
    and no lone surrogate (replaced by U+FFFD, :func:`clean_text`).

    A value that had to change ends in ``~`` and 8 hex digits of a hash of the original, so two
    different values never become the same label value (two VM ids that differ only in a lone
    surrogate stay two VMs).

    >>> label_value("web-01")
    'web-01'
    >>> label_value("bad\\ud800") == label_value("bad\\udc00"), label_value("bad\\ud800")[:4]
    (False, 'bad\ufffd')
    >>> len(label_value("x" * 10**6)), label_value("x" * 10**6)[-9:-8]
    (256, '~')
    """
    cleaned = clean_text(value)
    if cleaned == value and len(value) <= MAX_LABEL_LENGTH:
        return value
    digest = blake2b(value.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{cleaned[: MAX_LABEL_LENGTH - _MARK_LENGTH]}~{digest}"


def is_cut(value: object) -> bool:
    """Whether :func:`label_value` cuts this value (it is longer than :data:`MAX_LABEL_LENGTH`)."""
    return isinstance(value, str) and len(value) > MAX_LABEL_LENGTH


# -- what a poll asks for ----------------------------------------------------------------------


@dataclass(frozen=True)
class PageRequest:
    """One page of a paged collection: ``GET path?offset=&limit=&fields=&sort=&order=``, and
    a filter per pair of ``filters`` (``state=ALIVE``)."""

    path: str
    offset: int
    limit: int
    fields: tuple[str, ...] = ()
    sort: str | None = None
    order: str = "ascending"
    filters: tuple[tuple[str, str], ...] = ()


# -- what a poll finds --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSummary:
    """The backups of one OmniStack cluster (or external store)."""

    name: str
    counts: Mapping[str, int]
    sizes: Mapping[str, int]
    newest_protected: float | None  # Unix seconds of the newest PROTECTED backup
    #: Backups whose expiration_time is "NA" (manual backups never expire), any state.
    never_expiring: int = 0
    never_expiring_size: int = 0  # bytes
    #: Backups that name no VM at all, any state (orphaned whatever the inventory says).
    without_vm: int = 0
    without_vm_size: int = 0  # bytes


class HeldBackups(NamedTuple):
    """A VM's backups at one destination: how far back it can be restored there, whether they
    are application-consistent, and what they hold. (A named tuple, not a dataclass: one per VM
    and destination is made and pickled at every poll, and a tuple is cheaper at both.)"""

    backups: int  # any state
    size: int  # bytes, any state
    restore_points: int  # PROTECTED backups
    newest_protected: float | None  # Unix seconds
    oldest_protected: float | None  # Unix seconds
    newest_app_consistent: float | None  # the newest PROTECTED backup of consistency VSS/DEFAULT
    #: Whether any backup there says its consistency_type (REST API 1.3 and later, not "NA").
    consistency_known: bool


@dataclass(frozen=True, slots=True)
class VMBackups:
    """The backups of one VM (whatever the VM's state), by destination.

    A backup's destination is where it is held: its cluster, or its external store when it
    names no cluster (the ``omnistack_cluster`` label of the backup series).
    """

    vm_id: str
    newest_failed: float | None  # Unix seconds of its newest FAILED backup
    #: Its newest backup in any state: the state (``OTHER`` if undocumented), its creation
    #: (Unix seconds) and where it is held; "", None and "" when no backup of it has a time.
    newest_state: str
    newest_created: float | None
    newest_destination: str
    held: Mapping[str, HeldBackups] = field(default_factory=dict)  # by destination

    def __reduce__(self) -> tuple[type[VMBackups], tuple[object, ...]]:
        # Slots (no dict per VM: 2 MB less per 20,000 VMs, in the exporter and its worker)
        # pickle as slowly as dataclasses' __getstate__ goes; as a call, no slower than a dict.
        return (
            VMBackups,
            (
                self.vm_id,
                self.newest_failed,
                self.newest_state,
                self.newest_created,
                self.newest_destination,
                self.held,
            ),
        )

    @property
    def newest_protected(self) -> dict[str, float]:
        """destination -> Unix seconds of its newest PROTECTED backup there, where it has one."""
        return {
            where: at.newest_protected
            for where, at in self.held.items()
            if at.newest_protected is not None
        }

    @property
    def newest_protected_anywhere(self) -> float | None:
        times = (at.newest_protected for at in self.held.values())
        return max((t for t in times if t is not None), default=None)


@dataclass(frozen=True)
class BackupSnapshot:
    """One complete scan of a controller's backups."""

    clusters: tuple[ClusterSummary, ...]
    vms: tuple[VMBackups, ...]  # every VM with a backup, live or not, by id
    backups_seen: int
    #: The cluster names that were too long and were cut (:func:`label_value`).
    cut_labels: frozenset[str] = frozenset()


@dataclass(frozen=True)
class VirtualMachine:
    """A live VM of the inventory (``GET /api/virtual_machines?state=ALIVE``).

    A value the API gave as ``"NA"`` (or not at all) is an empty text, or ``None``.
    """

    vm_id: str
    name: str  # not unique; the id is
    cluster: str  # omnistack_cluster_name
    policy_id: str
    policy: str  # policy_name
    datastore: str  # datastore_name
    host_id: str
    host: str  # the host's name in the host listing; its id when it is not listed
    created_at: float | None  # Unix seconds
    #: app_aware_vm_status: whether it can take application-consistent (VSS) backups
    #: (CAPABLE, INVALID_CREDS, VMWARE_TOOLS_UNAVAILABLE, ...); "" when the API does not say.
    app_aware_status: str = ""


@dataclass(frozen=True)
class Policy:
    """A backup policy (``GET /api/policies``)."""

    policy_id: str
    name: str
    rules: int  # every rule, usable or not
    #: Expected interval in seconds per destination of its usable rules, ``<Local>`` standing
    #: for the VM's own cluster. A VM's own intervals (:attr:`VMProtection.intervals`) resolve
    #: ``<Local>`` first: on a VM of cluster X, rules to ``<Local>`` and to X are one schedule.
    intervals: Mapping[str, int]
    problems: tuple[str, ...] = ()  # why each rule that cannot be scheduled is ignored


@dataclass(frozen=True)
class Host:
    """A host (``GET /api/hosts``): policy backups can be suspended on it."""

    host_id: str
    name: str
    cluster: str  # its OmniStack cluster's name, from its omnistack_cluster_id or its VMs
    policy_enabled: bool  # True when the API does not say (REST API before 1.4, or "NA")


@dataclass(frozen=True)
class ScheduleReport:
    """The federation's backup limits (``GET /api/policies/policy_schedule_report``, REST API
    1.11 and later); a figure the controller gave as ``"NA"`` is ``None``."""

    daily_backups: float | None  # daily_backup_rate: what the policies and VMs create per day
    daily_backups_limit: float | None  # daily_backup_rate_limit
    retained_backups_projected: float | None  # projected_retained_backups
    retained_backups_limit: float | None  # retained_backups_limit


@dataclass(frozen=True)
class Inventory:
    """What should be protected, and how: one read of the controller's inventory."""

    vms: tuple[VirtualMachine, ...]  # the live VMs, by name then id
    policies: tuple[Policy, ...]  # by name then id; names are unique (a duplicate is dropped)
    hosts: tuple[Host, ...]  # by cluster then name; (cluster, name) pairs are unique
    #: None when the controller has no schedule report (before REST API 1.11) or refused it.
    schedule: ScheduleReport | None


@dataclass(frozen=True)
class VMProtection:
    """A live VM judged against its own policy, at the poll.

    ``status`` is one of ``ok``, ``not_scheduled``, ``new``, ``never_backed_up``, ``overdue``,
    ``last_failed``, ``app_inconsistent`` (see :mod:`exporter.protection`). ``destination`` is
    its policy's destination nearest to (or furthest past) its overdue threshold, ``None`` when
    ``not_scheduled``; ``newest_protected`` and ``expected_interval`` are the figures there.
    """

    vm: VirtualMachine
    backups: VMBackups | None  # None: not a single backup of it was listed
    intervals: Mapping[str, int]  # expected interval in seconds per destination of its policy
    status: str
    destination: str | None
    newest_protected: float | None  # Unix seconds, at ``destination``
    expected_interval: int | None  # seconds, at ``destination``
    #: Expected interval of the rules that ask for application-consistent backups, per
    #: destination (:func:`~exporter.schedule.app_consistent_intervals`).
    app_intervals: Mapping[str, int] = field(default_factory=dict)
    #: The recovery window its policy promises, in seconds per destination
    #: (:func:`~exporter.recovery.recovery_windows`).
    recovery_windows: Mapping[str, int] = field(default_factory=dict)

    @property
    def held(self) -> Mapping[str, HeldBackups]:
        """Its backups by destination: restore points, the oldest, consistency."""
        return {} if self.backups is None else self.backups.held

    @property
    def restore_destinations(self) -> tuple[str, ...]:
        """Every destination of its policy and every destination where it has PROTECTED backups,
        in order: those its restore points are exported for."""
        held = [where for where, at in self.held.items() if at.newest_protected is not None]
        return tuple(sorted({*self.intervals, *held}))

    @property
    def scheduled(self) -> bool:
        """Its policy has usable rules and policy backups are enabled on its host."""
        return self.status != "not_scheduled"

    @property
    def newest_protected_anywhere(self) -> float | None:
        return None if self.backups is None else self.backups.newest_protected_anywhere

    def newest_protected_at(self, destination: str) -> float | None:
        at = self.held.get(destination)
        return None if at is None else at.newest_protected

    @property
    def newest_failed(self) -> float | None:
        return None if self.backups is None else self.backups.newest_failed


@dataclass(frozen=True)
class ControllerSnapshot:
    """One consistent picture of a controller: its backups, its inventory, and each live VM's
    protection judged from them at the end of the poll (``judged_at``)."""

    backups: BackupSnapshot
    inventory: Inventory
    protection: tuple[VMProtection, ...]  # every live VM, in the inventory's order
    #: The at-risk VMs (never backed up, overdue, not scheduled, last failed, app-inconsistent),
    #: worst first.
    at_risk: tuple[VMProtection, ...]
    #: cluster -> status -> live VMs: every cluster of a live VM or a host, every status.
    vms_by_status: Mapping[str, Mapping[str, int]]
    policy_vms: Mapping[str, int]  # policy name -> live VMs using it
    judged_at: float  # Unix seconds
    #: The protection settings the VMs were judged with (exported for the alert rules).
    overdue_factor: float
    grace_seconds: float
    #: cluster -> (backups, bytes) whose VM is not a live VM of the inventory, any state; every
    #: cluster of :attr:`BackupSnapshot.clusters`.
    orphaned: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def backups_seen(self) -> int:
        return self.backups.backups_seen

    def unowned(self) -> Iterator[tuple[str, tuple[int, int, int, int]]]:
        """Per cluster (or store) of the backups: its orphaned backups and their bytes, its
        never-expiring backups and their bytes."""
        for cluster in self.backups.clusters:
            count, size = self.orphaned.get(cluster.name, (0, 0))
            yield cluster.name, (count, size, cluster.never_expiring, cluster.never_expiring_size)


# -- what a poll publishes ----------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerVersions:
    """``GET /api/version``: the REST API version, and the OmniStack (SVTFS) version a virtual
    controller adds (a management appliance does not)."""

    rest_api: str
    svtfs: str


@dataclass(frozen=True)
class ControllerStatus:
    """Everything known about one controller at one moment; replaced, never changed."""

    name: str
    url: str
    polls: int = 0
    up: bool = False
    last_poll_finished: float | None = None
    last_duration: float | None = None
    last_success: float | None = None
    last_error: str | None = None
    errors: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    logins: int = 0
    #: How long logins pause after the controller refused the credentials (0: they do not).
    login_backoff_seconds: float = 0.0
    snapshot: ControllerSnapshot | None = None
    #: How the poller asks the controller for pages now (it learns from 502s and 504s).
    concurrency: int = 0  # requests in flight at once, at most
    page_size: int = 0  # records per page asked for
    #: Records of the last successful poll that could not be placed (and were left out).
    unreadable_records: int = 0
    #: Label values of the last successful poll that were too long and were cut.
    labels_truncated: int = 0
    #: What ``GET /api/version`` answered at the last successful poll ("" if it did not say).
    versions: ControllerVersions = field(default_factory=lambda: ControllerVersions("", ""))
    #: How the last successful poll read the backups: ``full`` or ``incremental`` ("": none).
    poll_kind: str = ""
    #: Records the last successful poll read, by listing (its envelope key: ``backups``...).
    poll_objects: Mapping[str, int] = field(default_factory=dict)
    #: Full scans of the backups so far, by why (:data:`FULL_SCAN_REASONS`).
    full_scans: Mapping[str, int] = field(
        default_factory=lambda: dict.fromkeys(FULL_SCAN_REASONS, 0)
    )


# -- what /metrics shows ------------------------------------------------------------------------

#: The name of every ``simplivity_*`` family the exporter can write, as ``/metrics`` shows it
#: (a counter's with ``_total``): what ``metrics.exclude`` may name. :mod:`exporter.collector`
#: defines each family; its tests hold this list to exactly the families it writes.
FAMILY_NAMES = frozenset(
    {
        "simplivity_backup_newest_age_seconds",
        "simplivity_backup_newest_timestamp_seconds",
        "simplivity_backup_size_bytes",
        "simplivity_backups",
        "simplivity_backups_never_expiring",
        "simplivity_backups_never_expiring_size_bytes",
        "simplivity_backups_orphaned",
        "simplivity_backups_orphaned_size_bytes",
        "simplivity_controller_info",
        "simplivity_exporter_build_info",
        "simplivity_exporter_config_last_reload_success_timestamp_seconds",
        "simplivity_exporter_config_last_reload_successful",
        "simplivity_exporter_shard_index",
        "simplivity_exporter_shards",
        "simplivity_federation_daily_backups",
        "simplivity_federation_daily_backups_limit",
        "simplivity_federation_retained_backups_limit",
        "simplivity_federation_retained_backups_projected",
        "simplivity_host_policy_enabled",
        "simplivity_label_values_truncated",
        "simplivity_login_backoff_seconds",
        "simplivity_logins_total",
        "simplivity_policy_rules",
        "simplivity_policy_vms",
        "simplivity_poll_concurrency",
        "simplivity_poll_duration_seconds",
        "simplivity_poll_errors_total",
        "simplivity_poll_full_scans_total",
        "simplivity_poll_kind",
        "simplivity_poll_last_success_timestamp_seconds",
        "simplivity_poll_objects",
        "simplivity_poll_page_size",
        "simplivity_protection_grace_seconds",
        "simplivity_protection_overdue_factor",
        "simplivity_unreadable_records",
        "simplivity_up",
        "simplivity_vm_backup_expected_interval_seconds",
        "simplivity_vm_backup_newest_age_seconds",
        "simplivity_vm_backup_newest_failed_timestamp_seconds",
        "simplivity_vm_backup_newest_timestamp_seconds",
        "simplivity_vm_created_timestamp_seconds",
        "simplivity_vm_destination_app_consistent_backup_newest_timestamp_seconds",
        "simplivity_vm_destination_backup_newest_timestamp_seconds",
        "simplivity_vm_destination_oldest_restore_point_timestamp_seconds",
        "simplivity_vm_destination_recovery_window_seconds",
        "simplivity_vm_destination_restore_points",
        "simplivity_vm_info",
        "simplivity_vm_policy_scheduled",
        "simplivity_vm_protection_status",
        "simplivity_vms",
    }
)

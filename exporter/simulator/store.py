"""The served records (backups, VMs, policies, hosts): storage, sorting, filtering, churn and
JSON rendering of pages."""

from __future__ import annotations

import bisect
import json
import operator
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs

from exporter.simulator.values import DAY, Times, seeded_uuid4
from exporter.simulator.vocabulary import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    OWN_FIELDS,
    SHARED_FIELDS,
)

Row = tuple[Any, ...]
"""One stored record: its own values, then one tuple of values shared with others (a generated
backup shares its VM's and its destination's values; other records share nothing)."""

MISSING: Final = object()

_CREATED_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")

# Value kinds of the per-backup fields of a generated federation (churn keeps them), so that
# pages can be written without building a dict per backup.
# "safe": a string that never needs JSON escaping (ids, states, times).
_OWN_KINDS: Final = {
    "id": "safe",
    "name": "str",
    "state": "safe",
    "type": "safe",
    "created_at": "safe",
    "expiration_time": "safe",
    "size": "int",
    "unique_size_bytes": "int",
    "unique_size_timestamp": "safe",
    "sent": "int",
    "sent_duration": "int",
    "sent_completion_time": "safe",
    "application_consistent": "bool",
    "consistency_type": "safe",
}
_SORTABLE_SHARED: Final = frozenset(SHARED_FIELDS) - {"cluster_group_ids"}
_JSON_BOOL: Final = {False: "false", True: "true"}
_encode_str: Callable[[str], str] = json.encoder.encode_basestring


def to_json(value: object) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if text.isascii() or not _LONE_SURROGATE.search(text):
        return text
    # A lone surrogate (a hostile test's name) is no UTF-8: JSON's escape, as in "\ud800".
    return json.dumps(value, separators=(",", ":"))


_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Layout:
    """Where each field of a stored row lives: in the row, or in its shared tuple ``row[-1]``."""

    own: tuple[str, ...]
    shared: tuple[str, ...]
    sparse: bool  # some rows lack some fields (stored as MISSING, left out of answers)
    typed: bool = False  # own fields hold values of the kinds _OWN_KINDS says

    @property
    def fields(self) -> tuple[str, ...]:
        return self.own + self.shared

    def getter(self, name: str) -> Callable[[Row], Any] | None:
        if name in self.own:
            i = self.own.index(name)
            return lambda row: row[i]
        if name in self.shared:
            j = self.shared.index(name)
            return lambda row: row[-1][j]
        return None

    def as_dict(self, row: Row) -> dict[str, object]:
        result = dict(zip(self.own, row, strict=False))
        result.update(zip(self.shared, row[-1], strict=True))
        if self.sparse:
            return {k: v for k, v in result.items() if v is not MISSING}
        return result

    def renderer(
        self, wanted: Sequence[str] | None
    ) -> Callable[[Sequence[Row]], list[dict[str, Any]]]:
        """A function turning rows into answer dicts holding only the ``wanted`` fields."""
        names = self.fields if wanted is None else wanted
        own = [(n, self.own.index(n)) for n in names if n in self.own]
        shared = [(n, self.shared.index(n)) for n in names if n in self.shared]
        own_names = tuple(n for n, _ in own)
        own_index = tuple(i for _, i in own)
        sparse = self.sparse

        def render(rows: Sequence[Row]) -> list[dict[str, Any]]:
            parts: dict[int, dict[str, Any]] = {}
            out: list[dict[str, Any]] = []
            append = out.append
            for row in rows:
                item = {name: row[i] for name, i in zip(own_names, own_index, strict=True)}
                if shared:
                    group = row[-1]
                    part = parts.get(id(group))
                    if part is None:
                        part = {n: group[j] for n, j in shared}
                        parts[id(group)] = part
                    item.update(part)
                if sparse:
                    item = {k: v for k, v in item.items() if v is not MISSING}
                append(item)
            return out

        return render

    def json_renderer(
        self, wanted: Sequence[str] | None, fragments: dict[int, tuple[Row, str]]
    ) -> Callable[[Sequence[Row]], str]:
        """A function writing rows as the JSON text of a list of backups with ``wanted`` fields.

        ``fragments`` caches the JSON text of the shared part of each group (by the group's id;
        the group is kept in the value so that its id stays unique); it must belong to one
        selection of fields.
        """
        if not self.typed:
            as_dicts = self.renderer(wanted)
            return lambda rows: to_json(as_dicts(rows))
        names = self.fields if wanted is None else wanted
        # Plain fields go straight into the template (their values never need escaping); the
        # others are encoded per row; the shared part comes from the per-group cache. The
        # template's positional fields keep the requested order of the fields.
        plain = [n for n in names if _OWN_KINDS.get(n) in ("safe", "int")]
        other = [n for n in names if _OWN_KINDS.get(n) in ("str", "bool")]
        shared = [(n, self.shared.index(n)) for n in names if n in self.shared]
        position = {n: i for i, n in enumerate(plain + other)}
        pieces = []
        for n in names:  # field names hold no braces: they are all in _OWN_KINDS
            if n in position:
                slot = f"{{{position[n]}}}"
                pieces.append(
                    f'{to_json(n)}:"{slot}"' if _OWN_KINDS[n] == "safe" else f"{to_json(n)}:{slot}"
                )
        if shared:
            pieces.append(f"{{{len(position)}}}")
        template = "{{" + ",".join(pieces) + "}}"
        get_plain = _tuple_getter([self.own.index(n) for n in plain])
        encoders: list[tuple[int, Callable[[Any], str]]] = [
            (self.own.index(n), _encode_str if _OWN_KINDS[n] == "str" else _JSON_BOOL.__getitem__)
            for n in other
        ]
        fill = template.format

        def fragment(group: Row) -> str:
            text = ",".join(f"{to_json(n)}:{to_json(group[j])}" for n, j in shared)
            fragments[id(group)] = (group, text)
            return text

        def render(rows: Sequence[Row]) -> str:
            out: list[str] = []
            append = out.append
            cached = fragments.get
            if encoders:
                for row in rows:
                    values = get_plain(row) + tuple([encode(row[i]) for i, encode in encoders])
                    if shared:
                        group = row[-1]
                        entry = cached(id(group))
                        values += (fragment(group) if entry is None else entry[1],)
                    append(fill(*values))
            elif shared:  # the usual case: ids, times, sizes and the VM's fields
                for row in rows:
                    group = row[-1]
                    entry = cached(id(group))
                    append(fill(*get_plain(row), fragment(group) if entry is None else entry[1]))
            else:
                for row in rows:
                    append(fill(*get_plain(row)))
            return "[" + ",".join(out) + "]"

        return render


def _tuple_getter(indexes: Sequence[int]) -> Callable[[Row], tuple[Any, ...]]:
    if not indexes:
        return lambda row: ()
    if len(indexes) == 1:
        i = indexes[0]
        return lambda row: (row[i],)
    return operator.itemgetter(*indexes)


GENERATED: Final = Layout(OWN_FIELDS, SHARED_FIELDS, sparse=False, typed=True)


def layout_from_dicts(backups: Sequence[Mapping[str, object]]) -> tuple[Layout, list[Row]]:
    names: dict[str, None] = {}
    for backup in backups:
        for key in backup:
            names.setdefault(key, None)
    own = tuple(names)
    sparse = any(len(backup) != len(own) for backup in backups)
    rows = [(*(backup.get(n, MISSING) for n in own), ()) for backup in backups]
    return Layout(own, (), sparse), rows


def _sort_key(layout: Layout, sort: str) -> Callable[[Row], tuple[Any, ...]]:
    """A total order: the field's value (numbers before strings, missing first), then id."""
    if layout.typed and sort in _OWN_KINDS:
        i = layout.own.index(sort)
        return lambda row: (row[i], row[0])
    if layout.typed and sort in _SORTABLE_SHARED:
        j = layout.shared.index(sort)
        return lambda row: (row[-1][j], row[0])
    get = layout.getter(sort) or (lambda row: None)
    get_id = layout.getter("id") or (lambda row: "")

    def key(row: Row) -> tuple[Any, ...]:
        v = get(row)
        t = type(v)
        if t is str:
            return (3, v, get_id(row))
        if t is int or t is float:
            return (2, v, get_id(row))
        if t is bool:
            return (1, v, get_id(row))
        if v is None or v is MISSING:
            return (0, 0, get_id(row))
        return (4, json.dumps(v, sort_keys=True, default=str), get_id(row))

    return key


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


@dataclass(frozen=True)
class QueryRules:
    """How one collection reads its query, beyond the rules all share.

    ``defaults``: filters applied when the query does not name them (``state=ALIVE`` for VMs);
    ``lists``: filters whose comma-separated values are alternatives on every controller (other
    filters follow the controller's mode); ``dated``: ``created_after``/``created_before`` and
    ``expires_after``/``expires_before`` (HPE documents both pairs for backups).
    """

    defaults: tuple[tuple[str, str], ...] = ()
    lists: frozenset[str] = frozenset()
    dated: bool = False


@dataclass(frozen=True)
class Query:
    offset: int
    limit: int
    fields: tuple[str, ...] | None
    sort: str
    descending: bool
    filters: tuple[tuple[str, str], ...]
    created_after: str | None
    created_before: str | None
    #: filters whose comma-separated values are alternatives whatever the mode
    lists: frozenset[str] = frozenset()
    expires_after: str | None = None
    expires_before: str | None = None

    @property
    def ranged(self) -> bool:
        """Whether a time bound (created_* or expires_*) narrows the listing."""
        return not (
            self.created_after is None
            and self.created_before is None
            and self.expires_after is None
            and self.expires_before is None
        )


class BadRequest(Exception):
    """A listing's query the controller refuses with 400 (the body's ``exception``)."""

    def __init__(
        self,
        message: str,
        exception: str = "com.simplivity.restapi.exceptions.InvalidParameterException",
    ) -> None:
        super().__init__(message)
        self.exception = exception


#: HPE documents this exception for an unknown sort field.
INVALID_SORT: Final = "com.simplivity.restapi.exceptions.InvalidSortCriteriaException"


def parse_query(query: str, rules: QueryRules, known: Collection[str]) -> Query:
    """The query of a listing, checked as the controller does (BadRequest says what is wrong).

    ``known``: the names it may sort and filter by.
    """
    params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    offset = _int_param(params, "offset", 0)
    limit = _int_param(params, "limit", DEFAULT_LIMIT)
    if offset < 0:
        raise BadRequest(f"Invalid offset {offset}: it must not be negative")
    if not 0 <= limit <= MAX_LIMIT:
        raise BadRequest(f"Invalid limit {limit}: it must be between 0 and {MAX_LIMIT}")
    fields: tuple[str, ...] | None = None
    if params.get("fields"):
        wanted = dict.fromkeys(f.strip() for f in params["fields"].split(","))
        fields = tuple(f for f in wanted if f)
    sort = params.get("sort") or "name"
    if sort not in known:
        raise BadRequest(f"Invalid sort field '{sort}'", INVALID_SORT)
    order = (params.get("order") or "descending").lower()
    if order not in ("ascending", "descending"):
        raise BadRequest(f"Invalid order '{order}': ascending or descending")
    dates: dict[str, str | None] = {}
    for name in _TIME_BOUNDS:
        value = params.get(name) if rules.dated else None
        if value is not None and not _valid_time(value):
            raise BadRequest(f"Invalid {name} '{value}': expected YYYY-MM-DDTHH:MM:SSZ")
        dates[name] = value
    for name, value in rules.defaults:
        params.setdefault(name, value)
    filters = tuple(
        (name, value)
        for name, value in sorted(params.items())
        if name in known and name not in ("limit", "offset")
    )
    return Query(
        offset,
        limit,
        fields,
        sort,
        order == "descending",
        filters,
        dates["created_after"],
        dates["created_before"],
        rules.lists,
        dates["expires_after"],
        dates["expires_before"],
    )


#: The time bounds of a dated listing (inclusive, whole seconds in UTC): ``created_*`` on
#: ``created_at``, ``expires_*`` on ``expiration_time``.
_TIME_BOUNDS: Final = ("created_after", "created_before", "expires_after", "expires_before")


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"Invalid {name} '{value}': not a number") from None


def _valid_time(value: str) -> bool:
    if not _CREATED_RE.fullmatch(value):
        return False
    try:
        time.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return False
    return True


class Store:
    """The current records of a collection, with sorted orders and filtered views kept up to
    date as records come, go and change (:meth:`apply`).

    :attr:`rows` is the records of a generated federation ascending by ``id`` (the order every
    change keeps, so that a record is found by bisection, and random picks do not depend on the
    history of changes); other records in the order given, new ones last.
    """

    _MAX_ORDERS = 6
    _MAX_VIEWS = 48
    _BASE = "id"

    def __init__(self, layout: Layout, rows: list[Row]) -> None:
        self.layout = layout
        # sort field -> (key, rows ascending by key); updated on every change
        self._orders: OrderedDict[str, tuple[Callable[[Row], Any], list[Row]]] = OrderedDict()
        # filtered views -> (test, key, rows ascending by key); updated on every change
        self._views: OrderedDict[tuple[object, ...], _View] = OrderedDict()
        # fields selection -> JSON text of each group's shared part
        self.fragments: dict[tuple[str, ...] | None, dict[int, tuple[Row, str]]] = {}
        index = {n: i for i, n in enumerate(layout.own)}
        self._churn_fields = {n: index[n] for n in _CHURNED if n in index}
        self._rows = rows
        if layout.typed:
            key = _sort_key(layout, self._BASE)
            self._orders[self._BASE] = (key, sorted(rows, key=key))
            self._rows = []  # the base order holds them

    @property
    def rows(self) -> list[Row]:
        """Every record (do not modify: :meth:`apply` changes records)."""
        if self.layout.typed:
            return self._orders[self._BASE][1]
        return self._rows

    def ascending(self, sort: str) -> list[Row]:
        entry = self._orders.get(sort)
        if entry is None:
            key = _sort_key(self.layout, sort)
            entry = (key, sorted(self.rows, key=key))
            self._orders[sort] = entry
            while len(self._orders) > self._MAX_ORDERS:
                keep = self._BASE if self.layout.typed else None
                oldest = next(s for s in self._orders if s != keep)
                del self._orders[oldest]
        else:
            self._orders.move_to_end(sort)
        return entry[1]

    def find(self, record_id: str) -> Row | None:
        """The record with this id (of a generated federation: ids are unique), or None."""
        if not self.layout.typed:
            raise TypeError("find() needs the typed layout of a generated federation")
        key, ordered = self._orders[self._BASE]
        i = bisect.bisect_left(ordered, (record_id, ""), key=key)
        if i < len(ordered) and ordered[i][0] == record_id:
            return ordered[i]
        return None

    def apply(self, removed: Sequence[Row], added: Sequence[Row]) -> None:
        """Take ``removed`` (stored rows, each once) out and put ``added`` in; a changed record
        is its old row removed and its new row added. Every sorted order and filtered view
        follows at the cost of the change, not of a new sort or filter of every record: a
        changed record that keeps its place (its sort key) is swapped in place; the others are
        found by bisection, and a list is copied once when many of them change."""
        if not removed and not added:
            return
        if not self.layout.typed:
            dropped = {id(row) for row in removed}
            self._rows = [row for row in self._rows if id(row) not in dropped] + list(added)
        pairs: list[tuple[Row, Row]] = []
        if self.layout.typed and removed and added:
            new_by_id = {row[0]: row for row in added}
            pairs = [(old, new_by_id[old[0]]) for old in removed if old[0] in new_by_id]
            if pairs:
                paired = {id(row) for pair in pairs for row in pair}
                removed = [row for row in removed if id(row) not in paired]
                added = [row for row in added if id(row) not in paired]
        for sort, (key, ordered) in list(self._orders.items()):
            self._orders[sort] = (key, _changed(ordered, key, removed, added, pairs))
        for view_key, (test, key, view) in list(self._views.items()):
            gone = [row for row in removed if test(row)]
            new = [row for row in added if test(row)]
            kept = []
            for old, row in pairs:
                was, now = test(old), test(row)
                if was and now:
                    kept.append((old, row))
                elif was:
                    gone.append(old)
                elif now:
                    new.append(row)
            if gone or new or kept:
                self._views[view_key] = (test, key, _changed(view, key, gone, new, kept))

    def matching(self, query: Query, mode: str) -> list[Row]:
        """The rows matching the query's filters, ascending by its sort field."""
        ordered = self.ascending(query.sort)
        if not query.filters and not query.ranged:
            return ordered
        view_key = (
            query.sort,
            query.filters,
            query.created_after,
            query.created_before,
            query.expires_after,
            query.expires_before,
            mode,
            query.lists,
        )
        cached = self._views.get(view_key)
        if cached is not None:
            self._views.move_to_end(view_key)
            return cached[2]
        test = self._test(query, mode)
        key = self._orders[query.sort][0]
        view = self._equal(query, ordered)
        if view is None:
            view = [row for row in self._candidates(query, ordered) if test(row)]
        if query.ranged and self.layout.typed:
            view.sort(key=key)  # the candidates came in the order of their time field
        self._views[view_key] = (test, key, view)
        while len(self._views) > self._MAX_VIEWS:
            self._views.popitem(last=False)
        return view

    def _equal(self, query: Query, ordered: list[Row]) -> list[Row] | None:
        """The rows of a generated federation whose text field equals the query's one filter
        value, found without a call per row (a count by state or cluster of a million backups
        is a pass over them); None for any other query."""
        if not self.layout.typed or query.ranged or len(query.filters) != 1:
            return None
        name, value = query.filters[0]
        if "," in value:
            return None
        if _OWN_KINDS.get(name) in ("safe", "str"):
            i = self.layout.own.index(name)
            return [row for row in ordered if row[i] == value]
        if name in _SORTABLE_SHARED:
            j = self.layout.shared.index(name)
            return [row for row in ordered if row[-1][j] == value]
        return None

    def _candidates(self, query: Query, ordered: list[Row]) -> list[Row]:
        """The rows a ranged query can match: of a generated federation, only those inside its
        time bounds, found by bisection in the order of that time field (cheap for the recent
        or expiring few of a large federation); else every row."""
        if not self.layout.typed or not query.ranged:
            return ordered
        if query.created_after is not None or query.created_before is not None:
            field, low, high = "created_at", query.created_after, query.created_before
        else:
            field, low, high = "expiration_time", query.expires_after, query.expires_before
        by_time = self.ascending(field)
        self._orders.move_to_end(query.sort)
        key = self._orders[field][0]
        start = 0 if low is None else bisect.bisect_left(by_time, (low, ""), key=key)
        end = len(by_time)
        if high is not None:
            end = bisect.bisect_right(by_time, (high, "\U0010ffff"), key=key)
        return by_time[start:end]

    def _test(self, query: Query, mode: str) -> Callable[[Row], bool]:
        tests: list[tuple[Callable[[Row], Any], frozenset[str]]] = []
        for name, value in query.filters:
            alternatives = mode == "mva" or name in query.lists
            get = self.layout.getter(name)
            if get is None or ("," in value and not alternatives):
                # the OVC defect: comma-separated values match nothing
                return lambda row: False
            tests.append((get, frozenset(value.split(",") if alternatives else [value])))
        bounds = []
        for field, low, high in (
            ("created_at", query.created_after, query.created_before),
            ("expiration_time", query.expires_after, query.expires_before),
        ):
            if low is not None or high is not None:
                get = self.layout.getter(field) or (lambda row: None)
                bounds.append((get, low, high))

        def test(row: Row) -> bool:
            for get, allowed in tests:
                if _as_text(get(row)) not in allowed:
                    return False
            for get, low, high in bounds:
                value = get(row)
                # "NA" (no expiration, or no time at all) matches no bound: an assumption
                if not isinstance(value, str) or value == "NA":
                    return False
                if low is not None and value < low:
                    return False
                if high is not None and value > high:
                    return False
            return True

        return test

    def churn(self, create: int, expire: int, rng: random.Random, now: float) -> None:
        """Delete ``expire`` random backups, then add ``create`` fresh PROTECTED ones.

        New backups copy the VM and store of a random backup that existed before the deletion
        (a federation that never had backups gets none).
        """
        if create <= 0 and expire <= 0:
            return
        rows = self.rows
        templates = [rows[rng.randrange(len(rows))] for _ in range(create) if rows]
        victims = rng.sample(rows, min(max(expire, 0), len(rows)))
        times = Times()
        t = int(now)
        created = []
        for model in templates:
            template = list(model)
            for name, i in self._churn_fields.items():
                template[i] = _churned_value(name, t, rng, times, template[i])
            created.append(tuple(template))
        self.apply(victims, created)


_View = tuple[Callable[[Row], bool], Callable[[Row], Any], list[Row]]
#: Up to this many changed rows, a sorted list is changed in place (each change moves half the
#: list on average: one memmove, no reference counted); past it, the list is copied once with
#: all of them (every reference counted). Both costs grow with the list: the crossover does not.
_IN_PLACE: Final = 128


def _changed(
    ordered: list[Row],
    key: Callable[[Row], Any],
    removed: Sequence[Row],
    added: Sequence[Row],
    replaced: Sequence[tuple[Row, Row]] = (),
) -> list[Row]:
    """``ordered`` (ascending by ``key``) without ``removed``, with ``added``, and each
    ``(old, new)`` of ``replaced`` swapped (in place when both sort the same)."""
    if replaced:
        removed, added = list(removed), list(added)
        for old, new in replaced:
            if key(old) == key(new):
                ordered[_position(ordered, key, old)] = new
            else:
                removed.append(old)
                added.append(new)
    if len(removed) + len(added) <= _IN_PLACE:
        for row in removed:
            del ordered[_position(ordered, key, row)]
        for row in added:
            bisect.insort_right(ordered, row, key=key)
        return ordered
    cuts = sorted(_position(ordered, key, row) for row in removed)
    new_rows = sorted(added, key=key)
    places = [bisect.bisect_right(ordered, key(row), key=key) for row in new_rows]
    out: list[Row] = []
    start = c = n = 0
    while c < len(cuts) or n < len(new_rows):
        if n < len(new_rows) and (c == len(cuts) or places[n] <= cuts[c]):
            out += ordered[start : places[n]]
            out.append(new_rows[n])
            start = places[n]
            n += 1
        else:
            out += ordered[start : cuts[c]]
            start = cuts[c] + 1
            c += 1
    out += ordered[start:]
    return out


def _position(ordered: list[Row], key: Callable[[Row], Any], row: Row) -> int:
    i = bisect.bisect_left(ordered, key(row), key=key)
    while ordered[i] is not row:  # past the rows of an equal key (hostile data only)
        i += 1
    return i


# A churned backup copies another with fresh per-backup fields, but keeps its size and
# consistency.
_CHURNED: Final = tuple(
    name
    for name in OWN_FIELDS
    if name not in {"size", "application_consistent", "consistency_type"}
)


def _churned_value(name: str, t: int, rng: random.Random, times: Times, old: object) -> object:
    if name == "id":
        return seeded_uuid4(rng)
    if name == "name":
        return times.local(t, 0)
    if name == "state":
        return "PROTECTED"
    if name == "type":
        return "POLICY"
    if name == "created_at":
        return times.utc(t)
    if name == "expiration_time":
        return times.utc(t + 7 * DAY)
    if name in ("unique_size_bytes", "sent", "sent_duration"):
        return 0
    if name in ("unique_size_timestamp", "sent_completion_time"):
        return "NA"
    return old

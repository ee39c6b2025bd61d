"""The compact store of a poll's backups: it counts what a scan counts, whatever the order,
merges an incremental poll's reads, and says its figures as the controller counts them."""

from __future__ import annotations

import pickle
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.backups import CLUSTER_FILTER, STORE_FILTER, Aggregator
from exporter.incremental import timestamp
from exporter.model import MAX_LABEL_LENGTH, VMBackups
from exporter.store import (
    CHUNK_ROWS,
    BackupStore,
    Record,
    SharedWith,
    _expiry_second,
    _sorted,
    id_key,
    read_record,
)
from tests.snapshots import vm_backups

NOW = 1_700_000_000

times = st.one_of(
    st.integers(min_value=-5, max_value=5).map(lambda k: timestamp(NOW + 60 * k)),
    st.sampled_from(["NA", "", None, "2023-11-14T22:13:20.500Z"]),
)
backups = st.fixed_dictionaries(
    {
        "id": st.uuids().map(str),
        "state": st.sampled_from(["PROTECTED", "FAILED", "SAVING", "DELETED", "ODD"]),
        "created_at": times,
        "expiration_time": times,
        "size": st.integers(min_value=0, max_value=2**40),
        "omnistack_cluster_name": st.sampled_from(["Boston", "Paris", "", "NA", "x" * 300]),
        "external_store_name": st.sampled_from(["", "cloud", None]),
        "virtual_machine_id": st.sampled_from(["v1", "v2", "v3", "", None]),
        "consistency_type": st.sampled_from(["VSS", "DEFAULT", "NONE", "FAILEDVSS", "NA", 3]),
    }
)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(backups, max_size=30), seed=st.integers(0, 100))
def test_a_store_counts_what_an_aggregator_counts_in_any_order(
    records: list[dict[str, Any]], seed: int
) -> None:
    direct = Aggregator()
    for record in records:
        direct.add(record)
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    store = BackupStore()
    for record in shuffled:
        store.add(record)
    expected = direct.snapshot()
    assert store.aggregate() == expected
    # As the decoding worker sends it back.
    assert pickle.loads(pickle.dumps(store)).aggregate() == expected  # noqa: S301
    assert direct.snapshot(free=True) == expected
    assert direct.snapshot().vms == ()  # its VMs' tallies freed


def backup(n: int, created: float, expires: float | str = "NA", **fields: Any) -> dict[str, Any]:
    return {
        "id": f"00000000-0000-4000-8000-{n:012x}",
        "state": "PROTECTED",
        "created_at": timestamp(created),
        "expiration_time": expires if isinstance(expires, str) else timestamp(expires),
        "size": n,
        "omnistack_cluster_name": "Boston",
        "virtual_machine_id": f"vm{n % 3}",
        **fields,
    }


def records(*items: dict[str, Any]) -> list[Record]:
    return [read_record(item) for item in items]


def test_merge_keeps_the_old_drops_the_expired_and_takes_the_window_and_the_lingering() -> None:
    old = backup(1, NOW - 7200, NOW + 3600)
    expired = backup(2, NOW - 7200, NOW - 10)
    lingering = backup(3, NOW - 7200, NOW - 10)
    recent = backup(4, NOW - 100, NOW + 3600, state="SAVING")
    store = BackupStore()
    for item in (old, expired, lingering, recent):
        store.add(item)
    now_recent = {**recent, "state": "PROTECTED"}
    new = backup(5, NOW - 50, NOW + 3600)
    still = {**lingering, "state": "DELETED"}
    store.merge(NOW - 600, NOW, records(now_recent, new), records(still))
    expected = BackupStore()
    for item in (old, still, now_recent, new):
        expected.add(item)
    assert store.aggregate() == expected.aggregate()
    assert store.figures() == expected.figures()


def test_a_lingering_backup_held_with_a_later_expiration_replaces_it() -> None:
    store = BackupStore()
    store.add(backup(1, NOW - 7200, NOW + 3600))
    shortened = backup(1, NOW - 7200, NOW - 10, state="FAILED")
    store.merge(NOW - 600, NOW, [], records(shortened))
    assert len(store) == 1
    assert store.figures().states == {"FAILED": 1}


def test_figures_count_states_places_and_expirations_as_the_filters_do() -> None:
    store = BackupStore()
    store.add(backup(1, NOW, NOW + 60))
    store.add(backup(2, NOW, "NA", state="FAILED"))
    store.add(backup(3, NOW, NOW + 60, omnistack_cluster_name="", external_store_name="cloud"))
    store.add(backup(4, NOW, "", omnistack_cluster_name="x" * (MAX_LABEL_LENGTH + 1)))
    figures = store.figures()
    assert figures.total == 4
    assert figures.states == {"PROTECTED": 3, "FAILED": 1}
    # A cut name is no filter's value: the total covers it.
    assert figures.places == {(CLUSTER_FILTER, "Boston"): 2, (STORE_FILTER, "cloud"): 1}
    assert figures.expiring == 2


def test_ids_are_16_bytes_and_distinct() -> None:
    uuid = "0e4f2d5c-1b2a-4c3d-8e9f-0123456789ab"
    assert id_key(uuid) == bytes.fromhex(uuid.replace("-", ""))
    assert len(id_key("not-a-uuid")) == 16
    assert id_key(uuid.upper()) != id_key(uuid)


@settings(max_examples=100, deadline=None)
@given(
    held=st.lists(backups, max_size=20),
    new=st.lists(backups, max_size=20),
    dropped=st.sets(st.integers(0, 19)),
)
def test_rows_are_replaced_in_place_as_if_rebuilt(
    held: list[dict[str, Any]], new: list[dict[str, Any]], dropped: set[int]
) -> None:
    store = BackupStore()
    for record in held:
        store.add(record)
    drop = {row for row in dropped if row < len(held)}
    store._replace(drop, records(*new))
    kept = [record for row, record in enumerate(held) if row not in drop] + new
    rebuilt = BackupStore()
    for record in kept:
        rebuilt.add(record)
    assert len(store) == len(kept)
    assert store.aggregate() == rebuilt.aggregate()
    assert store.figures() == rebuilt.figures()
    rows = [
        (store._keys[16 * r : 16 * r + 16], store._created[r], store._sizes[r])
        for r in range(len(store))
    ]
    assert sorted(rows) == sorted(
        (bytearray(id_key(b["id"])), read_record(b).created, read_record(b).size) for b in kept
    )


@settings(deadline=None)
@given(
    expires=st.one_of(
        st.floats(min_value=-1e12, max_value=1e12), st.just(float("inf")), st.just(2.0**32 - 1.5)
    ),
    now=st.integers(min_value=0, max_value=2**32 - 2),
)
def test_an_expiration_in_4_bytes_is_past_exactly_when_the_time_is(
    expires: float, now: int
) -> None:
    kept = _expiry_second(expires)
    assert 0 <= kept < 2**32
    assert (kept <= now) == (expires <= now)


@settings(max_examples=25)
@given(st.lists(st.floats(allow_nan=False), max_size=50), st.integers(0, 3))
def test_times_sorted_in_runs_are_sorted_as_a_whole(times: list[float], runs: int) -> None:
    rng = random.Random(len(times))
    many = times + [rng.uniform(-1e9, 4e9) for _ in range(runs * CHUNK_ROWS // 2)]
    assert list(_sorted(many)) == sorted(many)
    assert list(_sorted(iter(many))) == sorted(many)


def protected_at(vm_id: str, *where: str, at: float = 10.0) -> VMBackups:
    """A VM with one PROTECTED backup at ``at`` at each of ``where``."""
    return vm_backups(vm_id, dict.fromkeys(where, at), None, "PROTECTED", at, where[0])


def test_a_new_snapshot_shares_the_vms_that_did_not_change_with_the_published_one() -> None:
    published = [
        protected_at("a", "Boston"),
        protected_at("b", "Boston", "Paris"),
        protected_at("c", "Boston"),
        protected_at("e", "Boston"),
    ]
    new = [
        protected_at("a", "Boston"),  # unchanged
        protected_at("b", "Paris", "Boston"),  # equal, its destinations in another order
        protected_at("c", "Boston", at=20.0),  # changed
        protected_at("d", "Boston"),  # new
        protected_at("e", "Boston"),  # unchanged, after one that is new
        protected_at("f", "Boston"),  # new, past the published ones
    ]
    shared = SharedWith(published)
    got = [*shared(new[:2]), *shared(new[2:])]  # in parts, as the decoding worker sends them
    assert got == new
    assert [vm.vm_id for vm, made in zip(got, new, strict=True) if vm is not made] == ["a", "e"]
    assert got[0] is published[0]
    assert got[4] is published[3]
    assert list(SharedWith([])(new)) == new

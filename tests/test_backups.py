"""Pure aggregation: counts, sizes and newest backups from records as the API returns them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.backups import UNKNOWN_CLUSTER, Aggregator, BackupRecordError, seconds_of
from exporter.model import (
    OTHER_STATE,
    STATES,
    BackupSnapshot,
    is_timestamp,
    label_value,
    timestamp_seconds,
)
from tests.snapshots import aggregate

T0 = "2024-03-01T06:00:00Z"  # 1709272800
T1 = "2024-03-02T06:00:00Z"  # 1709359200
T2 = "2024-03-03T06:00:00Z"  # 1709445600


def backup(number: int, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": f"b-{number:04d}",
        "state": "PROTECTED",
        "created_at": T0,
        "size": 100,
        "omnistack_cluster_name": "Boston",
        "external_store_name": "",
        "virtual_machine_id": "vm-1",
        "virtual_machine_name": "web01",
        "virtual_machine_state": "ALIVE",
        "expiration_time": "NA",
    }
    record.update(fields)
    return record


def test_counts_and_sizes_by_cluster_and_state_with_every_state_present() -> None:
    snapshot = aggregate(
        [
            backup(1, size=10),
            backup(2, size=20, state="FAILED"),
            backup(3, size=30, omnistack_cluster_name="Chicago"),
            backup(4, size=40, state="FAILED"),
        ]
    )
    boston, chicago = snapshot.clusters
    assert (boston.name, chicago.name) == ("Boston", "Chicago")
    assert set(STATES) <= set(boston.counts)
    assert boston.counts["PROTECTED"] == 1
    assert boston.counts["FAILED"] == 2
    assert boston.sizes["FAILED"] == 60
    assert boston.counts["QUEUED"] == 0
    assert chicago.sizes["PROTECTED"] == 30
    assert snapshot.backups_seen == 4


def test_an_undocumented_state_counts_as_other_only_when_present() -> None:
    snapshot = aggregate([backup(1), backup(2, state="ARCHIVED", size=7)])
    (cluster,) = snapshot.clusters
    assert cluster.counts[OTHER_STATE] == 1
    assert cluster.sizes[OTHER_STATE] == 7
    assert OTHER_STATE not in aggregate([backup(1)]).clusters[0].counts


def test_newest_protected_ignores_newer_backups_in_other_states() -> None:
    snapshot = aggregate(
        [
            backup(1, created_at=T0),
            backup(2, created_at=T1),
            backup(3, created_at=T2, state="FAILED"),
            backup(4, created_at=T2, state="SAVING"),
        ]
    )
    assert snapshot.clusters[0].newest_protected == 1709359200.0
    assert snapshot.vms[0].newest_protected == {"Boston": 1709359200.0}


def test_a_cluster_or_vm_without_protected_backups_has_no_newest() -> None:
    snapshot = aggregate([backup(1, state="FAILED"), backup(2, state="FAILED")])
    assert snapshot.clusters[0].newest_protected is None
    assert snapshot.vms[0].newest_protected == {}
    assert snapshot.vms[0].newest_protected_anywhere is None


def test_a_vms_newest_protected_backup_per_destination() -> None:
    # Local backups, copies to a DR cluster, copies to an external store: one newest each.
    snapshot = aggregate(
        [
            backup(1, created_at=T0),
            backup(2, created_at=T2),
            backup(3, created_at=T1, omnistack_cluster_name="London DR"),
            backup(4, created_at=T0, omnistack_cluster_name="London DR"),
            backup(5, created_at=T2, omnistack_cluster_name="London DR", state="FAILED"),
            backup(6, created_at=T0, omnistack_cluster_name="", external_store_name="StoreOnce"),
            backup(7, created_at=T1, virtual_machine_id="vm-2", state="SAVING"),
        ]
    )
    vm, other = snapshot.vms
    assert vm.newest_protected == {"Boston": 1709445600.0, "London DR": 1709359200.0,
                                   "StoreOnce": 1709272800.0}  # fmt: skip
    assert vm.newest_protected_anywhere == 1709445600.0
    assert (other.vm_id, other.newest_protected) == ("vm-2", {})


def test_a_vms_newest_failed_backup_and_its_newest_backup_in_any_state() -> None:
    snapshot = aggregate(
        [
            backup(1, created_at=T0, state="FAILED"),
            backup(2, created_at=T1, state="FAILED", omnistack_cluster_name="London DR"),
            backup(3, created_at=T2, state="PROTECTED"),
            backup(4, created_at=T0, virtual_machine_id="vm-2"),
            backup(
                5,
                created_at=T1,
                virtual_machine_id="vm-2",
                state="ARCHIVED",
                omnistack_cluster_name="",
                external_store_name="StoreOnce",
            ),
        ]
    )
    failed_before, archived_last = snapshot.vms
    assert failed_before.newest_failed == 1709359200.0
    assert (failed_before.newest_state, failed_before.newest_created) == ("PROTECTED", 1709445600.0)
    assert failed_before.newest_destination == "Boston"
    assert archived_last.newest_failed is None
    assert (archived_last.newest_state, archived_last.newest_destination) == (
        OTHER_STATE,
        "StoreOnce",
    )


@pytest.mark.parametrize(
    ("cluster", "store", "held_at"),
    [
        ("Boston", "StoreOnce", "Boston"),
        ("", "StoreOnce", "StoreOnce"),
        (None, "Cloud", "Cloud"),
        ("", "", UNKNOWN_CLUSTER),
        (None, None, UNKNOWN_CLUSTER),
    ],
)
def test_a_backup_is_held_at_its_cluster_else_its_store_else_unknown(
    cluster: str | None, store: str | None, held_at: str
) -> None:
    """What protection.py's destinations rely on: a rule's destination is compared with this."""
    snapshot = aggregate([backup(1, omnistack_cluster_name=cluster, external_store_name=store)])
    (summary,) = snapshot.clusters
    assert summary.name == held_at
    assert dict(snapshot.vms[0].newest_protected) == {held_at: 1709272800.0}


def test_external_store_backups_are_grouped_under_the_store() -> None:
    snapshot = aggregate(
        [
            backup(1, omnistack_cluster_name="", external_store_name="StoreOnce-1"),
            backup(2, omnistack_cluster_name=None, external_store_name=None),
        ]
    )
    assert [cluster.name for cluster in snapshot.clusters] == ["StoreOnce-1", UNKNOWN_CLUSTER]


def test_every_vm_is_kept_by_id_whatever_its_state_the_inventory_says_which_live() -> None:
    snapshot = aggregate(
        [
            backup(1, virtual_machine_id="vm-r", virtual_machine_state="REMOVED"),
            backup(2, virtual_machine_id="vm-d", virtual_machine_state="DELETED"),
            backup(3, virtual_machine_id="vm-a"),
            backup(4, virtual_machine_id=""),
        ],  # a backup of no VM counts for its cluster only
    )
    assert [vm.vm_id for vm in snapshot.vms] == ["vm-a", "vm-d", "vm-r"]
    assert snapshot.clusters[0].counts["PROTECTED"] == 4


def test_destinations_are_one_string_per_name_so_the_pickled_snapshot_stays_small() -> None:
    records = [backup(n, virtual_machine_id=f"vm-{n}", omnistack_cluster_name="Boston DC"[:])
               for n in range(50)]  # fmt: skip
    snapshot = aggregate(records)
    names = {id(where) for vm in snapshot.vms for where in vm.newest_protected}
    names |= {id(vm.newest_destination) for vm in snapshot.vms}
    assert len(names) == 1


def test_na_and_non_ascii_values_are_carried_as_they_are() -> None:
    snapshot = aggregate(
        [backup(1, omnistack_cluster_name='Zürich "db"\\1', expiration_time="NA", unique_size="NA")]
    )
    assert list(snapshot.vms[0].newest_protected) == ['Zürich "db"\\1']


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"size": True}, "backup 'b-0001': size must be a whole number of bytes, not 'True'"),
        ({"size": -1}, "backup 'b-0001': size must be a whole number of bytes, not '-1'"),
        ({"size": "1e3"}, "backup 'b-0001': size must be a whole number of bytes, not '1e3'"),
        ({"size": 1.5}, "backup 'b-0001': size must be a whole number of bytes, not '1.5'"),
        (
            {"created_at": "yesterday"},
            "backup 'b-0001': created_at 'yesterday' is not a UTC timestamp",
        ),
        ({"created_at": 17}, "backup 'b-0001': created_at '17' is not a UTC timestamp"),
        ({"state": None}, "backup 'b-0001': state is missing"),
        ({"state": "NA"}, "backup 'b-0001': state is missing"),
        ({"state": 3}, "backup 'b-0001': state must be a string, not int"),
        ({"state": None, "id": None}, "backup (without an id): state is missing"),
    ],
)
def test_records_that_cannot_be_placed_are_refused_with_a_clear_reason(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(BackupRecordError) as caught:
        Aggregator().add(backup(1, **fields))
    assert str(caught.value) == message


@pytest.mark.parametrize("missing", [None, "NA", ""])
def test_a_backup_without_a_creation_time_counts_but_is_never_the_newest(missing: Any) -> None:
    snapshot = aggregate(
        [
            backup(1, created_at=T0),
            backup(2, created_at=missing),
            backup(3, created_at=missing, virtual_machine_id="vm-2", state="FAILED"),
        ]
    )
    (cluster,) = snapshot.clusters
    assert cluster.counts["PROTECTED"] == 2
    assert cluster.newest_protected == 1709272800.0
    vm_1, vm_2 = snapshot.vms
    assert (vm_1.vm_id, dict(vm_1.newest_protected), vm_1.newest_created) == (
        "vm-1",
        {"Boston": 1709272800.0},
        1709272800.0,
    )
    # Its only backup has no time: it has backups, but no newest one.
    assert (vm_2.newest_state, vm_2.newest_created, vm_2.newest_failed) == ("", None, None)


def test_a_backup_without_any_creation_time_field_counts_too() -> None:
    record = backup(1)
    del record["created_at"]
    assert aggregate([record]).clusters[0].counts["PROTECTED"] == 1


@pytest.mark.parametrize(("size", "counted"), [(None, 0), ("NA", 0), ("1234", 1234), (7, 7)])
def test_a_missing_size_counts_zero_bytes_and_a_size_in_digits_its_value(
    size: Any, counted: int
) -> None:
    snapshot = aggregate([backup(1, size=100), backup(2, size=size, state="SAVING")])
    (cluster,) = snapshot.clusters
    assert cluster.counts["SAVING"] == 1
    assert cluster.sizes["SAVING"] == counted
    assert cluster.sizes["PROTECTED"] == 100


def test_odd_optional_values_count_as_missing() -> None:
    snapshot = aggregate(
        [
            backup(1, omnistack_cluster_name="NA", external_store_name="StoreOnce-1"),
            backup(2, omnistack_cluster_name=["x"], external_store_name=None),
            backup(3, virtual_machine_id="NA"),
            backup(4, virtual_machine_id=["vm-9"]),
        ]
    )
    assert [cluster.name for cluster in snapshot.clusters] == [
        "Boston",
        "StoreOnce-1",
        UNKNOWN_CLUSTER,
    ]
    # A backup whose VM id is "NA" or no text belongs to no VM (the inventory names them).
    assert [vm.vm_id for vm in snapshot.vms] == ["vm-1"]
    assert snapshot.backups_seen == 4


def test_an_empty_federation_gives_an_empty_snapshot() -> None:
    assert aggregate([]) == BackupSnapshot(clusters=(), vms=(), backups_seen=0)


def test_a_name_as_written_and_the_same_name_reached_by_cutting_share_one_tally() -> None:
    # Names are looked up as the API wrote them, among those seen before, before they are
    # cleaned: each must land where the long way would put it, in either order.
    long_cluster, long_vm = "C" * 300, "v" * 300
    cut_cluster, cut_vm = label_value(long_cluster), label_value(long_vm)
    odd = "Zürich\ud800"  # cleaned: its lone surrogate replaced, a hash appended
    records = [
        backup(1, omnistack_cluster_name=long_cluster, virtual_machine_id=long_vm),
        backup(2, omnistack_cluster_name=cut_cluster, virtual_machine_id=cut_vm, created_at=T1),
        backup(3, omnistack_cluster_name="", external_store_name=cut_cluster, created_at=T2),
        backup(4, omnistack_cluster_name="NA", external_store_name="", created_at=T1),
        backup(5, omnistack_cluster_name="", external_store_name=odd, virtual_machine_id="vm-3"),
        backup(6, omnistack_cluster_name=odd, virtual_machine_id="vm-3"),
        backup(7, omnistack_cluster_name="Y", external_store_name=odd, virtual_machine_id="vm-3"),
    ]
    for ordered in (records, records[::-1]):
        snapshot = aggregate(ordered)
        counts = {c.name: c.counts["PROTECTED"] for c in snapshot.clusters}
        assert counts == {cut_cluster: 3, UNKNOWN_CLUSTER: 1, label_value(odd): 2, "Y": 1}
        held = {vm.vm_id: dict(vm.newest_protected) for vm in snapshot.vms}
        assert held[cut_vm] == {cut_cluster: 1709359200.0}
        assert held["vm-1"] == {cut_cluster: 1709445600.0, UNKNOWN_CLUSTER: 1709359200.0}


#: Texts a time may come as: whole seconds, fractions, out of range, odd digits or none.
clock_texts = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 12, 31)).map(
        lambda t: t.replace(microsecond=0).isoformat() + "Z"
    ),
    st.datetimes(min_value=datetime(1970, 1, 1)).map(lambda t: t.isoformat() + "Z"),
    st.builds(
        "2024-02-{:02d}T{:02d}:{:02d}:{:02d}Z".format,
        st.integers(0, 31),
        st.integers(0, 25),
        st.integers(0, 61),
        st.integers(0, 61),
    ),
    st.text("0123456789:Z.\u0661 ", min_size=8, max_size=11).map("2024-02-01T{}".format),
    st.text(max_size=24),
)


@given(st.lists(clock_texts, min_size=1, max_size=20))
def test_a_time_is_read_as_the_datetime_module_reads_it_whatever_was_read_before(
    texts: list[str],
) -> None:
    for text in texts:
        seconds_of(f"{text[:11]}00:00:00Z")  # its day read first, when it is one: the short way
        expected = timestamp_seconds(text) if is_timestamp(text) else None
        assert seconds_of(text) == expected, text
    sample = datetime(2018, 5, 8, 10, 0, 1, tzinfo=UTC)  # as HPE's samples write them
    assert seconds_of("2018-05-08T10:00:01Z") == sample.timestamp()


@pytest.mark.parametrize(
    "clock",
    [
        "00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60", "99:99:99",
        "\u0661\u0660:00:00", "+1:00:00", " 1:00:00", "1 :00:00", "10:00:0\u0660", "10-00-00",
    ],
)  # fmt: skip
def test_a_clock_on_a_day_already_read_is_read_as_the_datetime_module_reads_it(
    clock: str,
) -> None:
    assert seconds_of("2024-02-29T12:00:00Z") is not None  # the day, read the long way
    text = f"2024-02-29T{clock}Z"
    assert seconds_of(text) == (timestamp_seconds(text) if is_timestamp(text) else None)

"""Pure aggregation: counts, sizes and newest backups from records as the API returns them."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.backups import UNKNOWN_CLUSTER, Aggregator, BackupRecordError
from exporter.model import OTHER_STATE, STATES, BackupSnapshot

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


def aggregate(*records: dict[str, Any]) -> BackupSnapshot:
    tally = Aggregator()
    for record in records:
        tally.add(record)
    return tally.snapshot()


def test_counts_and_sizes_by_cluster_and_state_with_every_state_present() -> None:
    snapshot = aggregate(
        backup(1, size=10),
        backup(2, size=20, state="FAILED"),
        backup(3, size=30, omnistack_cluster_name="Chicago"),
        backup(4, size=40, state="FAILED"),
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
    snapshot = aggregate(backup(1), backup(2, state="ARCHIVED", size=7))
    (cluster,) = snapshot.clusters
    assert cluster.counts[OTHER_STATE] == 1
    assert cluster.sizes[OTHER_STATE] == 7
    assert OTHER_STATE not in aggregate(backup(1)).clusters[0].counts


def test_newest_protected_ignores_newer_backups_in_other_states() -> None:
    snapshot = aggregate(
        backup(1, created_at=T0),
        backup(2, created_at=T1),
        backup(3, created_at=T2, state="FAILED"),
        backup(4, created_at=T2, state="SAVING"),
    )
    assert snapshot.clusters[0].newest_protected == 1709359200.0
    assert snapshot.vms[0].newest_protected == 1709359200.0


def test_a_cluster_or_vm_without_protected_backups_has_no_newest() -> None:
    snapshot = aggregate(backup(1, state="FAILED"), backup(2, state="FAILED"))
    assert snapshot.clusters[0].newest_protected is None
    assert snapshot.vms[0].newest_protected is None
    assert snapshot.vms[0].name == "web01"


def test_external_store_backups_are_grouped_under_the_store() -> None:
    snapshot = aggregate(
        backup(1, omnistack_cluster_name="", external_store_name="StoreOnce-1"),
        backup(2, omnistack_cluster_name=None, external_store_name=None),
    )
    assert [cluster.name for cluster in snapshot.clusters] == ["StoreOnce-1", UNKNOWN_CLUSTER]


def test_vms_sharing_a_name_stay_apart_by_id() -> None:
    snapshot = aggregate(
        backup(1, virtual_machine_id="vm-a", created_at=T0),
        backup(2, virtual_machine_id="vm-b", created_at=T1),
    )
    assert [(vm.name, vm.vm_id, vm.newest_protected) for vm in snapshot.vms] == [
        ("web01", "vm-a", 1709272800.0),
        ("web01", "vm-b", 1709359200.0),
    ]


def test_removed_and_deleted_vms_have_no_vm_series_but_still_count() -> None:
    snapshot = aggregate(
        backup(1, virtual_machine_id="vm-r", virtual_machine_state="REMOVED"),
        backup(2, virtual_machine_id="vm-d", virtual_machine_state="DELETED"),
        backup(3, virtual_machine_id="vm-a"),
    )
    assert [vm.vm_id for vm in snapshot.vms] == ["vm-a"]
    assert snapshot.clusters[0].counts["PROTECTED"] == 3


def test_a_vms_name_and_state_come_from_its_newest_backup() -> None:
    snapshot = aggregate(
        backup(1, created_at=T2, virtual_machine_name="web01-renamed"),
        backup(2, created_at=T0, virtual_machine_name="web01", virtual_machine_state="REMOVED"),
    )
    assert [vm.name for vm in snapshot.vms] == ["web01-renamed"]


def test_na_and_non_ascii_values_are_carried_as_they_are() -> None:
    snapshot = aggregate(
        backup(1, virtual_machine_name='Zürich "db"\\1', expiration_time="NA", unique_size="NA")
    )
    assert snapshot.vms[0].name == 'Zürich "db"\\1'


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
        backup(1, created_at=T0),
        backup(2, created_at=missing),
        backup(3, created_at=missing, virtual_machine_id="vm-2", virtual_machine_name="new"),
    )
    (cluster,) = snapshot.clusters
    assert cluster.counts["PROTECTED"] == 3
    assert cluster.newest_protected == 1709272800.0
    assert [(vm.vm_id, vm.name, vm.newest_protected) for vm in snapshot.vms] == [
        ("vm-2", "new", None),
        ("vm-1", "web01", 1709272800.0),
    ]


def test_a_backup_without_any_creation_time_field_counts_too() -> None:
    record = backup(1)
    del record["created_at"]
    assert aggregate(record).clusters[0].counts["PROTECTED"] == 1


@pytest.mark.parametrize(("size", "counted"), [(None, 0), ("NA", 0), ("1234", 1234), (7, 7)])
def test_a_missing_size_counts_zero_bytes_and_a_size_in_digits_its_value(
    size: Any, counted: int
) -> None:
    snapshot = aggregate(backup(1, size=100), backup(2, size=size, state="SAVING"))
    (cluster,) = snapshot.clusters
    assert cluster.counts["SAVING"] == 1
    assert cluster.sizes["SAVING"] == counted
    assert cluster.sizes["PROTECTED"] == 100


def test_odd_optional_values_count_as_missing() -> None:
    snapshot = aggregate(
        backup(1, omnistack_cluster_name="NA", external_store_name="StoreOnce-1"),
        backup(2, omnistack_cluster_name=["x"], external_store_name=None),
        backup(3, virtual_machine_id="NA"),
        backup(4, virtual_machine_id="vm-9", virtual_machine_name=["x"]),
        backup(5, virtual_machine_id="vm-8", virtual_machine_name="NA"),
        backup(6, virtual_machine_id="vm-7", virtual_machine_state=None),
    )
    assert [cluster.name for cluster in snapshot.clusters] == [
        "Boston",
        "StoreOnce-1",
        UNKNOWN_CLUSTER,
    ]
    # A VM may be called "NA"; one whose backups say no id has no per-VM series.
    assert sorted((vm.vm_id, vm.name) for vm in snapshot.vms) == [
        ("vm-1", "web01"),
        ("vm-8", "NA"),
        ("vm-9", ""),
    ]
    assert snapshot.backups_seen == 6


def test_an_empty_federation_gives_an_empty_snapshot() -> None:
    assert aggregate() == BackupSnapshot(clusters=(), vms=(), backups_seen=0)

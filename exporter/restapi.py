"""HPE's published REST API contract for the resources the exporter reads, by version.

The fields each listing documents, and the REST API version each appeared in, derived from
HPE's Swagger reference of REST API 1.25 and HPE's "Feature and function support by REST API
version" page (tests/data/hpe/README.md names both; tests/test_contract.py checks this table
against the derived copy). A field without a version here is as old as :data:`OLDEST`.

The exporter asks a controller only for what its version documents, and the simulator
serves, and in its strict mode accepts, only that. It is HPE's contract, not the exporter's
reading of it: it imports nothing of the exporter, and the simulator, an independent oracle
otherwise, may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

Version = tuple[int, int]

#: The REST API versions the exporter supports: 1.0 (SimpliVity 3.x) to 1.25 (5.x); a newer
#: one is read as 1.25.
OLDEST: Final[Version] = (1, 0)
NEWEST: Final[Version] = (1, 25)

_BACKUP = (
    "application_consistent associated_cluster backup_store_type cluster_group_ids "
    "compute_cluster_parent_hypervisor_object_id compute_cluster_parent_name consistency_type "
    "created_at datastore_id datastore_name expiration_time external_store_name hypervisor_type "
    "id name omnistack_cluster_id omnistack_cluster_name sent sent_completion_time sent_duration "
    "size state type unique_size_bytes unique_size_timestamp virtual_machine_id "
    "virtual_machine_name virtual_machine_state virtual_machine_type"
)
_VM = (
    "app_aware_vm_status cluster_group_ids compute_cluster_parent_hypervisor_object_id "
    "compute_cluster_parent_name created_at datastore_id datastore_name deleted_at "
    "ha_resynchronization_progress ha_status host_id host_name hypervisor_allocated_capacity "
    "hypervisor_allocated_cpu hypervisor_consumed_cpu hypervisor_consumed_memory "
    "hypervisor_cpu_count hypervisor_folder_name hypervisor_free_space hypervisor_instance_id "
    "hypervisor_is_template hypervisor_managed_by hypervisor_management_system "
    "hypervisor_management_system_name hypervisor_object_id hypervisor_total_memory "
    "hypervisor_type hypervisor_uuid hypervisor_virtual_disk_count "
    "hypervisor_virtual_machine_power_state id name network_interfaces omnistack_cluster_id "
    "omnistack_cluster_name policy_id policy_name replica_set state"
)
_POLICY = "cluster_group_ids id name owner_cluster_id owner_cluster_name rules"
_RULE = (
    "application_consistent consistency_type days destination_id destination_name end_time "
    "external_store_name frequency id max_backups number retention start_time"
)
_HOST = (
    "allocated_capacity availability_zone_effective availability_zone_planned can_rollback "
    "capacity_savings cluster_feature_level cluster_group_ids compression_ratio "
    "compute_cluster_hypervisor_object_id compute_cluster_name "
    "compute_cluster_parent_hypervisor_object_id compute_cluster_parent_name "
    "current_feature_level date deduplication_ratio efficiency_ratio federation_ip "
    "federation_mask federation_mtu free_space hypervisor_management_system "
    "hypervisor_management_system_name hypervisor_object_id id local_backup_capacity "
    "management_ip management_mask management_mtu model name omnistack_cluster_id "
    "policy_enabled potential_feature_level remote_backup_capacity state storage_ip "
    "storage_mask storage_mtu stored_compressed_data stored_uncompressed_data "
    "stored_virtual_machine_data type upgrade_state used_capacity used_logical_capacity "
    "version virtual_controller_name"
)
_CLUSTER = (
    "allocated_capacity arbiter_address arbiter_configured arbiter_connected arbiter_required "
    "capacity_savings cluster_feature_level cluster_group_ids compression_ratio "
    "deduplication_ratio efficiency_ratio free_space hypervisor_management_system "
    "hypervisor_management_system_name hypervisor_object_id hypervisor_object_parent_id "
    "hypervisor_object_parent_name hypervisor_type id infosight_configuration iwo_active "
    "iwo_enabled local_backup_capacity members name remote_backup_capacity "
    "stored_compressed_data stored_uncompressed_data stored_virtual_machine_data time_zone type "
    "upgrade_state upgrade_task_id used_capacity used_logical_capacity version"
)
_REPORT = (
    "backup_rate_level daily_backup_rate daily_backup_rate_limit projected_retained_backups "
    "projected_retained_backups_level retained_backups_limit"
)

BACKUPS: Final = "/api/backups"
VIRTUAL_MACHINES: Final = "/api/virtual_machines"
POLICIES: Final = "/api/policies"
HOSTS: Final = "/api/hosts"
CLUSTERS: Final = "/api/omnistack_clusters"
SCHEDULE_REPORT: Final = "/api/policies/policy_schedule_report"
#: A policy's rules, as listed inside it (not a path of its own here).
RULES: Final = "rules"

_SINCE: Final[Mapping[tuple[str, str], Version]] = {
    (BACKUPS, "consistency_type"): (1, 3),
    (BACKUPS, "unique_size_bytes"): (1, 4),
    (BACKUPS, "sent_completion_time"): (1, 8),
    # External stores came with SimpliVity 4.0 (REST API 1.14).
    (BACKUPS, "external_store_name"): (1, 14),
    (BACKUPS, "backup_store_type"): (1, 14),
    (BACKUPS, "associated_cluster"): (1, 14),
    (RULES, "external_store_name"): (1, 14),
    (HOSTS, "policy_enabled"): (1, 4),
    (HOSTS, "omnistack_cluster_id"): (1, 9),
    (VIRTUAL_MACHINES, "host_name"): (1, 11),
}


def _table() -> dict[str, dict[str, Version]]:
    table = {
        path: dict.fromkeys(names.split(), OLDEST)
        for path, names in (
            (BACKUPS, _BACKUP),
            (VIRTUAL_MACHINES, _VM),
            (POLICIES, _POLICY),
            (RULES, _RULE),
            (HOSTS, _HOST),
            (CLUSTERS, _CLUSTER),
            (SCHEDULE_REPORT, _REPORT),
        )
    }
    for (path, name), version in _SINCE.items():
        table[path][name] = version
    return table


#: path -> the fields of one of its items (HPE's 1.25 definitions), each with the version it
#: appeared in.
FIELDS: Final[Mapping[str, Mapping[str, Version]]] = _table()
#: Resources younger than :data:`OLDEST`: the schedule report came with OmniStack 3.7.8.
RESOURCE_SINCE: Final[Mapping[str, Version]] = {SCHEDULE_REPORT: (1, 11)}


def parse_version(text: object) -> Version | None:
    """``"1.25"`` as ``(1, 25)``; None for anything else.

    >>> parse_version("1.9"), parse_version("v2"), parse_version(None)
    ((1, 9), None, None)
    """
    if not isinstance(text, str):
        return None
    major, dot, minor = text.strip().partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def documented(path: str, name: str, version: Version | None) -> bool:
    """Whether ``path``'s items have the field ``name`` in REST API ``version`` (None: the
    newest the exporter knows)."""
    since = FIELDS.get(path, {}).get(name)
    return since is not None and since <= (version or NEWEST)


def has_resource(path: str, version: Version | None) -> bool:
    return RESOURCE_SINCE.get(path, OLDEST) <= (version or NEWEST)

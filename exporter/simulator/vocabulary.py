"""The REST API's vocabulary, as the simulator serves it (see SIMPLIVITY_API.md)."""

from __future__ import annotations

from typing import Final

#: The 11 documented backup states.
BACKUP_STATES: Final = (
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

#: Every field of a generated backup, in the order of SIMPLIVITY_API.md's table.
BACKUP_FIELDS: Final = (
    "id",
    "name",
    "state",
    "type",
    "created_at",
    "expiration_time",
    "size",
    "unique_size_bytes",
    "unique_size_timestamp",
    "sent",
    "sent_duration",
    "sent_completion_time",
    "application_consistent",
    "consistency_type",
    "omnistack_cluster_id",
    "omnistack_cluster_name",
    "external_store_name",
    "backup_store_type",
    "datastore_id",
    "datastore_name",
    "virtual_machine_id",
    "virtual_machine_name",
    "virtual_machine_state",
    "virtual_machine_type",
    "hypervisor_type",
    "compute_cluster_parent_name",
    "compute_cluster_parent_hypervisor_object_id",
    "cluster_group_ids",
    "associated_cluster",
)
# Fields that differ per backup; the rest are shared by all backups of one VM on one store.
OWN_FIELDS: Final = BACKUP_FIELDS[:14]
SHARED_FIELDS: Final = BACKUP_FIELDS[14:]

#: ``limit`` above this answers 400.
MAX_LIMIT: Final = 5000
DEFAULT_LIMIT: Final = 500
#: The OAuth client the token endpoint expects in its HTTP Basic header (empty password).
CLIENT_ID: Final = "simplivity"
REST_API_VERSION: Final = "1.25"
SVTFS_VERSION: Final = "5.3.1.284"
JDBC_MESSAGE: Final = (
    "Could not get JDBC Connection; nested exception is java.sql.SQLTransientConnectionException:"
    " HikariPool-1 - Connection is not available, request timed out after 30000ms."
)

#: The fields of a virtual machine (``GET /api/virtual_machines``); those of later versions
#: (``host_name``: 1.11) are served from theirs (:mod:`exporter.restapi`).
VM_FIELDS: Final = (
    "id",
    "name",
    "state",
    "created_at",
    "policy_id",
    "policy_name",
    "omnistack_cluster_id",
    "omnistack_cluster_name",
    "datastore_id",
    "datastore_name",
    "host_id",
    "host_name",
    "hypervisor_type",
    "app_aware_vm_status",
)
VM_STATES: Final = ("ALIVE", "REMOVED", "DELETED")
#: The fields of a policy (``GET /api/policies``) and of one of its rules.
POLICY_FIELDS: Final = (
    "id",
    "name",
    "rules",
    "cluster_group_ids",
    "owner_cluster_id",
    "owner_cluster_name",
)
RULE_FIELDS: Final = (
    "id",
    "number",
    "frequency",
    "retention",
    "days",
    "start_time",
    "end_time",
    "destination_id",
    "destination_name",
    "external_store_name",
    "max_backups",
    "application_consistent",
    "consistency_type",
)
#: The fields of a host (``GET /api/hosts``) the simulator serves: its OmniStack cluster by id
#: only (HPE's schema has no cluster name on a host).
HOST_FIELDS: Final = (
    "id",
    "name",
    "state",
    "omnistack_cluster_id",
    "compute_cluster_name",
    "policy_enabled",
)
#: The flat object of ``GET /api/policies/policy_schedule_report`` (REST API 1.11 and later).
SCHEDULE_REPORT_FIELDS: Final = (
    "daily_backup_rate",
    "daily_backup_rate_limit",
    "backup_rate_level",
    "projected_retained_backups",
    "retained_backups_limit",
    "projected_retained_backups_level",
)

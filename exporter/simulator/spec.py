"""What federation to generate (:class:`FederationSpec`) and the VMs planted in it.

The first VMs of a federation play roles, named by this module's constants; each live one has
the protection status a correct exporter must find for it (:data:`ROLE_STATUSES`). A status is
the first that applies of: ``not_scheduled`` (its policy has no rules, or policy backups are
disabled on its host), ``new`` (no PROTECTED backup yet, created less than its expected
interval + 1 h ago), ``never_backed_up``, ``overdue`` (for some destination of its policy, the
newest PROTECTED backup there is older than 1.5 x the expected interval + 1 h), ``last_failed``
(its newest backup FAILED), ``app_inconsistent`` (at a destination where a rule asks for
application-consistent backups, the newest VSS or DEFAULT one there is older than 1.5 x those
rules' interval + 1 h), ``ok``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: The protection statuses, in the order they are judged.
PROTECTION_STATUSES: Final = (
    "not_scheduled",
    "new",
    "never_backed_up",
    "overdue",
    "last_failed",
    "app_inconsistent",
    "ok",
)

#: ALIVE, daily policy that stopped: its newest PROTECTED backup is 3 to 4 days old. overdue.
STALE_VM: Final = "stale-vm-01"
#: ALIVE, recent hourly backups, every one FAILED (no PROTECTED backup at all). never_backed_up.
FAILING_VM: Final = "failing-vm-01"
#: virtual_machine_state REMOVED; its newest backup is about 5 days old.
REMOVED_VM: Final = "removed-vm-01"
#: virtual_machine_state DELETED; its newest backup is about 10 days old.
DELETED_VM: Final = "deleted-vm-01"
#: Two ALIVE, fresh VMs with different ids (on different clusters) share this name. ok.
SHARED_NAME_VM: Final = "shared-name-vm"
#: Fresh VMs with non-ASCII names. ok.
NON_ASCII_VMS: Final = ("Dateiserver-Zürich", "東京-web-01")
#: A fresh VM whose name holds a double quote and a backslash. ok.
QUOTE_BACKSLASH_VM: Final = 'quote"back\\slash-vm'
#: Its policy sends every backup to the external store EXTERNAL_STORE_NAME, hourly
#: (omnistack_cluster_id and omnistack_cluster_name are ""). ok.
EXTERNAL_STORE_VM: Final = "external-store-vm-01"
EXTERNAL_STORE_NAME: Final = "StoreOnce-Boston"
#: The store regular VMs' weekly rules (and the month-end rule) send backups to.
CLOUD_STORE_NAME: Final = "StoreOnce-Cloud"
#: Fresh hourly VM: newest backup PROTECTED, the next ten take the ten other states in turn. ok;
#: its recovery window is short (one restore point where its policy keeps about ten).
ALL_STATES_VM: Final = "all-states-vm-01"
#: virtual_machine_type TEMPLATE, daily backups, consistency_type NOT_APPLICABLE. ok.
TEMPLATE_VM: Final = "template-win2022"
#: A daily policy with rules, created 5 days ago, no backup at all. never_backed_up.
NEVER_BACKED_UP_VM: Final = "never-backed-up-vm-01"
#: On its datastore's default policy, which has no rules; no backup. not_scheduled.
NO_RULES_VM: Final = "no-rules-policy-vm-01"
#: Hourly policy, but on a host whose policy backups are suspended (policy_enabled false);
#: its backups stopped 2 days ago. not_scheduled.
POLICY_DISABLED_VM: Final = "host-policy-disabled-vm-01"
#: Hourly local backups, fresh; its daily copies to another cluster (DR) stopped 4 days ago.
#: overdue (for the DR cluster).
DR_STOPPED_VM: Final = "dr-copies-stopped-vm-01"
#: Hourly; its newest backup FAILED, the one before is PROTECTED and an hour older. last_failed.
LAST_FAILED_VM: Final = "last-backup-failed-vm-01"
#: Created 10 minutes ago on an hourly policy; no backup yet. new.
NEW_VM: Final = "new-vm-01"
#: Hourly from 08:00 to 18:00 (local), Monday to Friday. ok.
BUSINESS_HOURS_VM: Final = "business-hours-vm-01"
#: Nightly at 22:00 (local) on Monday, Wednesday and Friday. ok.
WEEKDAYS_VM: Final = "mon-wed-fri-vm-01"
#: Daily local, and on the 1st and the 15th of each month to another cluster. ok.
MONTH_DAYS_VM: Final = "month-days-vm-01"
#: Daily local, and on the last day of each month to StoreOnce-Cloud. ok.
MONTH_END_VM: Final = "month-end-vm-01"
#: Hourly crash-consistent local backups keep coming; its daily rule to another cluster asks
#: for application-consistent (VSS) backups, and VSS fails every night there: each of those
#: backups is PROTECTED with consistency_type FAILEDVSS (like HPE's real sample).
#: app_aware_vm_status INVALID_CREDS. app_inconsistent.
VSS_FAILING_VM: Final = "vss-failing-vm-01"
#: Daily local, kept 30 days and at most 30 backups (a recovery window of 30 days); only its
#: newest 5 remain (trimmed by hand). ok, and its recovery window is short.
TRIMMED_VM: Final = "trimmed-vm-01"
#: Days of backups TRIMMED_VM keeps, of the 30 its policy promises.
TRIMMED_VM_KEPT: Final = 5

# (name, role, cluster index, protection status or None when not ALIVE). The order is the
# order in which roles are dropped when a spec has fewer VMs than roles.
ROLES: Final = (
    (STALE_VM, "stale", 0, "overdue"),
    (FAILING_VM, "failing", 1, "never_backed_up"),
    (REMOVED_VM, "removed", 0, None),
    (DELETED_VM, "deleted", 1, None),
    (SHARED_NAME_VM, "fresh", 0, "ok"),
    (SHARED_NAME_VM, "fresh", 1, "ok"),
    (NON_ASCII_VMS[0], "fresh", 1, "ok"),
    (NON_ASCII_VMS[1], "fresh", 0, "ok"),
    (QUOTE_BACKSLASH_VM, "fresh", 0, "ok"),
    (EXTERNAL_STORE_VM, "external", 0, "ok"),
    (ALL_STATES_VM, "all-states", 0, "ok"),
    (TEMPLATE_VM, "template", 2, "ok"),
    (NEVER_BACKED_UP_VM, "never-backed-up", 1, "never_backed_up"),
    (NO_RULES_VM, "no-rules", 0, "not_scheduled"),
    (POLICY_DISABLED_VM, "host-disabled", 0, "not_scheduled"),
    (DR_STOPPED_VM, "dr-stopped", 0, "overdue"),
    (LAST_FAILED_VM, "last-failed", 1, "last_failed"),
    (NEW_VM, "new", 2, "new"),
    (BUSINESS_HOURS_VM, "business-hours", 0, "ok"),
    (WEEKDAYS_VM, "weekdays", 1, "ok"),
    (MONTH_DAYS_VM, "month-days", 1, "ok"),
    (MONTH_END_VM, "month-end", 2, "ok"),
    (VSS_FAILING_VM, "vss-failing", 0, "app_inconsistent"),
    (TRIMMED_VM, "trimmed", 1, "ok"),
)
#: Planted VM name -> the protection status an exporter must find (live VMs only).
ROLE_STATUSES: Final = {name: status for name, _, _, status in ROLES if status is not None}
#: Roles that have no backup at all.
BACKUPLESS_ROLES: Final = frozenset({"never-backed-up", "no-rules", "new"})


@dataclass(frozen=True)
class FederationSpec:
    """What federation to generate; the same spec and ``now`` always give the same federation.

    ``clusters`` OmniStack clusters are named "Boston DC", "Zürich-Ost", "London DR" (Hyper-V),
    "Singapore Edge", "São Paulo Lab", then "Cluster 06"... The first VMs play the roles named
    by this module's constants (STALE_VM, FAILING_VM, ...; see ROLES), the others are regular
    VMs named like "web-0012" on hourly, 4-hourly or daily local policies, some with daily
    copies to another cluster (DR) and weekly copies to StoreOnce-Cloud. Every regular live VM
    is protected as its policy says (status ``ok``), unless it has no backup at all (a
    ``total_backups`` smaller than the VMs: ``never_backed_up``).
    """

    seed: int = 1
    clusters: int = 3
    vms: int = 40
    #: Backups of each VM that has any (the roles that have none keep none).
    backups_per_vm: int = 12
    #: If set, exactly this many backups, spread evenly over the VMs that have backups.
    total_backups: int | None = None
    #: Whether the first VMs play the named roles (benchmarks may want only regular VMs).
    roles: bool = True
    #: Share of regular VMs whose policy also sends weekly backups to an external store.
    external_store_share: float = 0.1
    #: Whether the federation has external stores at all (SimpliVity 4.0, REST API 1.14, and
    #: later). Without, the roles that use one (EXTERNAL_STORE_VM, MONTH_END_VM...) back up
    #: to their own cluster instead.
    external_stores: bool = True
    #: Share of regular VMs that were removed from the hypervisor (state REMOVED).
    removed_vm_share: float = 0.05
    #: Share of a regular VM's older backups that are MANUAL (name "<vm>-backup-<time>", no expiry).
    manual_share: float = 0.05
    #: Share of a regular VM's older backups that FAILED (the newest per destination never does).
    failed_share: float = 0.02
    #: Share of regular VMs whose policy also copies backups daily to another cluster (DR;
    #: ``sent`` > 0 on those copies).
    replicated_share: float = 0.3
    #: Live regular VMs' backups expire as they are replaced: each of a VM's backups by a rule
    #: expires as many of the rule's intervals after its time as the VM holds backups by that
    #: rule (as under a retention that keeps what it holds; the policy's retention says
    #: otherwise, as after set_retention), so that a living federation (churn) loses about as
    #: many backups as it takes, from its first hour. Off: they expire after the rule's
    #: retention, days to months away.
    steady: bool = False
    #: The schedule report's limits (the federation's, not published by HPE).
    daily_backup_rate_limit: int = 50_000
    retained_backups_limit: int = 1_000_000

    def __post_init__(self) -> None:
        problems = []
        if self.clusters < 1:
            problems.append("clusters must be at least 1")
        if self.vms < 1:
            problems.append("vms must be at least 1")
        if self.backups_per_vm < 0:
            problems.append("backups_per_vm must not be negative")
        if self.total_backups is not None and self.total_backups < 0:
            problems.append("total_backups must not be negative")
        for name in (
            "external_store_share",
            "removed_vm_share",
            "manual_share",
            "failed_share",
            "replicated_share",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be between 0 and 1")
        for name in ("daily_backup_rate_limit", "retained_backups_limit"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if problems:
            raise ValueError("invalid FederationSpec: " + "; ".join(problems))

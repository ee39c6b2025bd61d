"""The paged collections the simulator serves: one entry each, in :data:`COLLECTIONS`.

An entry is what differs from one collection to the next: its path, its envelope key, how its
query reads beyond the common rules, and the generator of its records. What they share comes
from elsewhere: the fields each REST API version documents from :mod:`exporter.restapi`
(HPE's table), paging, ``fields=``, sorting, filters, strict mode and the faults from
:mod:`exporter.simulator.listing`, the route and the records' life cycle from
:mod:`exporter.simulator.controller`. The package's docstring says how to add one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from exporter.restapi import (
    BACKUPS,
    CLUSTERS,
    HOSTS,
    POLICIES,
    RULES,
    VIRTUAL_MACHINES,
    Version,
    documented,
)
from exporter.simulator.inventory import (
    Inventory,
    cluster_record,
    host_record,
    max_backups,
    policy_record,
    vm_record,
)
from exporter.simulator.store import QueryRules
from exporter.simulator.values import Times

Records = list[dict[str, object]]


@dataclass(frozen=True)
class Paged:
    """One paged collection of the API (``GET <path>``: ``{"offset", "count", "limit", "<key>"}``).

    Its items have the fields :data:`exporter.restapi.FIELDS` documents for ``path``, each from
    the REST API version it appeared in; a query may sort and filter by any of them, and by any
    field its records hold (:mod:`exporter.simulator.store`).
    """

    path: str
    #: The envelope's key of the items, and the keyword of
    #: :meth:`~exporter.simulator.controller.SimulatedController.set_inventory`.
    key: str
    #: Its records in a generated federation, as the newest REST API version lists them (a
    #: controller of an older one leaves out what that one lacks). None: the backups, which
    #: the federation generates itself (they decide the protection statuses).
    generate: Callable[[Inventory], Records] | None
    #: Default filters, filters taking a list, ``created_after``/``created_before``.
    query: QueryRules = field(default_factory=QueryRules)
    #: Fields holding a list of another resource's items (its name in :mod:`exporter.restapi`),
    #: served with the fields of the controller's version only.
    nested: tuple[tuple[str, str], ...] = ()
    #: Whether Faults' churn applies (backups come and go; the inventory does not).
    churns: bool = False

    def as_served(self, records: Iterable[Mapping[str, object]], version: Version) -> Records:
        """The records as a controller of ``version`` keeps them: nested items have only the
        fields it documents (the listings' own fields are chosen per request)."""
        nested = dict(self.nested)
        return [
            {k: _documented(v, nested[k], version) if k in nested else v for k, v in r.items()}
            for r in records
        ]


def _documented(items: object, resource: str, version: Version) -> object:
    if not isinstance(items, list):
        return items
    return [
        {k: v for k, v in item.items() if documented(resource, k, version)}
        if isinstance(item, dict)
        else item
        for item in items
    ]


def _virtual_machines(inventory: Inventory) -> Records:
    times = Times()
    return [vm_record(vm, times) for vm in inventory.vms]


def _policies(inventory: Inventory) -> Records:
    kept = max_backups(inventory)
    return [policy_record(policy, kept) for policy in inventory.policies]


#: The backups, generated with the federation as typed rows (:data:`.store.GENERATED`).
BACKUP_LISTING: Final = Paged(BACKUPS, "backups", None, QueryRules(dated=True), churns=True)
#: Every paged collection: a route each, from the REST API version that has it
#: (:func:`exporter.restapi.has_resource`).
COLLECTIONS: Final = (
    BACKUP_LISTING,
    Paged(
        VIRTUAL_MACHINES,
        "virtual_machines",
        _virtual_machines,
        # HPE: "Default: ALIVE"; state takes a comma-separated list on every controller.
        QueryRules(defaults=(("state", "ALIVE"),), lists=frozenset({"state"})),
    ),
    Paged(
        POLICIES,
        "policies",
        _policies,
        nested=(("rules", RULES),),
    ),
    Paged(HOSTS, "hosts", lambda inventory: [host_record(h) for h in inventory.hosts]),
    Paged(
        CLUSTERS,
        "omnistack_clusters",
        lambda inventory: [cluster_record(c, inventory.hosts) for c in inventory.clusters],
    ),
)
#: The inventory's entries, by envelope key.
INVENTORY: Final = {paged.key: paged for paged in COLLECTIONS if paged.generate is not None}

"""A simulated HPE SimpliVity controller: a real HTTP(S) server on 127.0.0.1.

It behaves as ``SIMPLIVITY_API.md`` describes, so that ``--demo``, the client tests, the fault
tests and the benchmarks all talk to the exporter's real client over real sockets::

    with SimulatedController(FederationSpec(vms=40)) as controller:
        session = requests.Session()
        token = session.post(
            controller.url + "/api/oauth/token",
            auth=("simplivity", ""),
            data={"grant_type": "password", "username": controller.username,
                  "password": controller.password},
        ).json()["access_token"]
        page = session.get(controller.url + "/api/backups",
                           params={"limit": 3000, "fields": "id,state,created_at"},
                           headers={"Authorization": f"Bearer {token}"}).json()
        # {"offset": 0, "count": 485, "limit": 3000, "backups": [...]}

Endpoints: ``GET /api/version`` (no login), ``POST /api/oauth/token`` (HTTP Basic
``simplivity:`` plus a password grant), and with a Bearer token the paged collections of
:data:`~exporter.simulator.catalog.COLLECTIONS`: ``GET /api/backups``,
``/api/virtual_machines``, ``/api/policies``, ``/api/hosts``, ``/api/omnistack_clusters``
(offset/limit/count paging, ``fields``, ``sort``/``order``, single-value filters and the
comma-filter defect of an OVC; VMs' ``state`` defaults to ALIVE and takes a list) and
``GET /api/policies/policy_schedule_report`` (REST API 1.11 and later). Everything else
answers 404 (or 405 for a wrong method) with the documented error body.

Adding a paged collection (``/api/datastores``, say) is an entry in one table and a generator:

1. HPE's fields for it in :mod:`exporter.restapi` (its path, its field names, the REST API
   version of each younger one), if that table, shared with the exporter, lacks them;
2. its generator: a function of the planned
   :class:`~exporter.simulator.inventory.Inventory` that returns its records as the newest
   version lists them, beside ``host_record`` and the others in
   :mod:`~exporter.simulator.inventory`;
3. its entry in :data:`exporter.simulator.catalog.COLLECTIONS`::

       Paged(DATASTORES, "datastores", lambda inventory: [datastore_record(d) for d in ...]),

   with ``QueryRules(defaults=..., lists=..., dated=True)`` if its query has default filters,
   filters taking a list, or ``created_after``/``created_before``, and ``nested=`` for fields
   holding another resource's items (a policy's ``rules``).

The rest follows from the table: the route (from the version that has the resource,
``restapi.RESOURCE_SINCE``), paging with the controller's limits, ``fields=``, sorting and
filtering by any field HPE documents, strict mode's 400s (or ``strict=False``, ``--lenient``),
a version's fields only, the faults aimed at its path (``faults.paths``), the stats per path,
``set_inventory(datastores=[...])`` and ``records("/api/datastores")``. The tests run over
every entry: ``tests/test_simulator.py`` the common rules, ``tests/test_contract.py`` HPE's
path, envelope key and definitions for every REST API version.

The generated federation is consistent across endpoints: the backups' VMs are the inventory's
VMs, each VM's backups follow its policy's rules (local, DR copies to another cluster,
StoreOnce), and the VMs named in :mod:`exporter.simulator.spec` are planted with every
protection status (:attr:`SimulatedController.planted`: name -> status).

The federation can live in time (churn): with ``churn=Churn()`` and a clock the test moves
(:class:`ManualClock`, shared with the exporter), every request first catches up from the last
moment to ``clock()``: backups scheduled by the policies, their states, replication, expiry,
and random events at rates you set (:mod:`exporter.simulator.churn`). While the clock stands
still nothing changes; :meth:`SimulatedController.changes` counts what happened, and
:meth:`SimulatedController.change` makes one kind of change at once (``change("deleted")``)::

    clock = ManualClock()
    with SimulatedController(FederationSpec(vms=200), clock=clock, churn=Churn()) as c:
        ...  # poll
        clock.advance(300)  # the next request sees five minutes of changes

Faults are injected through :attr:`SimulatedController.faults` while the server runs (500s,
hangs, malformed bodies, an answer that never ends, a cost model, backups created and expiring
while a client pages); :attr:`SimulatedController.stats` counts what clients did
(``controller.stats.snapshot()`` reads every counter at once).

The package's rooms: ``vocabulary`` (the API's names and limits), ``values`` (fast texts of
times and ids), ``spec`` (:class:`FederationSpec`, the role VMs and their statuses),
``schedule`` (when a policy rule takes its backups), ``clock`` (:class:`ManualClock`),
``churn`` (:class:`Churn`: how the federation lives) and ``life`` (its catching up),
``inventory`` (clusters, hosts, policies,
VM placement, and the records as the API lists them), ``federation`` (the backups, the oracle
of protection statuses, the schedule report), ``catalog`` (the table of paged collections),
``store`` (sorting, filtering, churn and JSON rendering of records), ``listing`` (serving a
paged collection with its faults), ``faults``, ``stats``, ``server`` (HTTP
plumbing; one :class:`~exporter.simulator.server.Exchange` per request), ``controller`` (life
cycle, tokens and the route table ``SimulatedController.routes``: path -> endpoint) and
``cli`` (the command line).

Run one from the shell (it prints its URL and credentials, and serves until SIGINT/SIGTERM)::

    python -m exporter.simulator --port 8443 --backups 100000 \\
        --request-cost 0.02 --object-cost 0.00002 --max-parallel 8
"""

from exporter.simulator.catalog import COLLECTIONS, Paged
from exporter.simulator.churn import KINDS as CHURN_KINDS
from exporter.simulator.churn import Churn
from exporter.simulator.cli import main
from exporter.simulator.clock import ManualClock
from exporter.simulator.controller import Endpoint, SimulatedController
from exporter.simulator.faults import (
    MALFORMED_KINDS,
    ODD_KINDS,
    ErrorBody,
    Faults,
    Malformed,
    Oddity,
)
from exporter.simulator.federation import Federation, generate_backups, generate_federation
from exporter.simulator.server import Exchange
from exporter.simulator.spec import (
    ALL_STATES_VM,
    BUSINESS_HOURS_VM,
    CLOUD_STORE_NAME,
    DELETED_VM,
    DR_STOPPED_VM,
    EXTERNAL_STORE_NAME,
    EXTERNAL_STORE_VM,
    FAILING_VM,
    LAST_FAILED_VM,
    MONTH_DAYS_VM,
    MONTH_END_VM,
    NEVER_BACKED_UP_VM,
    NEW_VM,
    NO_RULES_VM,
    NON_ASCII_VMS,
    POLICY_DISABLED_VM,
    PROTECTION_STATUSES,
    QUOTE_BACKSLASH_VM,
    REMOVED_VM,
    ROLE_STATUSES,
    SHARED_NAME_VM,
    STALE_VM,
    TEMPLATE_VM,
    WEEKDAYS_VM,
    FederationSpec,
)
from exporter.simulator.stats import Stats, StatsSnapshot
from exporter.simulator.vocabulary import (
    BACKUP_FIELDS,
    BACKUP_STATES,
    CLIENT_ID,
    DEFAULT_LIMIT,
    HOST_FIELDS,
    MAX_LIMIT,
    POLICY_FIELDS,
    REST_API_VERSION,
    RULE_FIELDS,
    SCHEDULE_REPORT_FIELDS,
    SVTFS_VERSION,
    VM_FIELDS,
)

__all__ = [
    "ALL_STATES_VM",
    "BACKUP_FIELDS",
    "BACKUP_STATES",
    "BUSINESS_HOURS_VM",
    "CHURN_KINDS",
    "CLIENT_ID",
    "CLOUD_STORE_NAME",
    "COLLECTIONS",
    "DEFAULT_LIMIT",
    "DELETED_VM",
    "DR_STOPPED_VM",
    "EXTERNAL_STORE_NAME",
    "EXTERNAL_STORE_VM",
    "FAILING_VM",
    "HOST_FIELDS",
    "LAST_FAILED_VM",
    "MALFORMED_KINDS",
    "MAX_LIMIT",
    "MONTH_DAYS_VM",
    "MONTH_END_VM",
    "NEVER_BACKED_UP_VM",
    "NEW_VM",
    "NON_ASCII_VMS",
    "NO_RULES_VM",
    "ODD_KINDS",
    "POLICY_DISABLED_VM",
    "POLICY_FIELDS",
    "PROTECTION_STATUSES",
    "QUOTE_BACKSLASH_VM",
    "REMOVED_VM",
    "REST_API_VERSION",
    "ROLE_STATUSES",
    "RULE_FIELDS",
    "SCHEDULE_REPORT_FIELDS",
    "SHARED_NAME_VM",
    "STALE_VM",
    "SVTFS_VERSION",
    "TEMPLATE_VM",
    "VM_FIELDS",
    "WEEKDAYS_VM",
    "Churn",
    "Endpoint",
    "ErrorBody",
    "Exchange",
    "Faults",
    "Federation",
    "FederationSpec",
    "Malformed",
    "ManualClock",
    "Oddity",
    "Paged",
    "SimulatedController",
    "Stats",
    "StatsSnapshot",
    "generate_backups",
    "generate_federation",
    "main",
]

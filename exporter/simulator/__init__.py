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
``simplivity:`` plus a password grant), ``GET /api/backups`` (Bearer token; offset/limit/count
paging, ``fields``, ``sort``/``order``, single-value filters and the comma-filter defect of an
OVC). Everything else answers 404 (or 405 for a wrong method) with the documented error body.

Faults are injected through :attr:`SimulatedController.faults` while the server runs (500s,
hangs, malformed bodies, an answer that never ends, a cost model, backups created and expiring
while a client pages); :attr:`SimulatedController.stats` counts what clients did
(``controller.stats.snapshot()`` reads every counter at once).

The package's rooms: ``vocabulary`` (the API's names and limits), ``values`` (fast texts of
times and ids), ``federation`` (what a :class:`FederationSpec` generates), ``store`` (sorting,
filtering, churn and JSON rendering of the served backups), ``faults``, ``stats``, ``server``
(HTTP plumbing; one :class:`~exporter.simulator.server.Exchange` per request), ``controller``
(life cycle, tokens and the route table ``SimulatedController.routes``: path -> endpoint) and
``cli`` (the command line).

Run one from the shell (it prints its URL and credentials, and serves until SIGINT/SIGTERM)::

    python -m exporter.simulator --port 8443 --backups 100000 \\
        --request-cost 0.02 --object-cost 0.00002 --max-parallel 8
"""

from exporter.simulator.cli import main
from exporter.simulator.controller import Endpoint, SimulatedController
from exporter.simulator.faults import (
    MALFORMED_KINDS,
    ODD_KINDS,
    ErrorBody,
    Faults,
    Malformed,
    Oddity,
)
from exporter.simulator.federation import (
    ALL_STATES_VM,
    DELETED_VM,
    EXTERNAL_STORE_NAME,
    EXTERNAL_STORE_VM,
    FAILING_VM,
    NON_ASCII_VMS,
    QUOTE_BACKSLASH_VM,
    REMOVED_VM,
    SHARED_NAME_VM,
    STALE_VM,
    TEMPLATE_VM,
    FederationSpec,
    generate_backups,
)
from exporter.simulator.server import Exchange
from exporter.simulator.stats import Stats, StatsSnapshot
from exporter.simulator.vocabulary import (
    BACKUP_FIELDS,
    BACKUP_STATES,
    CLIENT_ID,
    CONTENT_TYPE,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    REST_API_VERSION,
    SVTFS_VERSION,
)

__all__ = [
    "ALL_STATES_VM",
    "BACKUP_FIELDS",
    "BACKUP_STATES",
    "CLIENT_ID",
    "CONTENT_TYPE",
    "DEFAULT_LIMIT",
    "DELETED_VM",
    "EXTERNAL_STORE_NAME",
    "EXTERNAL_STORE_VM",
    "FAILING_VM",
    "MALFORMED_KINDS",
    "MAX_LIMIT",
    "NON_ASCII_VMS",
    "ODD_KINDS",
    "QUOTE_BACKSLASH_VM",
    "REMOVED_VM",
    "REST_API_VERSION",
    "SHARED_NAME_VM",
    "STALE_VM",
    "SVTFS_VERSION",
    "TEMPLATE_VM",
    "Endpoint",
    "ErrorBody",
    "Exchange",
    "Faults",
    "FederationSpec",
    "Malformed",
    "Oddity",
    "SimulatedController",
    "Stats",
    "StatsSnapshot",
    "generate_backups",
    "main",
]

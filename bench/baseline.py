"""What the existing tools do, as the baseline: HPE's Python SDK ``Backups.get_all`` style.

A new login for each run, then every page of ``/api/backups`` one after the other, 500
backups per page (the API's default), every field (no ``fields=``), the API's default sort;
every backup is kept as a whole object in one list, and only then counted. Written for this
benchmark from the API's description, with ``requests``; not the SDK's code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import requests

PAGE_SIZE = 500


@dataclass(frozen=True)
class BaselineResult:
    backups: int
    requests: int
    clusters: int
    live_vms: int


def login(session: requests.Session, url: str, username: str, password: str) -> str:
    answer = session.post(
        url + "/api/oauth/token",
        auth=("simplivity", ""),
        data={"grant_type": "password", "username": username, "password": password},
        timeout=60,
    )
    answer.raise_for_status()
    token: str = answer.json()["access_token"]
    return token


def get_all(session: requests.Session, url: str, token: str) -> tuple[list[dict[str, Any]], int]:
    """Every backup, page after page, as the SDK hands them out: one list of whole objects."""
    backups: list[dict[str, Any]] = []
    offset = 0
    pages = 0
    while True:
        answer = session.get(
            url + "/api/backups",
            params={"offset": offset, "limit": PAGE_SIZE},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=60,
        )
        answer.raise_for_status()
        document = answer.json()
        pages += 1
        page = document["backups"]
        backups.extend(page)
        offset += len(page)
        if not page or offset >= document["count"]:
            return backups, pages


def summarise(backups: list[dict[str, Any]], requests_made: int) -> BaselineResult:
    """The numbers the exporter publishes, computed the straightforward way."""
    counts: Counter[tuple[str, str]] = Counter()
    sizes: Counter[tuple[str, str]] = Counter()
    newest_cluster: dict[str, str] = {}
    newest_vm: dict[str, str] = {}
    alive: set[str] = set()
    for backup in backups:
        cluster = backup.get("omnistack_cluster_name") or backup.get("external_store_name") or ""
        key = (cluster, backup["state"])
        counts[key] += 1
        sizes[key] += backup["size"]
        vm_id = backup["virtual_machine_id"]
        if backup["virtual_machine_state"] == "ALIVE":
            alive.add(vm_id)
        if backup["state"] == "PROTECTED":
            created = backup["created_at"]
            if created > newest_cluster.get(cluster, ""):
                newest_cluster[cluster] = created
            if created > newest_vm.get(vm_id, ""):
                newest_vm[vm_id] = created
    return BaselineResult(
        backups=len(backups),
        requests=requests_made,
        clusters=len({cluster for cluster, _ in counts}),
        live_vms=len(alive),
    )


def run(url: str, username: str, password: str) -> BaselineResult:
    with requests.Session() as session:
        token = login(session, url, username, password)
        backups, pages = get_all(session, url, token)
    return summarise(backups, pages + 1)  # and the login

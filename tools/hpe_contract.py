"""Derive tests/data/hpe/contract.json from HPE's Swagger file of REST API 1.25.

    python -m tools.hpe_contract PATH/TO/hpe-omnistack-rest-1.25.swagger.json

The project keeps only the derived table (and this script, to derive it again): the resources
the exporter reads, their documented fields (HPE's definitions, for JSON-schema validation),
the query parameters of their GET path (filters and paging), and the REST API version each
field appeared in where HPE's "Feature and function support by REST API version" page says it
(``SINCE`` below, as the project's API notes quote it). A field without a version is taken to
be as old as the oldest version the exporter supports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "hpe" / "contract.json"

#: resource path -> (the definition of one item, the envelope key; None: a flat object).
RESOURCES = {
    "/backups": ("BackupMO", "backups"),
    "/virtual_machines": ("virtual_machine", "virtual_machines"),
    "/policies": ("policy", "policies"),
    "/hosts": ("host", "hosts"),
    "/omnistack_clusters": ("omnistack_cluster", "omnistack_clusters"),
    "/policies/policy_schedule_report": ("policy_schedule_report", None),
}
#: (definition, field) -> the REST API version it appeared in (HPE's feature table; external
#: stores came with SimpliVity 4.0, REST API 1.14).
SINCE = {
    ("BackupMO", "consistency_type"): "1.3",
    ("BackupMO", "unique_size_bytes"): "1.4",
    ("BackupMO", "sent_completion_time"): "1.8",
    ("BackupMO", "external_store_name"): "1.14",
    ("BackupMO", "backup_store_type"): "1.14",
    ("BackupMO", "associated_cluster"): "1.14",
    ("rule", "external_store_name"): "1.14",
    ("host", "policy_enabled"): "1.4",
    ("host", "omnistack_cluster_id"): "1.9",
    ("virtual_machine", "host_name"): "1.11",
}
#: Resources that appeared after the oldest supported version.
RESOURCE_SINCE = {"/policies/policy_schedule_report": "1.11"}


def derive(swagger: dict[str, Any]) -> dict[str, Any]:
    definitions = swagger["definitions"]
    needed: dict[str, Any] = {}

    def take(name: str) -> None:
        if name in needed:
            return
        needed[name] = definitions[name]
        for ref in _refs(definitions[name]):
            take(ref)

    resources = {}
    for path, (definition, key) in RESOURCES.items():
        take(definition)
        parameters = swagger["paths"][path]["get"].get("parameters", [])
        resources[path] = {
            "definition": definition,
            "key": key,
            "since": RESOURCE_SINCE.get(path, "1.0"),
            "parameters": sorted(p["name"] for p in parameters if p.get("in") == "query"),
        }
    since = {
        name: {
            field: SINCE.get((name, field), "1.0") for field in sorted(body.get("properties", {}))
        }
        for name, body in needed.items()
    }
    return {
        "source": (
            "HPE OmniStack REST API 1.25 Swagger 2.0 reference (info.version 1.25), as copied in "
            "api-evangelist/simplivity openapi/_original/simplivity-omnistack-openapi-original.json"
            " (commit b9f5763); field versions from HPE's 'Feature and function support by REST "
            "API version' page (developer.hpe.com, hpe-simplivity). "
            "Derived by tools/hpe_contract.py."
        ),
        "info_version": swagger["info"]["version"],
        "resources": resources,
        "since": since,
        "definitions": needed,
    }


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            found.append(ref.rsplit("/", 1)[1])
        for value in node.values():
            found.extend(_refs(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_refs(value))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    swagger = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    OUT.write_text(json.dumps(derive(swagger), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

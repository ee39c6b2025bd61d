"""Lint and render a Helm chart with Helm's own Go library, without a cluster.

Runs under Python 3.12 with PyPI ``helm-sdkpy`` (Helm's Go library behind cffi), i.e. in
``.venv-helm``; ``tests/test_helm.py`` drives it through ``batch``, which needs nothing
else. ``lint -f`` and ``template -f`` read YAML values files, so they also need PyYAML.

    .venv-helm/bin/python tools/helm_chart.py lint helm/simplivity-exporter -f ci/x.yaml
    .venv-helm/bin/python tools/helm_chart.py template helm/simplivity-exporter -f my.yaml
    .venv-helm/bin/python tools/helm_chart.py batch < request.json > result.json

``lint`` is Helm's lint. helm-sdkpy's lint takes no values, so a values file is linted
by linting a copy of the chart whose values.yaml is the chart's defaults merged with it
(``batch`` takes those merged values ready-made).

``template`` is a real ``helm install`` (values schema checked, templates rendered,
manifests parsed, NOTES.txt rendered) into a stub Kubernetes API server on 127.0.0.1:
it answers discovery for the kinds the chart uses, accepts every object created and
keeps nothing. The release record stays in memory (HELM_DRIVER=memory). helm-sdkpy has
no ``helm template`` or ``--dry-run``, so this stands in for them.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_KUBE_VERSION = "1.31.0"
_REEXEC_MARK = "HELM_CHART_PY_ENV"
SEVERITIES = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}

# group/version -> (plural, Kind); all namespaced. What the stub API server advertises.
API_RESOURCES: dict[str, list[tuple[str, str]]] = {
    "v1": [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
        ("pods", "Pod"),
    ],
    "apps/v1": [("deployments", "Deployment"), ("statefulsets", "StatefulSet")],
    "networking.k8s.io/v1": [("networkpolicies", "NetworkPolicy")],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "monitoring.coreos.com/v1": [
        ("servicemonitors", "ServiceMonitor"),
        ("prometheusrules", "PrometheusRule"),
    ],
}


def _helm() -> Any:
    # Imported late: the environment variables set in main() must be in place first.
    return importlib.import_module("helm_sdkpy")


def merge_values(base: Any, override: Any) -> Any:
    """Helm's coalescing of a values file over the defaults: maps merge, null deletes."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _KubeStub(BaseHTTPRequestHandler):
    """Just enough of a Kubernetes API server for ``helm install`` to succeed."""

    server: _StubServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the caller reports what matters."""

    def _reply(self, code: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._reply(
            404,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
                "message": f"{self.path} not found",
            },
        )

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/version":
            major, minor, _ = self.server.kube_version.split(".")
            self._reply(
                200,
                {
                    "major": major,
                    "minor": minor,
                    "gitVersion": f"v{self.server.kube_version}",
                    "platform": "linux/amd64",
                },
            )
        elif path == "/api":
            # Plain JSON, not the aggregated discovery document: client-go falls back.
            self._reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif path == "/apis":
            groups = []
            for group_version in API_RESOURCES:
                if "/" in group_version:
                    group, version = group_version.split("/")
                    entry = {"groupVersion": group_version, "version": version}
                    groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
            self._reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        elif path == "/api/v1" or (path.startswith("/apis/") and path.count("/") == 3):
            group_version = "v1" if path == "/api/v1" else path.removeprefix("/apis/")
            if group_version not in API_RESOURCES:
                self._not_found()
                return
            resources = [
                {
                    "name": plural,
                    "singularName": kind.lower(),
                    "namespaced": True,
                    "kind": kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
                for plural, kind in API_RESOURCES[group_version]
            ]
            self._reply(
                200,
                {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources},
            )
        else:
            self._not_found()  # no object exists yet: helm creates each one

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:  # e.g. protobuf: keep the request going, record nothing useful
            body = {"unparsed": len(raw)}
        with self.server.lock:
            self.server.created.append(body)
        self._reply(201, body)

    def do_PUT(self) -> None:
        self._not_found()

    def do_PATCH(self) -> None:
        self._not_found()

    def do_DELETE(self) -> None:
        self._not_found()


class _StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, kube_version: str) -> None:
        super().__init__(("127.0.0.1", 0), _KubeStub)
        self.kube_version = kube_version
        self.lock = threading.Lock()
        self.created: list[dict[str, Any]] = []


@contextmanager
def kube_stub(kube_version: str) -> Iterator[_StubServer]:
    server = _StubServer(kube_version)
    thread = threading.Thread(target=server.serve_forever, name="kube-stub", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _kubeconfig(port: int, namespace: str) -> str:
    # Block-style YAML: helm-sdkpy takes a kubeconfig for YAML text (not a file path) by
    # its look, and JSON does not pass for it.
    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"  - name: stub\n    cluster:\n      server: http://127.0.0.1:{port}\n"
        "users:\n"
        "  - name: stub\n    user:\n      token: stub\n"
        "contexts:\n"
        f"  - name: stub\n    context:\n      cluster: stub\n      user: stub\n"
        f"      namespace: {json.dumps(namespace)}\n"
        "current-context: stub\n"
    )


def render(
    chart: Path,
    values: Mapping[str, Any],
    release: str,
    namespace: str,
    kube_version: str,
) -> dict[str, Any]:
    """``helm install`` into the stub: the manifest, NOTES and objects, or Helm's error."""
    helm = _helm()
    with kube_stub(kube_version) as server:
        config = helm.Configuration(
            namespace=namespace, kubeconfig=_kubeconfig(server.server_address[1], namespace)
        )
        try:
            result = asyncio.run(
                helm.Install(config).run(release, str(chart), values=dict(values), wait=False)
            )
        except helm.HelmError as error:
            return {"manifest": None, "notes": None, "objects": [], "error": str(error)}
        return {
            "manifest": result.get("manifest", ""),
            "notes": (result.get("info") or {}).get("notes", ""),
            "objects": list(server.created),
            "error": None,
        }


def lint(chart: Path, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """Helm's lint of the chart, with ``values`` (complete, defaults included) if given."""
    helm = _helm()
    with tempfile.TemporaryDirectory(prefix="helm-lint-") as tmp:
        target = chart
        if values is not None:
            target = Path(tmp) / chart.name
            shutil.copytree(chart, target)
            (target / "values.yaml").write_text(json.dumps(values, indent=2), encoding="utf-8")
        try:
            result = asyncio.run(helm.Lint(helm.Configuration()).run(str(target)))
        except helm.HelmError as error:
            return {"ok": False, "messages": [], "error": str(error)}
    messages = [
        {"severity": SEVERITIES.get(int(m.get("Severity", 0)), "UNKNOWN"), "path": m.get("Path")}
        for m in result.get("Messages") or []
    ]
    ok = not result.get("Errors") and all(m["severity"] == "INFO" for m in messages)
    return {"ok": ok, "messages": messages, "error": None}


def batch(request: Mapping[str, Any]) -> dict[str, Any]:
    """Every lint and render case of a test run, in one process (Helm loads once)."""
    chart = Path(request["chart"])
    release = request.get("release", "sve")
    namespace = request.get("namespace", "monitoring")
    kube_version = request.get("kube_version", DEFAULT_KUBE_VERSION)
    return {
        "helm_version": _helm().get_version(),
        "lint": {name: lint(chart, values) for name, values in request.get("lint", {}).items()},
        "render": {
            name: render(chart, values or {}, release, namespace, kube_version)
            for name, values in request.get("render", {}).items()
        },
    }


def _load_yaml(path: Path) -> Any:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        sys.exit(f"reading {path} needs PyYAML: .venv-helm/bin/pip install PyYAML")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _load_values(paths: list[str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        merged = merge_values(merged, _load_yaml(Path(path)) or {})
    return merged


def _private_helm_home() -> None:
    """Keep Helm's caches and release records away from the user's own.

    Go reads the environment the process started with, not later changes to it, so the
    variables are set by running this script again with them.
    """
    if os.environ.get(_REEXEC_MARK) == "1":
        return
    home = Path(tempfile.mkdtemp(prefix="helm-home-"))
    env = dict(os.environ, HELM_DRIVER="memory", **{_REEXEC_MARK: "1"})
    for name in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[name] = str(home / name.lower())
    os.execve(sys.executable, [sys.executable, *sys.argv], env)  # noqa: S606


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("lint", "template"):
        one = sub.add_parser(command)
        one.add_argument("chart", type=Path)
        one.add_argument("-f", "--values", action="append", default=[], metavar="FILE")
        if command == "template":
            one.add_argument("--name", default="sve")
            one.add_argument("--namespace", default="monitoring")
            one.add_argument("--kube-version", default=DEFAULT_KUBE_VERSION)
    sub.add_parser("batch", help="JSON request on stdin, JSON result on stdout")
    args = parser.parse_args(argv)
    _private_helm_home()

    if args.command == "batch":
        json.dump(batch(json.load(sys.stdin)), sys.stdout)
        return 0
    values = _load_values(args.values)
    if args.command == "lint":
        complete = None
        if args.values:
            complete = merge_values(_load_yaml(args.chart / "values.yaml") or {}, values)
        result = lint(args.chart, complete)
        for message in result["messages"]:
            print(f"[{message['severity']}] {message['path']}")
        if not result["ok"]:
            # helm-sdkpy loses lint messages' text; an install into the stub says why.
            why = render(args.chart, values, "lint", "default", DEFAULT_KUBE_VERSION)["error"]
            print(f"lint failed: {result['error'] or why or 'see the messages above'}")
            return 1
        print("lint: ok")
        return 0
    rendered = render(args.chart, values, args.name, args.namespace, args.kube_version)
    if rendered["error"]:
        print(rendered["error"], file=sys.stderr)
        return 1
    print(rendered["manifest"], end="")
    if rendered["notes"]:
        print(
            "---\n# NOTES.txt\n" + "\n".join(f"# {line}" for line in rendered["notes"].splitlines())
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

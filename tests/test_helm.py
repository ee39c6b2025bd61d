"""The Helm chart: Helm's own lint and render, values schema, Kubernetes schemas, security.

Helm runs in ``.venv-helm`` (Python 3.12 with PyPI ``helm-sdkpy``, Helm's Go library)
through ``tools/helm_chart.py``: one ``batch`` call lints and renders every case below,
the renders being real ``helm install`` runs into a stub API server on 127.0.0.1. The
rendered objects are then checked against the Kubernetes JSON schemas (PyPI
``kubernetes-validate``) for the oldest and newest Kubernetes the chart supports.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate
import pytest
import yaml

import exporter
from tests.promtool import promtool
from tools import monitoring as monitoring_tool
from tools.helm_chart import merge_values

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "simplivity-exporter"
HELM_PYTHON = ROOT / ".venv-helm" / "bin" / "python"
HELM_TOOL = ROOT / "tools" / "helm_chart.py"
HELM_VENV_SETUP = (
    "python3.12 -m venv .venv-helm && .venv-helm/bin/pip install helm-sdkpy==0.1.32 PyYAML==6.0.4"
)
RELEASE = "sve"
NAMESPACE = "monitoring"
RENDER_KUBE_VERSION = "1.31.0"
# Chart.yaml's kubeVersion floor, and the newest schemas kubernetes-validate has.
VALIDATE_KUBE_VERSIONS = ("1.25.0", "1.37.0")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
FULLNAME = f"{RELEASE}-simplivity-exporter"

CI_FILES = sorted((CHART / "ci").glob("*.yaml"))
CI_CASES = {
    f"ci/{path.name}": yaml.safe_load(path.read_text(encoding="utf-8")) for path in CI_FILES
}
DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
SCHEMA: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))

# Passwords that must never show up in clear anywhere in a rendered manifest.
SECRET_PASSWORDS = ("s3cr3t-Bost0n", "pa$$ 'quoted' \"too\"", "Zürich-Passwört-42")
SECRETS_CASE: dict[str, Any] = {
    "controllers": [
        {
            "name": "boston",
            "url": "https://10.0.0.10",
            "username": "administrator@vsphere.local",
            "password": SECRET_PASSWORDS[0],
        },
        {
            "name": "chicago:mva",
            "passwordKey": "chicago",
            "url": "https://mva.chicago.example.com",
            "username": "svc@example.com",
            "password": SECRET_PASSWORDS[1],
            "tls": {"server_name": "mva.chicago.example.com"},
        },
        {
            "name": "zurich",
            "url": "http://127.0.0.1:8443",
            "username": "svc",
            "password": SECRET_PASSWORDS[2],
        },
    ]
}


def with_values(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    merged.update(changes)
    return merged


# Values that values.schema.json must refuse (and so must Helm: lint and install).
BAD_VALUES: dict[str, dict[str, Any]] = {
    "misspelt key": {"sharding": {"shard": 3}},
    "zero shards": {"sharding": {"shards": 0}},
    "shards as a string": {"sharding": {"shards": "3"}},
    "controller without url": {
        "controllers": [{"name": "boston", "username": "admin", "password": "x"}]
    },
    "url without scheme": {
        "controllers": [
            {"name": "boston", "url": "10.0.0.10", "username": "admin", "password": "x"}
        ]
    },
    "passwords smuggled into config": {
        "config": {"controllers": [{"name": "boston", "password": "in-a-configmap"}]}
    },
    "unknown log level": {"log": {"level": "verbose"}},
    "root allowed": {"podSecurityContext": {"runAsNonRoot": False}},
    "privilege escalation": {"securityContext": {"allowPrivilegeEscalation": True}},
    "writable root filesystem": {"securityContext": {"readOnlyRootFilesystem": False}},
    "capability added": {"securityContext": {"capabilities": {"add": ["NET_RAW"]}}},
    "seccomp profile removed": {"podSecurityContext": {"seccompProfile": None}},
    "threshold as text": {
        "prometheusRule": {"alerts": {"SimplivityClusterBackupTooOld": {"threshold": "26h"}}}
    },
    "bad duration": {"serviceMonitor": {"enabled": True, "interval": "1 minute"}},
    "page size over the API maximum": {"config": {"poll": {"page_size": 5000}}},
    "scrape password in clear": {
        "serviceMonitor": {
            "basicAuth": {"username": {"name": "s", "key": "u"}, "password": "hunter2"}
        }
    },
    "scrape user without password": {
        "serviceMonitor": {"basicAuth": {"username": {"name": "s", "key": "u"}}}
    },
    "CA as a file path": {"serviceMonitor": {"tlsConfig": {"caFile": "/etc/ca.pem"}}},
    "CA from two places": {
        "serviceMonitor": {
            "tlsConfig": {
                "ca": {
                    "secret": {"name": "a", "key": "ca"},
                    "configMap": {"name": "b", "key": "ca"},
                }
            }
        }
    },
    "client certificate without its key": {
        "serviceMonitor": {"tlsConfig": {"cert": {"secret": {"name": "c", "key": "tls.crt"}}}}
    },
    "insecureSkipVerify as text": {"serviceMonitor": {"tlsConfig": {"insecureSkipVerify": "yes"}}},
    "unknown scrape scheme": {"serviceMonitor": {"scheme": "HTTPS"}},
    "overdue factor below 1": {"config": {"protection": {"overdue_factor": 0.5}}},
    "negative grace": {"config": {"protection": {"grace_seconds": -60}}},
    "runbook address not absolute": {"runbookBaseURL": "README.md"},
}

# Values that pass the schema but that the templates refuse, with Helm's message.
REFUSED_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "controller without password": (
        {"controllers": [{"name": "boston", "url": "https://a", "username": "u"}]},
        'controllers[0] (boston): set password, or existingSecret with a key "boston"',
    ),
    "password and existingSecret": (
        with_values(SECRETS_CASE, existingSecret="mine"),
        'controllers[0] (boston): remove password, existingSecret "mine" provides it',
    ),
    "name that is no Secret key": (
        {
            "controllers": [
                {"name": "a:b", "url": "https://a", "username": "u", "password": "p"},
            ]
        },
        '"a:b" is not a valid Secret key',
    ),
    "two controllers, one key": (
        {
            "controllers": [
                {"name": "a", "url": "https://a", "username": "u", "password": "p"},
                {"name": "b", "passwordKey": "a", "url": "https://b", "username": "u"},
            ]
        },
        'controllers[1] (b): Secret key "a" is already used by controllers[0]',
    ),
    "existingSecret without controllers": (
        {"existingSecret": "mine", "demo": True},
        "existingSecret is set but controllers is empty",
    ),
    "TLS settings on a plain-HTTP scrape": (
        {
            "demo": True,
            "serviceMonitor": {"enabled": True, "tlsConfig": {"serverName": "exporter.example"}},
        },
        "serviceMonitor.tlsConfig is set but serviceMonitor.scheme is not https",
    ),
    "unknown alert": (
        {
            "demo": True,
            "prometheusRule": {"enabled": True, "alerts": {"SimplivityTypo": {"for": "1h"}}},
        },
        "prometheusRule.alerts.SimplivityTypo: no such alert in files/alerts.yml",
    ),
    # Issue 17: "install now, configure later" must not put made-up data and its alerts into
    # production monitoring.
    "no controller and no demo": (
        {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "no controller configured: list your controllers under `controllers`",
    ),
    "demo and controllers": (
        with_values(SECRETS_CASE, demo=True),
        "demo: true and controllers are both set",
    ),
}

#: The controllers' CA bundle, as a user pastes it into caBundle.
CA_BUNDLE = "-----BEGIN CERTIFICATE-----\nMIIBexample\n-----END CERTIFICATE-----\n"

RENDER_CASES: dict[str, dict[str, Any]] = {
    # values.yaml alone has no controller: the chart refuses it (below); demo: true is the
    # explicit first look.
    "default": {"demo": True},
    **CI_CASES,
    "secrets": SECRETS_CASE,
    "secrets, interval changed": with_values(
        SECRETS_CASE, config={"poll": {"interval_seconds": 600}}
    ),
    "rules as shipped": {"demo": True, "prometheusRule": {"enabled": True}},
    "dashboard as shipped": {"demo": True, "grafanaDashboard": {"enabled": True}},
    "CA bundle": with_values(SECRETS_CASE, caBundle=CA_BUNDLE),
    # config.protection reaches the exporter; rules and dashboard read it from its series.
    "protection settings": with_values(
        SECRETS_CASE,
        config={"protection": {"overdue_factor": 2, "grace_seconds": 5400}},
        prometheusRule={"enabled": True},
        grafanaDashboard={"enabled": True},
    ),
    "scrape over TLS, certificate not checked": {
        "demo": True,
        "serviceMonitor": {
            "enabled": True,
            "scheme": "https",
            "tlsConfig": {"insecureSkipVerify": True},
        },
    },
    **{f"bad: {name}": values for name, values in BAD_VALUES.items()},
    **{f"refused: {name}": values for name, (values, _) in REFUSED_VALUES.items()},
}
LINT_CASES: dict[str, dict[str, Any] | None] = {
    "default": {"demo": True},
    **CI_CASES,
    **{f"bad: {name}": values for name, values in BAD_VALUES.items()},
}
GOOD_RENDERS = [name for name in RENDER_CASES if not name.startswith(("bad:", "refused:"))]


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def helm() -> dict[str, Any]:
    """Lint and render every case with the real Helm, once for the module."""
    if not HELM_PYTHON.exists():
        pytest.fail(
            f"{HELM_PYTHON} is missing: the Helm tests need Python 3.12 with helm-sdkpy. "
            f"Create it from the repository root with:\n  {HELM_VENV_SETUP}",
            pytrace=False,
        )
    request = {
        "chart": str(CHART),
        "release": RELEASE,
        "namespace": NAMESPACE,
        "kube_version": RENDER_KUBE_VERSION,
        # Lint takes complete values (a values.yaml); install merges them itself, as -f does.
        "lint": {
            name: None if values is None else merge_values(DEFAULTS, values)
            for name, values in LINT_CASES.items()
        },
        "render": RENDER_CASES,
    }
    done = subprocess.run(
        [str(HELM_PYTHON), str(HELM_TOOL), "batch"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{HELM_TOOL.name} batch failed:\n{done.stderr}", pytrace=False)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def rendered(helm: Mapping[str, Any], case: str) -> list[dict[str, Any]]:
    outcome = helm["render"][case]
    assert outcome["error"] is None, f"{case}: helm install failed: {outcome['error']}"
    docs = [doc for doc in yaml.safe_load_all(outcome["manifest"]) if doc]
    assert docs, case
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
    assert len(found) == 1, [doc["kind"] for doc in found]
    return found[0]


def containers(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    spec = workload(docs)["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def exporter_config_map(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"] == FULLNAME]
    return found


def values_of(case: str) -> dict[str, Any]:
    merged: dict[str, Any] = merge_values(DEFAULTS, RENDER_CASES[case])
    return merged


# ------------------------------------------------------------------- one source of truth


@pytest.mark.parametrize("name", ["alerts.yml", "dashboard.json"])
def test_chart_copies_are_identical_to_the_repository_files(name: str) -> None:
    source = ROOT / "monitoring" / name
    copy_ = CHART / "files" / name
    assert source.exists(), f"{source} is missing"
    assert copy_.read_bytes() == source.read_bytes(), (
        f"{copy_.relative_to(ROOT)} differs from {source.relative_to(ROOT)}; refresh it with:\n"
        "  python3 tools/monitoring.py sync"
    )


def test_chart_version_follows_the_exporter() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == exporter.__version__  # pyproject reads __version__ itself


# --------------------------------------------------------------------------- the schema


def test_the_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("case", ["default", *CI_CASES])
def test_values_files_match_the_schema(case: str) -> None:
    values = DEFAULTS if case == "default" else merge_values(DEFAULTS, CI_CASES[case])
    jsonschema.Draft7Validator(SCHEMA).validate(values)


@pytest.mark.parametrize("case", BAD_VALUES)
def test_the_schema_rejects_bad_values(case: str) -> None:
    errors = list(
        jsonschema.Draft7Validator(SCHEMA).iter_errors(merge_values(DEFAULTS, BAD_VALUES[case]))
    )
    assert errors, f"{case}: accepted"


@pytest.mark.parametrize("case", BAD_VALUES)
def test_helm_rejects_bad_values_at_install_time(helm: dict[str, Any], case: str) -> None:
    error = helm["render"][f"bad: {case}"]["error"]
    assert error is not None, f"{case}: helm install accepted it"
    assert "schema" in error.lower(), error


@pytest.mark.parametrize("case", BAD_VALUES)
def test_helm_lint_rejects_bad_values(helm: dict[str, Any], case: str) -> None:
    assert helm["lint"][f"bad: {case}"]["ok"] is False


@pytest.mark.parametrize("case", REFUSED_VALUES)
def test_templates_refuse_inconsistent_values(helm: dict[str, Any], case: str) -> None:
    error = helm["render"][f"refused: {case}"]["error"]
    assert error is not None, f"{case}: helm install accepted it"
    assert REFUSED_VALUES[case][1] in error


def test_the_ca_bundle_reaches_every_controller_without_its_own(helm: dict[str, Any]) -> None:
    """caBundle lands in the exporter's ConfigMap, mounted with the config, and is the ca_file
    of every controller that names none; a new bundle rolls the pods."""
    docs = rendered(helm, "CA bundle")
    data = exporter_config_map(docs)["data"]
    assert data["controllers-ca.pem"] == CA_BUNDLE
    (container,) = containers(docs)
    config_dir = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    config = yaml.safe_load(data["config.yaml"])
    assert [c.get("tls", {}).get("ca_file") for c in config["controllers"]] == [
        f"{config_dir}/controllers-ca.pem"
    ] * len(SECRETS_CASE["controllers"])
    # The other TLS settings of a controller stay as they are.
    assert config["controllers"][1]["tls"]["server_name"] == "mva.chicago.example.com"
    annotations = workload(docs)["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/ca-bundle"]) == 64
    assert "controllers-ca.pem" not in exporter_config_map(rendered(helm, "secrets"))["data"]


# --------------------------------------------------------------------------- Helm lint


@pytest.mark.parametrize("case", ["default", *CI_CASES])
def test_helm_lint_passes(helm: dict[str, Any], case: str) -> None:
    outcome = helm["lint"][case]
    assert outcome["error"] is None, outcome["error"]
    assert outcome["ok"], f"{case}: {outcome['messages']}"
    assert {m["severity"] for m in outcome["messages"]} <= {"INFO"}


def test_every_ci_file_is_linted_and_rendered() -> None:
    assert len(CI_FILES) >= 4
    assert set(CI_CASES) <= set(LINT_CASES) & set(GOOD_RENDERS)


# ---------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("case", GOOD_RENDERS)
@pytest.mark.parametrize("kube_version", VALIDATE_KUBE_VERSIONS)
def test_rendered_objects_match_the_kubernetes_schemas(
    helm: dict[str, Any], case: str, kube_version: str
) -> None:
    docs = rendered(helm, case)
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, kube_version, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_objects_sent_to_the_api_server_are_the_manifest(helm: dict[str, Any], case: str) -> None:
    kinds = sorted(doc["kind"] for doc in rendered(helm, case))
    assert sorted(obj["kind"] for obj in helm["render"][case]["objects"]) == kinds


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_service_monitor_shape(helm: dict[str, Any], case: str) -> None:
    docs = rendered(helm, case)
    monitors = of_kind(docs, "ServiceMonitor")
    if not values_of(case)["serviceMonitor"]["enabled"]:
        assert monitors == []
        return
    (monitor,) = monitors
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(docs, "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    values = values_of(case)["serviceMonitor"]
    assert endpoint["interval"] == values["interval"]
    # Scraped the way the exporter serves: the values' scheme, TLS and basic auth as given,
    # nothing added (a certificate check is turned off only by the values).
    assert endpoint["scheme"] == values["scheme"]
    assert endpoint.get("tlsConfig", {}) == values["tlsConfig"]
    assert endpoint.get("basicAuth", {}) == values["basicAuth"]


def test_service_monitor_scrapes_a_secured_exporter(helm: dict[str, Any]) -> None:
    docs = rendered(helm, "ci/secured-values.yaml")
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "exporter-tls", "key": "ca.crt"}},
        "serverName": "sve-simplivity-exporter.monitoring.svc",
    }
    assert endpoint["basicAuth"] == {
        "username": {"name": "exporter-scrape", "key": "username"},
        "password": {"name": "exporter-scrape", "key": "password"},
    }
    # The exporter really serves what the ServiceMonitor expects: its web config is mounted.
    (container,) = containers(docs)
    (web_config,) = [a for a in container["args"] if a.startswith("--web.config.file=")]
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(web_config.split("=", 1)[1]).parent) in mounted

    (unchecked,) = one(
        rendered(helm, "scrape over TLS, certificate not checked"), "ServiceMonitor"
    )["spec"]["endpoints"]
    assert unchecked["tlsConfig"] == {"insecureSkipVerify": True}
    assert "basicAuth" not in unchecked


# ---------------------------------------------------------------------- security


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_pods_run_unprivileged(helm: dict[str, Any], case: str) -> None:
    docs = rendered(helm, case)
    pod = workload(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork")
    assert not pod.get("hostPID")
    for container in containers(docs):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context.get("privileged") is not True
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_probes_use_the_health_endpoints(helm: dict[str, Any], case: str) -> None:
    (container,) = containers(rendered(helm, case))
    for probe in ("livenessProbe", "readinessProbe"):
        handlers = {"exec", "httpGet", "tcpSocket", "grpc"} & set(container[probe])
        assert len(handlers) == 1, f"{probe}: Kubernetes takes one handler, got {handlers}"
    if "exec" in values_of(case)["livenessProbe"]:  # basic auth on: the image's own checker
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == ["python", "-m", "exporter.healthcheck"]
    else:
        assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert container["ports"] == [
        {"name": "http", "containerPort": values_of(case)["containerPort"], "protocol": "TCP"}
    ]


def test_no_password_in_clear_anywhere(helm: dict[str, Any]) -> None:
    manifest = helm["render"]["secrets"]["manifest"]
    for password in SECRET_PASSWORDS:
        assert password not in manifest
    secret = one(rendered(helm, "secrets"), "Secret")
    decoded = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert decoded == dict(zip(["boston", "chicago", "zurich"], SECRET_PASSWORDS, strict=True))
    assert "stringData" not in secret


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_config_maps_hold_no_password(helm: dict[str, Any], case: str) -> None:
    values = values_of(case)
    passwords = [c["password"] for c in values["controllers"] if c.get("password")]
    for config_map in of_kind(rendered(helm, case), "ConfigMap"):
        text = json.dumps(config_map["data"])
        assert "password:" not in text
        assert '"password"' not in text
        for password in passwords:
            assert password not in text


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_passwords_are_mounted_files_named_by_the_config(helm: dict[str, Any], case: str) -> None:
    docs = rendered(helm, case)
    values = values_of(case)
    pod = workload(docs)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (container,) = containers(docs)
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    if not values["controllers"]:  # demo mode: no config, no Secret
        assert "--demo" in container["args"]
        assert of_kind(docs, "Secret") == []
        assert "passwords" not in volumes
        return
    assert "--demo" not in container["args"]
    config = yaml.safe_load(exporter_config_map(docs)["data"]["config.yaml"])
    secret_volume = volumes["passwords"]["secret"]
    expected_secret = values["existingSecret"] or f"{FULLNAME}-passwords"
    assert secret_volume["secretName"] == expected_secret
    assert secret_volume["defaultMode"] == 0o440
    assert mounts["passwords"]["readOnly"] is True
    keys = [item["key"] for item in secret_volume["items"]]
    assert [Path(c["password_file"]).name for c in config["controllers"]] == keys
    for controller in config["controllers"]:
        assert Path(controller["password_file"]).parent == Path(mounts["passwords"]["mountPath"])
    secrets = of_kind(docs, "Secret")
    if values["existingSecret"]:
        assert secrets == []
    else:
        assert sorted(one(docs, "Secret")["data"]) == sorted(keys)
    config_file = next(arg for arg in container["args"] if arg.startswith("--config.file="))
    assert config_file == f"--config.file={mounts['config']['mountPath']}/config.yaml"


@pytest.mark.parametrize("case", [c for c in GOOD_RENDERS if c != "default"])
def test_rendered_config_passes_the_exporters_config_check(
    helm: dict[str, Any], case: str, tmp_path: Path
) -> None:
    """The ConfigMap's config.yaml, with the Secret's files, is valid for the exporter."""
    docs = rendered(helm, case)
    if not values_of(case)["controllers"]:
        assert [doc["metadata"]["name"] for doc in of_kind(docs, "ConfigMap")] in (
            [],
            [f"{FULLNAME}-dashboard"],
        )
        return  # demo mode: --demo, no config file
    config = yaml.safe_load(exporter_config_map(docs)["data"]["config.yaml"])
    secrets = of_kind(docs, "Secret")
    for controller in config["controllers"]:
        key = Path(controller["password_file"]).name
        password = base64.b64decode(secrets[0]["data"][key]).decode() if secrets else f"from-{key}"
        (tmp_path / key).write_text(password + "\n", encoding="utf-8")
        controller["password_file"] = str(tmp_path / key)
        controller.get("tls", {}).pop("ca_file", None)  # a mounted file we do not have
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    check = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", f"--config.file={path}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_new_config_rolls_the_pods(helm: dict[str, Any]) -> None:
    def checksum(case: str) -> str:
        annotations = workload(rendered(helm, case))["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    assert checksum("secrets") != checksum("secrets, interval changed")
    assert len(checksum("secrets")) == 64


# ---------------------------------------------------------------------- sharding


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_sharding_switches_to_a_statefulset(helm: dict[str, Any], case: str) -> None:
    docs = rendered(helm, case)
    shards = values_of(case)["sharding"]["shards"]
    (container,) = containers(docs)
    service = one(docs, "Service")
    assert not any(arg.startswith("--shard.index") for arg in container["args"])
    if shards == 1:
        assert of_kind(docs, "StatefulSet") == []
        assert one(docs, "Deployment")["spec"]["replicas"] == 1
        assert not any(arg.startswith("--shard.") for arg in container["args"])
        assert service["spec"].get("clusterIP") != "None"
        return
    assert of_kind(docs, "Deployment") == []
    statefulset = one(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == shards
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    # Each pod's shard index is the ordinal in its name: <statefulset>-<i>.
    assert statefulset["metadata"]["name"] == FULLNAME
    assert f"--shard.count={shards}" in container["args"]
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"


def test_sharded_ci_file_runs_three_shards(helm: dict[str, Any]) -> None:
    statefulset = one(rendered(helm, "ci/sharded-values.yaml"), "StatefulSet")
    assert statefulset["spec"]["replicas"] == 3


# -------------------------------------------------------------- rules and dashboard


def source_rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(
        (ROOT / "monitoring" / "alerts.yml").read_text(encoding="utf-8")
    )["groups"]
    return groups


def rules_by_alert(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_prometheus_rule_is_the_repository_rule_file(helm: dict[str, Any]) -> None:
    rule = one(rendered(helm, "rules as shipped"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == source_rules()


def test_prometheus_rule_applies_the_values(helm: dict[str, Any]) -> None:
    overrides = CI_CASES["ci/all-features-values.yaml"]["prometheusRule"]["alerts"]
    base_url = CI_CASES["ci/all-features-values.yaml"]["runbookBaseURL"]
    shipped = rules_by_alert(source_rules())
    rule = one(rendered(helm, "ci/all-features-values.yaml"), "PrometheusRule")
    got = rules_by_alert(rule["spec"]["groups"])
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(got) == {name for name in shipped if overrides.get(name, {}).get("enabled", True)}
    for name, rendered_rule in got.items():
        expected = copy.deepcopy(shipped[name])
        change = overrides.get(name, {})
        if "threshold" in change:
            old = expected["expr"].rstrip().rsplit(" ", 1)
            assert old[1].replace(".", "").isdigit(), expected["expr"]
            expected["expr"] = expected["expr"].replace(
                f"{old[0]} {old[1]}", f"{old[0]} {change['threshold']}"
            )
            assert expected["expr"] != shipped[name]["expr"]
        if "for" in change:
            expected["for"] = change["for"]
        if "severity" in change:
            expected["labels"]["severity"] = change["severity"]
        expected["annotations"]["runbook_url"] = f"{base_url}#{name.lower()}"
        assert rendered_rule == expected, name


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_runbook_links_are_absolute_or_absent(helm: dict[str, Any], case: str) -> None:
    """A relative runbook link is dead in Alertmanager, Slack or Grafana."""
    base_url = values_of(case)["runbookBaseURL"]
    docs = rendered(helm, case)
    urls = [
        rule["annotations"].get("runbook_url")
        for doc in of_kind(docs, "PrometheusRule")
        for group in doc["spec"]["groups"]
        for rule in group["rules"]
    ]
    urls += [
        link["url"]
        for panel in dashboard_panels(rendered_dashboard(docs) or {"panels": []})
        for link in panel.get("links", [])
    ]
    for url in urls:
        if base_url:
            assert url is not None
            assert re.fullmatch(re.escape(base_url) + r"#simplivity[a-z]+", url), url
        else:
            assert url is None, url


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_prometheus_rule_shape(helm: dict[str, Any], case: str) -> None:
    for rule in of_kind(rendered(helm, case), "PrometheusRule"):
        assert rule["spec"]["groups"]
        for group in rule["spec"]["groups"]:
            assert isinstance(group["name"], str)
            assert group["rules"]
            for item in group["rules"]:
                assert isinstance(item["alert"], str)
                assert isinstance(item["expr"], str)
                assert all(isinstance(v, str) for v in item.get("labels", {}).values())
                assert all(isinstance(v, str) for v in item.get("annotations", {}).values())


def rendered_dashboard(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The dashboard JSON of the rendered ConfigMap for Grafana's sidecar, if there is one."""
    maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    if not maps:
        return None
    (config_map,) = maps
    assert list(config_map["data"]) == ["simplivity-exporter.json"]
    dashboard: dict[str, Any] = json.loads(config_map["data"]["simplivity-exporter.json"])
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for top in dashboard["panels"] for panel in [top, *top.get("panels", [])]]


def source_dashboard() -> dict[str, Any]:
    source: dict[str, Any] = json.loads(
        (ROOT / "monitoring" / "dashboard.json").read_text(encoding="utf-8")
    )
    return source


def shipped_threshold(alert: str) -> float:
    (expr,) = [r["expr"] for g in source_rules() for r in g["rules"] if r.get("alert") == alert]
    return float(expr.rstrip().rsplit(" ", 1)[1])


def threshold_steps(panel: dict[str, Any]) -> list[dict[str, Any]]:
    config = panel.get("fieldConfig", {})
    steps = list(config.get("defaults", {}).get("thresholds", {}).get("steps", []))
    for override in config.get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "thresholds":
                steps += prop["value"]["steps"]
    return steps


def test_grafana_dashboard_config_map(helm: dict[str, Any]) -> None:
    docs = rendered(helm, "ci/all-features-values.yaml")
    (config_map,) = [
        doc for doc in of_kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-dashboard")
    ]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Backups"}


def test_dashboard_as_shipped_is_the_repository_dashboard(helm: dict[str, Any]) -> None:
    assert rendered_dashboard(rendered(helm, "dashboard as shipped")) == source_dashboard()


def test_dashboard_links_panels_to_runbooks_and_follows_the_alert_thresholds(
    helm: dict[str, Any],
) -> None:
    """The values' runbook address and thresholds reach the dashboard: each panel links to the
    runbook of the alerts its description names (as tools/monitoring.py links them), and a
    threshold step at such an alert's shipped threshold moves to the overridden one."""
    values = values_of("ci/all-features-values.yaml")
    overrides = {
        name: change["threshold"]
        for name, change in values["prometheusRule"]["alerts"].items()
        if "threshold" in change
    }
    got = rendered_dashboard(rendered(helm, "ci/all-features-values.yaml"))
    assert got is not None
    expected = monitoring_tool.with_runbook_links(source_dashboard(), values["runbookBaseURL"])
    moved = 0
    for panel in dashboard_panels(expected):
        for alert in monitoring_tool.panel_alerts(panel):
            if alert not in overrides:
                continue
            for step in threshold_steps(panel):
                if step["value"] == shipped_threshold(alert):
                    step["value"] = overrides[alert]
                    moved += 1
    assert moved >= 3, "the test must move thresholds of several panels"
    assert got == expected
    linked = [p for p in dashboard_panels(got) if p.get("links")]
    assert len(linked) >= 10


def test_optional_objects_are_off_by_default(helm: dict[str, Any]) -> None:
    kinds = sorted(doc["kind"] for doc in rendered(helm, "default"))
    assert kinds == ["Deployment", "Service", "ServiceAccount"]


def test_network_policy(helm: dict[str, Any]) -> None:
    docs = rendered(helm, "ci/all-features-values.yaml")
    policy = one(docs, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= (
        workload(docs)["spec"]["template"]["metadata"]["labels"].items()
    )
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }
    controllers, dns = policy["egress"]
    assert controllers["to"] == [{"ipBlock": {"cidr": "10.0.0.0/24"}}]
    assert controllers["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert {port["port"] for port in dns["ports"]} == {53}


def test_image_reference(helm: dict[str, Any]) -> None:
    (default,) = containers(rendered(helm, "default"))
    assert default["image"] == f"simplivity-exporter:{exporter.__version__}"
    (pinned,) = containers(rendered(helm, "ci/all-features-values.yaml"))
    assert pinned["image"] == (
        "registry.example.com/monitoring/simplivity-exporter@sha256:"
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    )


# ---------------------------------------------------------------------------- NOTES


@pytest.mark.parametrize("case", GOOD_RENDERS)
def test_notes_say_how_to_reach_the_metrics(helm: dict[str, Any], case: str) -> None:
    notes = helm["render"][case]["notes"]
    assert "/metrics" in notes
    assert f"kubectl --namespace {NAMESPACE} port-forward" in notes
    assert ("DEMO MODE" in notes) == (not values_of(case)["controllers"])
    monitor = values_of(case)["serviceMonitor"]
    scheme = monitor["scheme"]
    assert f"curl {scheme}://127.0.0.1:" in notes
    assert f"{scheme}://{FULLNAME}.{NAMESPACE}.svc:" in notes
    assert ("TLS on: add --cacert" in notes) == (scheme == "https")
    assert ("basic auth on: add -u USER" in notes) == bool(monitor["basicAuth"])


def test_policy_aware_rules_and_dashboard_follow_the_exporters_protection_settings(
    helm: dict[str, Any],
) -> None:
    """config.protection goes to the exporter only: the rules and the dashboard read the
    verdict and the settings it judged with from its series, so both come out as shipped."""
    docs = rendered(helm, "protection settings")
    config = yaml.safe_load(exporter_config_map(docs)["data"]["config.yaml"])
    assert config["protection"] == {"overdue_factor": 2, "grace_seconds": 5400}
    got = rules_by_alert(one(docs, "PrometheusRule")["spec"]["groups"])
    assert got == rules_by_alert(source_rules())
    assert rendered_dashboard(docs) == rendered_dashboard(rendered(helm, "dashboard as shipped"))


@pytest.mark.parametrize(
    "case", [c for c in GOOD_RENDERS if values_of(c)["prometheusRule"]["enabled"]]
)
def test_rendered_rules_pass_promtool(helm: dict[str, Any], case: str, tmp_path: Path) -> None:
    rule = one(rendered(helm, case), "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    check = promtool("check", "rules", str(path))
    assert check.returncode == 0, check.stdout + check.stderr

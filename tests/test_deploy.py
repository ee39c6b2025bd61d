"""Packaging and the ways to run the exporter outside Kubernetes.

- Packaging: one version (``exporter.__version__``), read by pyproject and repeated only where
  a file cannot read it (the chart's appVersion, the Dockerfile's VERSION default), checked
  equal here; the Apache-2.0 LICENSE that pyproject and the image's label name.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from exporter import __version__

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
CHART = ROOT / "helm" / "simplivity-exporter" / "Chart.yaml"
DOCKERFILE = ROOT / "Dockerfile"


# ---------------------------------------------------------------------------- packaging


def test_pyproject_reads_the_version_from_the_package() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project, "the version lives in exporter/__init__.py only"
    assert "version" in project["dynamic"]
    dynamic = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "exporter.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", __version__), __version__


def test_files_that_cannot_read_the_version_repeat_it_exactly() -> None:
    chart = yaml.safe_load(CHART.read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__, (
        f"{CHART.relative_to(ROOT)}: appVersion {chart['appVersion']!r}, "
        f"exporter/__init__.py: {__version__!r}"
    )
    defaults = re.findall(r"^ARG VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert defaults == [__version__], f"Dockerfile: ARG VERSION={defaults}, want {__version__}"


def test_license_is_the_apache_2_text_that_the_metadata_names() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    labels = DOCKERFILE.read_text(encoding="utf-8")
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels

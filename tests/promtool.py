"""Prometheus' binaries (Debian's prometheus package, which ``./dev setup`` installs), for the
tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def binary(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; fails the test if it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: it comes with Debian's prometheus package, "
            "which `./dev setup` installs (or: apt-get install prometheus)"
        )
    return path


def promtool(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` with ``stdin`` as its input; fails the test if promtool is missing."""
    return subprocess.run(
        [binary("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )

"""promtool, from Debian's prometheus package (``./dev setup`` installs it), for the tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` with ``stdin`` as its input; fails the test if promtool is missing."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is missing: ./dev setup installs Debian's prometheus package")
    return subprocess.run(
        [binary, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )

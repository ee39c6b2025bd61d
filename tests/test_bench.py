"""The benchmark harness runs end to end at a tiny size and prints its table.

No timing is asserted here: the numbers are the benchmark's business (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import variant
from bench.run import parse_sizes
from bench.scrape import percentile
from bench.variant import Variant

ROOT = Path(__file__).resolve().parent.parent


def test_a_tiny_run_prints_the_table_and_writes_the_results(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--sizes=300,1k",
            "--vms=20",
            "--repeat=1",
            "--request-cost=0",
            "--object-cost=0",
            "--page-size=200",
            "--load-vms=30",
            "--load-backups=300",
            "--scrapers=3",
            "--load-seconds=0.5",
            "--load-repeat=2",
            "--pace=0.05",
            "--idle-connections=50",
            "--idle-hold=0.1",
            "--sweep=1,2",
            "--sweep-at=1k",
            "--steady=2k/100",
            "--steady-polls=3",
            f"--output={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for heading in ("backups", "wall s", "peak RSS MB", "p99 ms", "target"):
        assert heading in table
    assert "exporter" in table
    assert "baseline" in table
    results = json.loads((tmp_path / "latest.json").read_text())
    polls = results["polls"]
    assert {(row["side"], row["backups"]) for row in polls} == {
        (side, size) for side in ("exporter", "baseline") for size in (300, 1000)
    }
    assert all(row["logins"] == 1 for row in polls)
    for row in polls:
        if row["side"] == "exporter":  # the inventory, then the backups (one login, one report)
            assert row["requests_per_path"]["/api/virtual_machines"] >= 1
            assert row["requests_per_path"]["/api/policies/policy_schedule_report"] == 1
            assert row["requests_per_path"]["/api/oauth/token"] == 1
            # Its decoding worker's peak is in it, though the worker stops after the scan.
            assert 0 < row["worker_peak_rss_bytes"] < row["peak_rss_bytes"]
    assert "by path" in table
    assert [point["max_concurrency"] for point in results["sweep"]] == [1, 2]
    assert [(row["phase"], row["idle_connections"]) for row in results["load"]] == [
        ("idle", 0),
        ("polling", 0),
        ("polling", 50),
    ]
    assert all(row["errors"] == 0 and row["requests"] > 0 for row in results["load"])
    assert all(len(row["window_p99_ms"]) == 2 for row in results["load"])
    churned = results["load"][-1]
    assert churned["idle_cycles"] >= 1
    assert churned["idle_failed"] == 0
    assert results["logins"]["controller_logins"] == 1
    assert "| backups |" in (tmp_path / "latest.md").read_text()
    assert (tmp_path / "poll.png").read_bytes().startswith(b"\x89PNG")
    steady = json.loads((tmp_path / "steady.json").read_text())
    assert [row["poll"] for row in steady] == [0, 1, 2]
    assert all(row["equal"] for row in steady)
    assert [row["incremental"]["kind"] for row in steady] == ["full", "incremental", "incremental"]
    assert all(row["incremental"]["objects"] < row["full"]["objects"] for row in steady[1:])
    assert "| 2,000 / 100 |" in (tmp_path / "steady.md").read_text()
    # What both held at once was sampled, and is no more than their own peaks added, give or
    # take the kernel's bookkeeping: VmHWM is not raised on every path that lowers RSS, and a
    # sample once exceeded the two VmHWMs added by 0.14 MB.
    for figures in (row[side] for row in steady for side in ("incremental", "full")):
        assert figures["rss"] <= figures["together_rss"]
        assert figures["together_rss"] <= figures["rss"] + figures["worker_rss"] + 2**21
        assert figures["worker_rss"] > 0


def test_sizes_are_read_with_k_suffixes() -> None:
    assert parse_sizes("1k,10k,100_000,300") == (1000, 10_000, 100_000, 300)


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0), (0.0, 1.0)]
)
def test_percentiles_are_nearest_rank(fraction: float, expected: float) -> None:
    assert percentile([float(v) for v in range(100, 0, -1)], fraction) == expected


@pytest.mark.parametrize(
    "measured", [Variant(), Variant(worker=False, switch_interval=0.005, whole_gzip=True)]
)
def test_a_variant_reaches_the_exporters_process_as_it_was_chosen(measured: Variant) -> None:
    """The bench hands a variant to its children as options: they read back the same one."""
    parser = argparse.ArgumentParser()
    variant.add_arguments(parser)
    assert variant.from_arguments(parser.parse_args(measured.arguments())) == measured

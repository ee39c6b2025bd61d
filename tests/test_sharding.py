"""Sharding: every controller polled by exactly one shard, and few move when a shard is added."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from exporter.sharding import (
    ordinal_from_hostname,
    select_controllers,
    shard_for,
    validate_shard,
)

# Names shaped like real ones: sites, appliances, a few non-ASCII ones.
NAMES = [
    f"{site}-ovc{i:03d}"
    for site in ("boston", "chicago", "zürich", "são-paulo")
    for i in range(250)
]
MAX_SHARDS = 8


def assignment(shard_count: int) -> dict[str, int]:
    return {name: shard_for(name, shard_count) for name in NAMES}


def test_names_are_unique() -> None:
    assert len(set(NAMES)) == len(NAMES) == 1000


@pytest.mark.parametrize("shard_count", range(1, MAX_SHARDS + 1))
def test_every_controller_is_polled_by_exactly_one_shard(shard_count: int) -> None:
    polled_by: Counter[str] = Counter()
    for shard_index in range(shard_count):
        polled_by.update(select_controllers(NAMES, shard_index, shard_count))
    assert set(polled_by) == set(NAMES)
    assert set(polled_by.values()) == {1}


@pytest.mark.parametrize("shard_count", range(1, MAX_SHARDS + 1))
def test_shards_share_the_work_evenly(shard_count: int) -> None:
    sizes = Counter(assignment(shard_count).values())
    assert sorted(sizes) == list(range(shard_count))
    fair = len(NAMES) / shard_count
    for shard_index, size in sizes.items():
        assert abs(size - fair) <= 0.25 * fair, (shard_index, size, fair)


@pytest.mark.parametrize("shard_count", range(1, MAX_SHARDS))
def test_adding_a_shard_moves_about_one_in_n_plus_one(shard_count: int) -> None:
    before = assignment(shard_count)
    after = assignment(shard_count + 1)
    moved = [name for name in NAMES if before[name] != after[name]]
    # Consistent hashing: a controller only ever moves to the new shard...
    assert {after[name] for name in moved} == {shard_count}
    # ...and about 1/(N+1) of them do (a modulo hash would move N/(N+1)).
    expected = 1 / (shard_count + 1)
    assert abs(len(moved) / len(NAMES) - expected) <= 0.04, (len(moved), expected)


def test_select_keeps_the_configured_order() -> None:
    names = ["zeta", "alpha", "mid", "beta", "omega", "gamma"]
    for shard_index in range(3):
        selected = select_controllers(names, shard_index, 3)
        assert selected == [name for name in names if name in selected]
    assert select_controllers(names, 0, 1) == names


def test_assignment_is_the_same_in_another_process() -> None:
    """Not Python's salted hash(): a fresh interpreter with another seed agrees."""
    code = (
        "import json, sys\n"
        "from exporter.sharding import shard_for\n"
        "names = json.load(sys.stdin)\n"
        "print(json.dumps([shard_for(n, c) for n in names for c in range(1, 9)]))\n"
    )
    sample = NAMES[::37]
    expected = [shard_for(name, count) for name in sample for count in range(1, 9)]
    for seed in ("1", "4242"):
        result = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(sample),
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
        )
        assert json.loads(result.stdout) == expected


@pytest.mark.parametrize(
    ("name", "shard_count", "shard"),
    [("boston", 4, 0), ("chicago", 4, 0), ("zürich-ovc001", 8, 5), ("simplivity-lab", 3, 2)],
)
def test_pinned_assignments(name: str, shard_count: int, shard: int) -> None:
    """Changing the hash would silently reshuffle every running estate on upgrade."""
    assert shard_for(name, shard_count) == shard


@pytest.mark.parametrize(
    ("hostname", "ordinal"),
    [
        ("simplivity-exporter-0", 0),
        ("simplivity-exporter-3", 3),
        ("simplivity-exporter-12", 12),
        ("simplivity-exporter-3.simplivity-exporter.monitoring.svc.cluster.local", 3),
        ("prod-sve-7\n", 7),
        ("simplivity-exporter", None),
        ("laptop", None),
        ("", None),
        ("exporter-03", None),
        ("exporter-", None),
        ("web01.example.com", None),
    ],
)
def test_ordinal_from_hostname(hostname: str, ordinal: int | None) -> None:
    assert ordinal_from_hostname(hostname) == ordinal


@pytest.mark.parametrize(
    ("shard_index", "shard_count", "message"),
    [
        (0, 0, "shard count must be at least 1, got 0"),
        (3, 3, "shard index must be between 0 and 2 (shard count 3), got 3"),
        (-1, 2, "shard index must be between 0 and 1 (shard count 2), got -1"),
    ],
)
def test_invalid_shards_are_refused(shard_index: int, shard_count: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_shard(shard_index, shard_count)
    with pytest.raises(ValueError, match="shard"):
        select_controllers(NAMES, shard_index, shard_count)


def test_shard_for_refuses_zero_shards() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        shard_for("boston", 0)

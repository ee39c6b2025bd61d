"""Which controllers a shard polls, when several exporters share a large estate.

Each controller belongs to exactly one of ``shard_count`` shards, chosen by rendezvous
(highest random weight) hashing: every shard scores the controller's name and the
highest score wins. Adding a shard only moves the controllers that the new shard now
wins, about ``1/(N+1)`` of them, and never moves a controller between two old shards,
so scaling out does not reshuffle the whole estate (kube-state-metrics shards the same
way, for the same reason).

The score is a SHA-256 digest, not Python's ``hash()``, whose per-process salt would
give every pod a different answer.

>>> shard_for("boston", 1)
0
>>> select_controllers(["boston", "chicago"], shard_index=0, shard_count=1)
['boston', 'chicago']
>>> ordinal_from_hostname("simplivity-exporter-3")
3
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

__all__ = ["ordinal_from_hostname", "select_controllers", "shard_for", "validate_shard"]

# A StatefulSet names its pods <statefulset>-<ordinal>; the hostname is the pod name.
_ORDINAL = re.compile(r"-(0|[1-9][0-9]*)$")


def validate_shard(shard_index: int, shard_count: int) -> None:
    """Raise ValueError unless ``0 <= shard_index < shard_count``."""
    if shard_count < 1:
        raise ValueError(f"shard count must be at least 1, got {shard_count}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(
            f"shard index must be between 0 and {shard_count - 1} "
            f"(shard count {shard_count}), got {shard_index}"
        )


def _score(shard: int, name: str) -> int:
    digest = hashlib.sha256(f"{shard}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def shard_for(name: str, shard_count: int) -> int:
    """The shard, in ``range(shard_count)``, that polls the controller called ``name``."""
    if shard_count < 1:
        raise ValueError(f"shard count must be at least 1, got {shard_count}")
    # Ties (a 64-bit collision) go to the lower shard index, so the answer stays unique.
    return max(range(shard_count), key=lambda shard: (_score(shard, name), -shard))


def select_controllers(names: Sequence[str], shard_index: int, shard_count: int) -> list[str]:
    """The names, in their given order, that shard ``shard_index`` of ``shard_count`` polls."""
    validate_shard(shard_index, shard_count)
    if shard_count == 1:
        return list(names)
    return [name for name in names if shard_for(name, shard_count) == shard_index]


def ordinal_from_hostname(hostname: str) -> int | None:
    """The StatefulSet ordinal at the end of a pod's hostname, or None if it has none.

    ``simplivity-exporter-3`` gives 3, and so does its FQDN
    ``simplivity-exporter-3.simplivity-exporter.monitoring.svc``; ``laptop`` gives None.
    """
    host = hostname.strip().split(".", 1)[0]
    match = _ORDINAL.search(host)
    if match is None:
        return None
    return int(match.group(1))

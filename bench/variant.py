"""The exporter with one of its speed measures switched, for the benchmark only:
``python -m bench.variant [--no-worker] [--switch-interval S] [--whole-gzip] -- ARGS``
runs ``python -m exporter ARGS`` so changed (:mod:`bench.probe` applies the same to its poll).

Each measure is replaced in the running process, as the exporter itself would run without it,
so that the exporter needs no setting that exists only to be measured:

- ``--no-worker``: pages are decoded and counted in the exporter's own process, its fallback
  when the decoding worker cannot start (``StoreScan``), without the warning.
- ``--switch-interval S``: ``sys.setswitchinterval(S)`` instead of Python's default (0.005 s).
  The exporter used 0.001 until issue 19 measured it (docs/design.md, "Performance").
- ``--whole-gzip``: the gzip of ``/metrics`` compressed whole (level 1) each time the text is
  written, instead of stitched from the kept deflate blocks of the unchanged pieces.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    worker: bool = True
    switch_interval: float | None = None  # None: the exporter's own
    whole_gzip: bool = False

    def arguments(self) -> list[str]:
        """This variant as :mod:`bench.variant`'s (and :mod:`bench.probe`'s) options."""
        found = [] if self.worker else ["--no-worker"]
        if self.switch_interval is not None:
            found.append(f"--switch-interval={self.switch_interval:g}")
        if self.whole_gzip:
            found.append("--whole-gzip")
        return found

    def describe(self) -> str:
        parts = ["decoding worker" if self.worker else "no decoding worker"]
        parts.append(
            "Python's switch interval (5 ms)"
            if self.switch_interval is None
            else f"switch interval {self.switch_interval * 1000:g} ms"
        )
        parts.append("gzip compressed whole" if self.whole_gzip else "gzip stitched")
        return ", ".join(parts)

    def apply(self) -> None:
        """Change the exporter in this process; before ``exporter.cli.main`` runs."""
        if not self.worker:
            from exporter.store import BackupScan, StoreScan
            from exporter.worker import DecodingWorker

            def open_scan(_: DecodingWorker, keep: bool = True) -> BackupScan:
                return StoreScan(keep)

            setattr(DecodingWorker, "open_scan", open_scan)  # noqa: B010 (mypy refuses a plain =)
        if self.switch_interval is not None:
            sys.setswitchinterval(self.switch_interval)
        if self.whole_gzip:
            from exporter import exposition

            encode = exposition._encode

            def encode_whole(
                pieces: Sequence[exposition.Piece], tail: bytes = b""
            ) -> tuple[exposition.PlainText, exposition.Body]:
                text, _ = encode(pieces, tail)
                return text, (gzip.compress(b"".join(text), compresslevel=1, mtime=0),)

            setattr(exposition, "_encode", encode_whole)  # noqa: B010


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-worker", action="store_true", help="count pages in-process")
    parser.add_argument("--switch-interval", type=float, default=None, help="seconds")
    parser.add_argument("--whole-gzip", action="store_true", help="no stitched gzip")


def from_arguments(args: argparse.Namespace) -> Variant:
    return Variant(not args.no_worker, args.switch_interval, args.whole_gzip)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variant")
    add_arguments(parser)
    parser.add_argument("exporter_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    from_arguments(args).apply()
    from exporter.cli import main as exporter_main

    rest = args.exporter_args
    return exporter_main(rest[1:] if rest[:1] == ["--"] else rest)


if __name__ == "__main__":
    sys.exit(main())

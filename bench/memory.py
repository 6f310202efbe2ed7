"""Where mfcd's memory goes with many routes, in one process without a kernel or a socket.

Usage: python bench/memory.py [--routes N] [--distinct-sources | --bench-sources] [--no-release]

Runs a batch text of N routes (`mfc add --source S --group G --iif r0 --oifs r1`, groups
232.0.0.0 + n, one source unless --distinct-sources, or --bench-sources: bench/run.py's
62,500 sources each coming back every 62,500 routes) through the daemon's own path,
Commands.batch -> Controller -> a real state file in a temporary directory, with a kernel
that accepts every operation; then reads that state file back as a restart does
(StateFile.load, Controller.restore, gc.freeze). VmRSS in MiB at each stage, and the
bytes of one route's objects (sys.getsizeof). Figures: docs/benchmarks.md, "Memory at
1,000,000 routes". Needs no root; run it with PYTHONPATH set to a revision's `src`.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mfcd.commands import Commands, Peer
from mfcd.controller import Controller, gc_paused
from mfcd.state import StateFile


def release() -> None:
    """malloc_trim(0), as mfcd.heap.release (called here directly, so that a revision
    without that module is measured the same way)."""
    ctypes.CDLL(None).malloc_trim(0)


def rss(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class AcceptingKernel:
    """A dataplane that takes every operation (only `apply` is used by a batch/restore)."""

    def apply(self, ops: Sequence[Any]) -> None:
        pass


def batch_text(n: int, distinct: bool, cycling: bool = False) -> str:
    def source(k: int) -> str:
        if cycling:  # as bench/nsagent.py's route_addr
            return f"10.1.{(k // 250) % 250}.{k % 250 + 1}"
        return f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}" if distinct else "198.18.0.3"

    return "".join(
        f"mfc add --source {source(k)} --group 232.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}"
        " --iif r0 --oifs r1\n"
        for k in range(n)
    )


def dicts_mib(router: Any) -> float:
    """The size of `routes` and `installed`, the latter a view of the former since issue 12's
    "Large tables again" (a dict before)."""
    maps = [router.routes, router.installed]
    return sum(sys.getsizeof(m) for m in maps if isinstance(m, dict)) / 2**20


def controller(state: StateFile) -> Controller:
    ctl = Controller(AcceptingKernel(), state)  # type: ignore[arg-type]
    ctl.router.begin()
    ctl.router.link_up("r0", 1)
    ctl.router.link_up("r1", 2)
    ctl.router.commit()
    return ctl


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=1_000_000)
    parser.add_argument("--distinct-sources", action="store_true")
    parser.add_argument("--bench-sources", action="store_true", help="bench/run.py's sources")
    parser.add_argument("--no-release", action="store_true", help="skip heap.release()")
    parser.add_argument("--restart-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restart_only:
        return restart(args.state, not args.no_release)
    with tempfile.TemporaryDirectory(prefix="mfcd-memory-") as tmp:
        path = Path(tmp) / "state.journal"
        state = StateFile(str(path))
        state.load()
        ctl = controller(state)
        text = batch_text(args.routes, args.distinct_sources, args.bench_sources)
        start = rss()
        began = time.monotonic()
        Commands(ctl, (4, 6)).batch({"text": text}, False, Peer(1, 0, 0))
        took = time.monotonic() - began
        del text
        after = rss()
        if not args.no_release:
            release()
        key = next(iter(ctl.router.routes))
        print(
            f"batch of {args.routes:,} ({took:.1f} s): before {start:.0f} MiB, after {after:.0f},"
            f" after malloc_trim {rss():.0f}, peak {rss('VmHWM'):.0f} (text included)"
        )
        print(
            f"one route: key {sys.getsizeof(key)} B, source {sys.getsizeof(key[1])} B"
            f" ({len({id(k[1]) for k in ctl.router.routes}):,} distinct objects), group"
            f" {sys.getsizeof(key[2])} B, routes and installed dicts"
            f" {dicts_mib(ctl.router):.0f} MiB"
        )
        state.close()
        # The restart in a fresh process, as mfcd starts: from the journal just written.
        import subprocess  # noqa: PLC0415

        cmd = [sys.executable, __file__, "--restart-only", "--state", str(path)]
        subprocess.run([*cmd, *(["--no-release"] if args.no_release else [])], check=True)
    return 0


def restart(path: Path, trim: bool) -> int:
    start = rss()
    with gc_paused():
        state = StateFile(str(path))
        loaded = state.load()
        ctl = controller(state)
        ctl.restore(loaded, {"r0": 1, "r1": 2})
        del loaded
        gc.freeze()
    restored = rss()
    if trim:
        release()
    print(
        f"restart with {len(ctl.router.routes):,} routes: before {start:.0f} MiB, restored"
        f" {restored:.0f}, after malloc_trim {rss():.0f}, peak {rss('VmHWM'):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One long run of MFC entries written in-process (Kernel.apply) against the same run handed
to the kernel writer process (Kernel.apply_later, then settle), alternated.

Usage (root): unshare -n python bench/writer_overlap.py [--routes N] [--rounds R]

Runs in the network namespace it is started in (unshare -n gives an empty one; the table
of its default IPv4 socket must be free). For each: wall-clock time until every route is in,
the daemon's own CPU and the writer's (reaped at Kernel.close). The writer pays only when a
second CPU is free: then the run takes what the kernel's calls take, with the packing done
meanwhile by the daemon. Figures: docs/benchmarks.md, "Recovery at start: the kernel's
writes in a process of their own".
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

from mfcd.kernel import Kernel
from mfcd.model import AddMfcRun


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one(mode: str, run: AddMfcRun) -> tuple[float, float, float]:
    kernel = Kernel((4,))
    try:
        started, cpu, child = time.perf_counter(), time.process_time(), children_cpu()
        if mode == "writer":
            kernel.apply_later([run])
            kernel.settle()
        else:
            kernel.apply([run])
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        kernel.close()
    return wall, cpu, children_cpu() - child


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keys = [
        (
            4,
            f"198.18.{i >> 16 & 255}.{i >> 8 & 255}",
            f"239.{i >> 16}.{i >> 8 & 255}.{i & 255}",
            253,
        )
        for i in range(args.routes)
    ]
    run = AddMfcRun(4, 253, 0, ((1, 1),), keys)
    seen: dict[str, list[tuple[float, float, float]]] = {"in-process": [], "writer": []}
    for r in range(args.rounds):
        for mode in ("in-process", "writer"):
            wall, cpu, child = one(mode, run)
            seen[mode].append((wall, cpu, child))
            print(
                f"round {r + 1} {mode}: wall {wall:.2f} s, own CPU {cpu:.2f} s,"
                f" writer CPU {child:.2f} s"
            )
    for mode, rows in seen.items():
        walls = [w for w, _, _ in rows]
        print(
            f"{mode}: wall median {statistics.median(walls):.2f} s"
            f" ({min(walls):.2f}-{max(walls):.2f})"
        )


if __name__ == "__main__":
    main()

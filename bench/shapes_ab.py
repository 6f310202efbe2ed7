"""Scenario 7's add shapes (one oif, `--oifs r1,r2`, `--oifs r1 r2`) of two revisions, in turn.

Usage (root): python bench/shapes_ab.py --base SRC [--head SRC] [--routes N] [--rounds R]
              [--prefix PREFIX]

`bench/run.py`'s scenario 7 for its add shapes alone, with revision A (`--base`, a `src`
directory of another revision, e.g. from `git archive`) and B (`--head`, default this
checkout's `src`) alternated round by round (A B, then B A). Each batch is a `mfcctl
batch` of N lines of one shape into a fresh, empty mfcd, timed until the daemon answers
the next request (as scenario 7 times it), then checked in the kernel. The ratio of each
shape of several oifs to the one-oif shape is taken within a revision and round, so that
other work on the machine lands on both. Beside the wall-clock times, the daemon's CPU time
for the batch. Figures: docs/benchmarks.md, "Batch lines with several oifs as runs".
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import run as bench
from bulk_ab import cpu_seconds
from run import FULL, USUAL, Bench, BenchError, batch_lines, stop_on_signals

ADDS = [USUAL, "mfc add, oifs r1,r2", "mfc add, oifs r1 r2"]


def shape_round(b: Bench, n: int, batch_file: Path, src: str) -> tuple[float, float]:
    """One batch of a shape into an empty mfcd of revision `src`: (seconds, mfcd CPU)."""
    os.environ["PYTHONPATH"] = src  # for mfcd and mfcctl alike (spawned with this environment)
    m = b.mfcd
    m.forget_state()
    m.start()
    assert m.proc is not None
    cpu = cpu_seconds(m.proc.pid)
    started = time.monotonic()
    m.ctl("batch", str(batch_file))
    took = m.next_answer() - started
    used = cpu_seconds(m.proc.pid) - cpu
    b.mfcd_ns.wait_all(n, b.s.timeout)
    m.stop()
    return took, used


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="revision A's src directory")
    parser.add_argument("--head", default=str(bench.REPO / "src"), help="revision B's src")
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix", help="namespace name prefix (default random)")
    args = parser.parse_args()
    n = args.routes
    s = replace(FULL, sizes=(n,))
    revisions = [("A", str(Path(args.base).resolve())), ("B", str(Path(args.head).resolve()))]
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mfcd-shapes-ab-", dir="/var/tmp") as tmp:
        b = Bench(s, args.prefix or f"mfcdsh{secrets.token_hex(3)}", Path(tmp))
        try:
            with stop_on_signals():
                for _, src in revisions:
                    bench.run(sys.executable, "-m", "compileall", "-q", src)
                b.mfcd_ns = b.namespace("mfcd")
                (b.workdir / "mfcd").mkdir()
                b.mfcd = bench.Mfcd(b.mfcd_ns, b.workdir / "mfcd", s.timeout)
                files = {}
                for k, shape in enumerate(ADDS):
                    files[shape] = b.workdir / f"shape-{k}.txt"
                    files[shape].write_text(batch_lines(0, n, shape))
                for rnd in range(args.rounds):
                    for name, src in revisions if rnd % 2 == 0 else revisions[::-1]:
                        took, used = {}, {}
                        for shape in ADDS:
                            took[shape], cpu = shape_round(b, n, files[shape], src)
                            rows.setdefault(f"{name} {shape}", []).append(took[shape])
                            rows.setdefault(f"{name} {shape} cpu", []).append(cpu)
                            used[shape] = cpu
                        for shape in ADDS[1:]:
                            ratio = took[shape] / took[USUAL]
                            rows.setdefault(f"{name} {shape} / one oif", []).append(ratio)
                            ratio = used[shape] / used[USUAL]
                            rows.setdefault(f"{name} {shape} cpu / one oif", []).append(ratio)
                        shown = ", ".join(f"{k}: {v:.2f}" for k, v in took.items())
                        print(f"round {rnd + 1} {name}: {shown}", flush=True)
        except (BenchError, bench.Stop) as e:
            print(f"shapes_ab: {e}", file=sys.stderr)
            return 1
        finally:
            b.cleanup()
    print(f"\n{n:,} lines a batch, {args.rounds} rounds (median, range):")
    for label, values in sorted(rows.items(), key=lambda kv: (kv[0][2:], kv[0])):
        median = statistics.median(values)
        print(f"  {label:40} {median:8.3f}  {min(values):.3f}-{max(values):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bulk install and recovery of two revisions of mfcd against the raw setsockopt loop, in turn.

Usage (root): python bench/bulk_ab.py --base SRC [--head SRC] [--routes N] [--rounds R]
              [--prefix PREFIX]

`bench/run.py`'s scenarios 1 and 2 for one N, with revision A (`--base`, a `src` directory
of another revision, e.g. from `git archive`) and B (`--head`, default this checkout's
`src`) alternated with the raw loop in every round: raw, A, raw, B. Each mfcd round is a
`mfcctl batch` of N routes into an empty daemon, timed until the daemon answers the next
request, then a restart with the N routes in its state file, timed until it answers.
Ratios are taken against the raw loop of the same round. Beside the wall-clock times, the
daemon's own CPU time (utime + stime from /proc) for the batch (until the next answer) and
for the restart: far less sensitive than wall-clock time to other work on a shared
machine. Figures: docs/benchmarks.md, "Large
tables again".
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
from run import FULL, Bench, BenchError, batch_lines, stop_on_signals

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, own: bool = False) -> float:
    """utime + stime, and (unless `own`) those of children reaped: the kernel writer
    process, which has ended by the time a restart answers."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11 : 13 if own else 15]) / TICK


def mfcd_round(b: Bench, n: int, batch_file: Path, src: str) -> dict[str, float]:
    """run.Bench.mfcd_round with revision `src`, and the daemon's CPU time."""
    os.environ["PYTHONPATH"] = src  # for mfcd and mfcctl alike (spawned with this environment)
    m = b.mfcd
    m.forget_state()
    m.start()
    assert m.proc is not None
    cpu, own = cpu_seconds(m.proc.pid), cpu_seconds(m.proc.pid, own=True)
    started = time.monotonic()
    m.ctl("batch", str(batch_file))
    acked = time.monotonic()
    answered = m.next_answer()
    out = {"batch": answered - started, "ack": acked - started}
    out["batch cpu"] = cpu_seconds(m.proc.pid) - cpu
    out["batch own cpu"] = cpu_seconds(m.proc.pid, own=True) - own  # (without the writer's)
    out["batch rss"] = m.memory()[1]
    b.mfcd_ns.wait_all(n, b.s.timeout)
    m.stop()
    out["restart"] = m.start()[1]
    assert m.proc is not None
    out["restart cpu"] = cpu_seconds(m.proc.pid)
    out["restart own cpu"] = cpu_seconds(m.proc.pid, own=True)  # (without the writer's)
    out["restart peak"], out["restart rss"] = m.memory()  # (after its heap release)
    b.mfcd_ns.wait_all(n, b.s.timeout)
    out["restart rss later"] = m.memory()[1]  # once the namespace has seen every route
    m.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="revision A's src directory")
    parser.add_argument("--head", default=str(bench.REPO / "src"), help="revision B's src")
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prefix", help="namespace name prefix (default random)")
    args = parser.parse_args()
    n = args.routes
    s = replace(FULL, sizes=(n,))
    revisions = {"A": str(Path(args.base).resolve()), "B": str(Path(args.head).resolve())}
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mfcd-bulk-ab-", dir="/var/tmp") as tmp:
        b = Bench(s, args.prefix or f"mfcdab{secrets.token_hex(3)}", Path(tmp))
        try:
            with stop_on_signals():
                for src in revisions.values():
                    bench.run(sys.executable, "-m", "compileall", "-q", src)
                b.mfcd_ns = b.namespace("mfcd")
                b.raw_ns = b.namespace("raw")
                (b.workdir / "mfcd").mkdir()
                b.mfcd = bench.Mfcd(b.mfcd_ns, b.workdir / "mfcd", s.timeout)
                batch_file = b.workdir / "batch.txt"
                batch_file.write_text(batch_lines(0, n))
                for rnd in range(args.rounds):
                    for name, src in revisions.items():
                        b.raw_ns.call("raw_init")
                        raw = b.raw_ns.call("raw_add", start=0, n=n)["seconds"]
                        b.raw_ns.wait_all(n, s.timeout)
                        b.raw_ns.call("raw_done")
                        out = mfcd_round(b, n, batch_file, src)
                        out["batch/raw"] = out["batch"] / raw
                        out["restart/raw"] = out["restart"] / raw
                        out["raw"] = raw
                        for k, v in out.items():
                            rows.setdefault(f"{name} {k}", []).append(v)
                        shown = ", ".join(f"{k} {v:.2f}" for k, v in out.items())
                        print(f"round {rnd + 1} {name}: {shown}", flush=True)
        except (BenchError, bench.Stop) as e:
            print(f"bulk_ab: {e}", file=sys.stderr)
            return 1
        finally:
            b.cleanup()
    print(f"\n{n:,} routes, {args.rounds} rounds (median, range):")
    for label, values in sorted(rows.items(), key=lambda kv: (kv[0][2:], kv[0])):
        median = statistics.median(values)
        print(f"  {label:18} {median:8.2f}  {min(values):.2f}-{max(values):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

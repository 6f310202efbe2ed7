"""Benchmark: N group joins in one batch, mfcd against smcroute, until the kernel holds them all.

Usage (as root, from the repository): `.venv/bin/python bench/joins.py [--n 1000,5000,10000]
[--repeats 3]`.  Each tool runs in its own network namespace (bench/run.py's Namespace:
interfaces r0, r1, r2) with the default sysctls (igmp_max_memberships 20), so both must
spread the joins over many sockets.  For each N and repeat, in turn (mfcd, smcroute,
mfcd, ...), a fresh daemon gets N IPv4 ASM joins on r1 as one batch (`mfcctl batch FILE`
of `join --interface r1 --group G` lines, `smcroutectl -b` of `join r1 G` lines) and the
time is taken from the client's start until /proc/net/igmp lists all N groups on r1.
The per-join cost (time / N) shows whether the cost stays flat as N grows.  Prints a table
of medians and writes JSON to bench/results/joins-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import HERE, QUICK, SMCROUTECTL, Mfcd, Namespace, Smcroute, stop_process

TIMEOUT = 300.0


def group(i: int) -> str:
    return f"239.{100 + i // 65536}.{i // 256 % 256}.{i % 256}"


def joined_on(ns: str, ifname: str) -> int:
    """How many groups /proc/net/igmp lists on `ifname` (224.0.0.1 included)."""
    text = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/igmp"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    count, inside = 0, False
    for line in text.splitlines()[1:]:
        if not line.startswith("\t"):
            inside = line.split()[1] == ifname
        elif inside:
            count += 1
    return count


def wait_joined(ns: str, want: int, started: float) -> float:
    deadline = started + TIMEOUT
    while (got := joined_on(ns, "r1")) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ns}: {got} of {want} groups joined after {TIMEOUT} s")
        time.sleep(0.01)
    return time.monotonic() - started


def run_mfcd(ns: Namespace, workdir: Path, n: int) -> float:
    mfcd = Mfcd(ns, workdir, TIMEOUT)
    mfcd.forget_state()
    mfcd.start()
    try:
        base = joined_on(ns.name, "r1")
        batch = workdir / "joins.batch"
        batch.write_text("".join(f"join --interface r1 --group {group(i)}\n" for i in range(n)))
        started = time.monotonic()
        mfcd.ctl("batch", str(batch))
        return wait_joined(ns.name, base + n, started)
    finally:
        mfcd.stop()


def run_smcroute(ns: Namespace, workdir: Path, n: int) -> float:
    smc = Smcroute(ns, workdir, TIMEOUT)
    smc.start(0)
    try:
        base = joined_on(ns.name, "r1")
        lines = "".join(f"join r1 {group(i)}\n" for i in range(n))
        started = time.monotonic()
        subprocess.run(
            [SMCROUTECTL, "-u", smc.socket, "-b"],
            input=lines,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=True,
        )
        return wait_joined(ns.name, base + n, started)
    finally:
        smc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="1000,5000,10000", help="numbers of joins (comma-separated)")
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    sizes = [int(v) for v in a.n.split(",")]
    processes: list[subprocess.Popen[Any]] = []
    prefix = f"mfcdbj{secrets.token_hex(2)}"
    results: dict[str, dict[int, list[float]]] = {"mfcd": {}, "smcroute": {}}
    namespaces: list[Namespace] = []
    try:
        mfcd_ns = Namespace(f"{prefix}-m", processes, QUICK)
        smc_ns = Namespace(f"{prefix}-s", processes, QUICK)
        namespaces += [mfcd_ns, smc_ns]
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                for r in range(a.repeats):
                    for tool, ns, fn in (
                        ("mfcd", mfcd_ns, run_mfcd),
                        ("smcroute", smc_ns, run_smcroute),
                    ):
                        workdir = Path(tmp) / f"{tool}-{n}-{r}"
                        workdir.mkdir()
                        seconds = fn(ns, workdir, n)
                        results[tool].setdefault(n, []).append(seconds)
                        print(f"{tool:8} n={n:6} run {r + 1}: {seconds:7.3f} s", flush=True)
    finally:
        for proc in processes:
            stop_process(proc)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns.name], check=False)
    print(f"\n{'N':>6}  {'mfcd s':>8}  {'µs/join':>8}  {'smcroute s':>10}  {'µs/join':>8}  ratio")
    for n in sizes:
        m = statistics.median(results["mfcd"][n])
        s = statistics.median(results["smcroute"][n])
        print(f"{n:6}  {m:8.3f}  {m / n * 1e6:8.1f}  {s:10.3f}  {s / n * 1e6:8.1f}  {m / s:5.2f}")
    out = HERE / "results" / f"joins-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"python": sys.version, "results": results}, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

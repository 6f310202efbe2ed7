"""Benchmark: routes declared in the config file, reload by diff, side by side with smcroute.

Usage (as root, from the repository): `.venv/bin/python bench/config_reload.py [--routes N
...] [--smcroute-routes N ...]`. In a lab of network namespaces (lab/netns.py: the host's
interfaces are never touched), for each N:

  start      mfcd started with N config routes, until it answers a request (start_cpu_s:
             the CPU time mfcd used until then, far less sensitive to other load)
  recovery   mfcd restarted with the same N routes in its state file instead (added with
             `mfcctl batch`), until it answers a request: the yardstick of `start`
             (recovery_cpu_s likewise)
  unchanged  `mfcctl reload` of the same file (median of 3), and smcroute's reload of the
             same N routes (`smcroutectl reload`, until it answers again)
  one        `mfcctl reload` after one route's oifs changed (median of 3)
  answered   the longest wait of a ping, sent every 10 ms on an open connection, while a
             reload that changes every route runs (the files are read in a thread; the
             changes are applied on the loop, so this grows with the routes changed)

With `--base SRC [--rounds R]`, only start and recovery, for two revisions alternated in
one lab (A: the mfcd package under SRC, e.g. main's `git archive` in /tmp; B: this
checkout's), R rounds of both in turn, A first in odd rounds: each revision's start and
recovery, wall-clock and CPU, and their ratios. The state file is written once (by B's
`mfcctl batch`) and copied before each recovery; each start gets a fresh one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lab.netns import Lab  # noqa: E402

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def config_text(n: int, oifs: str = '"r1", "r2"', changed: int | None = None) -> str:
    lines = []
    for i in range(n):
        a, b = divmod(i, 250)
        out = '"r1"' if i == changed else oifs
        source, group = f"198.18.{a % 250}.{b + 1}", f"239.{1 + a // 250}.{a % 250}.{b + 1}"
        lines.append(
            f'[[route]]\nsource = "{source}"\ngroup = "{group}"\niif = "r0"\noifs = [{out}]\n'
        )
    return "".join(lines)


def batch_text(n: int) -> str:
    lines = []
    for i in range(n):
        a, b = divmod(i, 250)
        source, group = f"198.18.{a % 250}.{b + 1}", f"239.{1 + a // 250}.{a % 250}.{b + 1}"
        lines.append(f"mfc add --source {source} --group {group} --iif r0 --oifs r1,r2\n")
    return "".join(lines)


def smcroute_text(n: int) -> str:
    lines = ["phyint r0 enable\nphyint r1 enable\nphyint r2 enable\n"]
    for i in range(n):
        a, b = divmod(i, 250)
        source, group = f"198.18.{a % 250}.{b + 1}", f"239.{1 + a // 250}.{a % 250}.{b + 1}"
        lines.append(f"mroute from r0 source {source} group {group} to r1 r2\n")
    return "".join(lines)


class Daemon:
    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab, self.work = lab, work
        self.socket = str(work / "mfcd.sock")
        self.config = work / "mfcd.conf"
        self.settings = (
            f'socket_path = "{self.socket}"\nstate_file = "{work / "state.journal"}"\n'
            'socket_group = ""\nlog_level = "warning"\n'
        )

    def write(self, declarations: str) -> None:
        self.config.write_text(self.settings + declarations)

    def start(self) -> float:
        began = time.monotonic()
        self.proc = self.lab.spawn(self.lab.router, str(BIN / "mfcd"), "--config", str(self.config))
        while self.ctl("ping").returncode != 0:
            if self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read() if self.proc.stderr else "mfcd died")
            time.sleep(0.02)
        took = time.monotonic() - began
        self.cpu = cpu_seconds(self.proc.pid)  # (`ip netns exec` execs mfcd: the same pid)
        return took

    def fill_state(self, n: int) -> None:
        """Leave the state file with the bench's N routes (`mfcctl batch`) and a config
        without routes, mfcd stopped."""
        self.write("")
        self.start()
        batch = self.work / "batch.txt"
        batch.write_text(batch_text(n))
        if self.ctl("batch", str(batch)).returncode != 0:
            raise RuntimeError("mfcctl batch failed")
        self.lab.stop(self.proc)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "mfcctl"), "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    def reload(self) -> tuple[float, str]:
        began = time.monotonic()
        result = self.ctl("reload")
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return time.monotonic() - began, result.stdout.strip()


def longest_wait(path: str, stop: threading.Event, waits: list[float]) -> None:
    """Ping on an open connection every 10 ms until `stop`; record each wait."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        request = json.dumps({"v": 1, "id": 1, "cmd": "ping", "args": {}}).encode() + b"\n"
        while not stop.is_set():
            began = time.monotonic()
            sock.sendall(request)
            reader.readline()
            waits.append(time.monotonic() - began)
            time.sleep(0.01)


def bench_mfcd(n: int) -> dict[str, float]:
    lab = Lab(receivers=2)
    lab.create()
    try:
        with tempfile.TemporaryDirectory() as work:
            daemon = Daemon(lab, Path(work))
            daemon.write(config_text(n))
            start = daemon.start()
            start_cpu = daemon.cpu
            unchanged = statistics.median(daemon.reload()[0] for _ in range(3))
            one = []
            for k in range(3):
                daemon.write(config_text(n, changed=k))
                one.append(daemon.reload()[0])
            daemon.write(config_text(n, oifs='"r2"'))
            stop, waits = threading.Event(), list[float]()
            pinger = threading.Thread(target=longest_wait, args=(daemon.socket, stop, waits))
            pinger.start()
            time.sleep(0.1)
            every, _ = daemon.reload()
            stop.set()
            pinger.join()
            lab.stop(daemon.proc)
            daemon.fill_state(n)  # the same routes from the state file
            recovery = daemon.start()
            lab.stop(daemon.proc)
            return {
                "start_s": start,
                "recovery_s": recovery,
                "start_cpu_s": start_cpu,
                "recovery_cpu_s": daemon.cpu,
                "reload_unchanged_s": unchanged,
                "reload_one_changed_s": statistics.median(one),
                "reload_all_changed_s": every,
                "longest_wait_during_reload_s": max(waits),
            }
    finally:
        lab.destroy()


def bench_ab(n: int, base: str, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Start and recovery of revisions A (`base`) and B (this checkout) alternated."""
    revisions = {"A": str(Path(base).resolve()), "B": str(HERE.parent / "src")}
    rows: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    lab = Lab(receivers=2)
    lab.create()
    try:
        with tempfile.TemporaryDirectory() as work:
            daemon, state = Daemon(lab, Path(work)), Path(work) / "state.journal"
            os.environ["PYTHONPATH"] = revisions["B"]  # (lab.spawn passes the environment)
            daemon.fill_state(n)
            saved = Path(work) / "saved.journal"
            shutil.copy(state, saved)
            routes = config_text(n)
            for r in range(rounds):
                for rev in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    os.environ["PYTHONPATH"] = revisions[rev]
                    state.unlink(missing_ok=True)
                    daemon.write(routes)
                    start, start_cpu = daemon.start(), daemon.cpu
                    lab.stop(daemon.proc)
                    shutil.copy(saved, state)
                    daemon.write("")
                    recovery = daemon.start()
                    lab.stop(daemon.proc)
                    got = {
                        "start_s": start,
                        "recovery_s": recovery,
                        "ratio": start / recovery,
                        "start_cpu_s": start_cpu,
                        "recovery_cpu_s": daemon.cpu,
                        "cpu_ratio": start_cpu / daemon.cpu,
                    }
                    print(
                        f"round {r + 1} {rev}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items())
                    )
                    for k, v in got.items():
                        rows[rev].setdefault(k, []).append(v)
    finally:
        lab.destroy()
    return rows


def bench_smcroute(n: int) -> dict[str, float]:
    lab = Lab(receivers=2)
    lab.create()
    try:
        with tempfile.TemporaryDirectory() as work:
            conf, sock, pid = Path(work) / "smcroute.conf", f"{work}/smc.sock", Path(work) / "pid"
            conf.write_text(smcroute_text(n))
            began = time.monotonic()
            # Its output unread (DEVNULL): a full pipe would stall it.
            proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.router, "smcrouted", "-n", "-N", "-f", str(conf),
                 "-l", "none", "-u", sock, "-P", str(pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                text=True,
            )  # fmt: skip
            lab.processes.append(proc)  # killed by lab.destroy if the bench stops early
            while not pid.exists():
                if proc.poll() is not None:
                    raise RuntimeError("smcrouted died")
                time.sleep(0.02)
            start = time.monotonic() - began

            def ctl(*args: str) -> int:
                cmd = ["smcroutectl", "-u", sock, *args]
                # (stdin closed: smcroutectl reads commands from a stdin that is not a tty)
                done = subprocess.run(cmd, capture_output=True, input="", text=True, check=False)
                return done.returncode

            began = time.monotonic()
            ctl("reload")
            while ctl("-p", "show", "routes") != 0:  # answered once the reload is done
                if time.monotonic() - began > 600:
                    raise RuntimeError("smcrouted did not answer after its reload")
                time.sleep(0.02)
            reload = time.monotonic() - began
            proc.terminate()
            proc.wait(timeout=30)
            return {"start_s": start, "reload_unchanged_s": reload}
    finally:
        lab.destroy()


def main() -> int:
    # A stop (timeout, Ctrl-C) still deletes the lab's namespaces.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--smcroute-routes", type=int, nargs="*", default=[10_000])
    parser.add_argument("--base", help="A/B of start and recovery: revision A's src directory")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the A/B (--base)")
    args = parser.parse_args()
    if args.base:
        for n in args.routes:
            rows = bench_ab(n, args.base, args.rounds)
            print(f"\n{n} routes, medians (ranges) of {args.rounds} rounds:")
            for rev, values in rows.items():
                for k, v in values.items():
                    print(f"  {rev} {k}: {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        return 0
    results: dict[str, dict[str, dict[str, float]]] = {"mfcd": {}, "smcroute": {}}
    for n in args.routes:
        results["mfcd"][str(n)] = bench_mfcd(n)
        print(f"mfcd {n}: {results['mfcd'][str(n)]}", flush=True)
    for n in args.smcroute_routes:
        results["smcroute"][str(n)] = bench_smcroute(n)
        print(f"smcroute {n}: {results['smcroute'][str(n)]}", flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

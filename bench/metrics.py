"""Benchmark of /metrics: how long a scrape of N routes with per-route series takes, and how
long it holds other clients of mfcd (docs/benchmarks.md, "Metrics scrape").

Usage (as root, from the repository): `.venv/bin/python bench/metrics.py [--routes N]
[--scrapes K]`. It builds the lab's namespaces (lab/netns.py), starts the venv's mfcd in
the router namespace with metrics on 127.0.0.1:PORT and per-route series for every route,
installs N routes with one `mfcctl batch`, then, from a process in the router namespace,
scrapes K times while a second thread sends `ping` on the control socket every 5 ms and
times each answer. It prints one JSON object: the scrape times, the page size, and the
slowest ping during the scrapes against the slowest ping with no scrape running. Every
namespace and process it starts is removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from nsagent import route_addr  # noqa: E402

from lab.netns import Lab  # noqa: E402

BIN = Path(sys.executable).parent
T = TypeVar("T")
PORT = 10040
PING = b'{"v":1,"id":1,"cmd":"ping"}\n'
PING_EVERY = 0.005  # seconds between two pings


def pinger(path: str, stop: threading.Event, latencies: list[float]) -> None:
    """Ping mfcd on one connection until `stop`; record each round trip in seconds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        reader = sock.makefile("rb")
        while not stop.is_set():
            began = time.perf_counter()
            sock.sendall(PING)
            reader.readline()
            latencies.append(time.perf_counter() - began)
            time.sleep(PING_EVERY)


def ping_while(path: str, action: Callable[[], T]) -> tuple[list[float], T]:
    """Ping while `action()` runs: the round trips, and what it returned."""
    stop, latencies = threading.Event(), list[float]()
    thread = threading.Thread(target=pinger, args=(path, stop, latencies))
    thread.start()
    try:
        result = action()
    finally:
        stop.set()
        thread.join()
    return latencies, result


URL = f"http://127.0.0.1:{PORT}/metrics"
SCRAPE = f"""
import time, urllib.request
began = time.perf_counter()
with urllib.request.urlopen("{URL}", timeout=60) as r:
    size = sum(len(block) for block in iter(lambda: r.read(1 << 20), b""))
print(time.perf_counter() - began, size)
"""


CURL = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"]


def scrape(gzip: bool = False) -> tuple[float, int]:
    """One scrape, by another process (so that it does not hold the pinger's GIL): curl,
    which like Prometheus reads the page at C speed, else Python's urllib (slower: its
    time then includes Python's parsing of 33 MB)."""
    command = [*CURL, URL] if shutil.which("curl") else [sys.executable, "-c", SCRAPE]
    if gzip:  # (size_download is then the compressed size)
        command = [*CURL, "--compressed", URL]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    seconds, size = out.stdout.split()
    return float(seconds), int(size)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (proc(5): fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe(path: str, scrapes: int, pid: int, gzip: bool) -> dict[str, object]:
    """In the router namespace: the measurements."""
    idle, _ = ping_while(path, lambda: time.sleep(3.0))
    times: list[float] = []
    cpu: list[float] = []
    sizes: list[int] = []
    during: list[float] = []
    for _ in range(scrapes):
        before = cpu_seconds(pid)
        latencies, (seconds, size) = ping_while(path, lambda: scrape(gzip))
        cpu.append(cpu_seconds(pid) - before)  # the pings' share is some milliseconds
        times.append(seconds)
        sizes.append(size)
        during += latencies
    return {
        "scrape_seconds": [round(t, 3) for t in times],
        "scrape_median_seconds": round(statistics.median(times), 3),
        "mfcd_cpu_seconds": [round(t, 2) for t in cpu],
        "page_bytes": sizes[-1],
        "series": None,
        "ping_max_idle_ms": round(max(idle) * 1000, 1),
        "ping_max_during_scrape_ms": round(max(during) * 1000, 1),
        "ping_p99_during_scrape_ms": round(statistics.quantiles(during, n=100)[98] * 1000, 1),
        "pings_during_scrapes": len(during),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--probe", metavar="SOCKET", help=argparse.SUPPRESS)
    parser.add_argument("--pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--gzip", action="store_true", help="ask for the page gzipped (curl)")
    parser.add_argument("--prefix", help="namespace name prefix (default: mfcdt<random>)")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.scrapes, args.pid, args.gzip)))
        return 0
    # SIGTERM ends the run through the finally below, which removes what it made.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    lab = Lab(receivers=1, prefix=args.prefix)
    lab.create()
    work = Path(tempfile.mkdtemp(prefix="mfcd-bench-metrics-"))
    sock = str(work / "mfcd.sock")
    config = work / "mfcd.conf"
    config.write_text(
        f'socket_path = "{sock}"\nstate_file = "{work / "state.journal"}"\nsocket_group = ""\n'
        'log_level = "debug"\n'
        f'metrics_listen = "127.0.0.1:{PORT}"\nmetrics_route_series_max = {args.routes}\n'
    )
    daemon = lab.spawn(lab.router, str(BIN / "mfcd"), "--config", str(config))
    try:
        ctl = [str(BIN / "mfcctl"), "--socket", sock]
        for _ in range(200):
            if subprocess.run([*ctl, "ping"], capture_output=True, check=False).returncode == 0:
                break
            time.sleep(0.05)
        batch = "".join(
            f"mfc add --source {s} --group {g} --iif r0 --oifs r1\n"
            for s, g in map(route_addr, range(args.routes))
        )
        subprocess.run(
            [*ctl, "batch", "-"], input=batch, text=True, check=True, capture_output=True
        )
        measured = lab.exec(
            lab.router,
            sys.executable,
            __file__,
            "--probe",
            sock,
            "--scrapes",
            str(args.scrapes),
            "--pid",
            str(daemon.pid),
            *(["--gzip"] if args.gzip else []),
            timeout=600,
        )
        if measured.returncode != 0:
            raise SystemExit(measured.stderr)
        result = json.loads(measured.stdout)
        result["routes"] = args.routes
        result["series"] = 3 * args.routes
        _, _, log = lab.stop(daemon)
        # mfcd's own view: the longest the loop was held for one slice of each page.
        held = re.findall(r"the loop held for ([0-9.]+) ms at most", log)
        built = re.findall(r"metrics: [0-9]+ bytes \([0-9]+ sent\) in ([0-9.]+) s", log)
        result["mfcd_page_seconds"] = [float(s) for s in built]
        result["loop_held_max_ms"] = [float(ms) for ms in held]
        print(json.dumps(result, indent=1))
    finally:
        lab.stop(daemon)
        lab.destroy()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())

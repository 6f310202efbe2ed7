"""Drift checks and `mfcctl sync` at a million routes: how long they take, and whether mfcd answers.

Usage (root): python bench/drift.py [--routes 1000000] [--full]

Creates one network namespace (`mfcdd<random>`) holding four veth pairs whose `r0`..`r3`
ends carry the routes, starts mfcd in it (log level info, state file in a temporary
directory), loads the routes with one `mfcctl batch`, then times:

- `mfcctl -n sync` and `mfcctl sync` (above 100,000 routes: VIFs from /proc, every route's
  entry probed with SIOCGETSGCNT, and with `sync` written again);
- the drift check after `r3` is deleted and created again (10 routes use it), and after
  `r1` is (every other route uses it): the time mfcd's log line reports (every route on
  the interface probed), and the longest a `ping` request waited from the event to the
  end of the check (the event itself writes every entry on the interface again, in one
  go);
- with --full, `sync` with the `full` argument, which dumps the kernel's whole MFC (minutes
  at 1,000,000 entries).

The host's interfaces are never touched; mfcd is stopped by pid and the namespace deleted,
also on errors. Results go to stdout as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
FEW = 10  # routes on r3


def run(*cmd: str, timeout: float = 600) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def group(n: int) -> str:
    return f"232.{n >> 16}.{(n >> 8) & 255}.{n & 255}"


def batch_text(routes: int) -> str:
    lines = [
        f"mfc add --source 198.18.0.2 --group {group(n)} --iif r0 --oifs r2,r3" for n in range(FEW)
    ]
    lines += [
        f"mfc add --source 198.18.0.3 --group {group(n)} --iif r0 --oifs r1"
        for n in range(routes - FEW)
    ]
    return "\n".join(lines) + "\n"


class Client:
    """One connection to mfcd's control socket; requests one after the other."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(3600)
        self.sock.connect(path)
        self.stream = self.sock.makefile("rwb")
        self.ids = 0

    def call(self, cmd: str, args: dict[str, Any] | None = None, dry_run: bool = False) -> Any:
        self.ids += 1
        request = {"v": 1, "id": self.ids, "cmd": cmd, "args": args or {}, "dry_run": dry_run}
        self.stream.write(json.dumps(request).encode() + b"\n")
        self.stream.flush()
        response = json.loads(self.stream.readline())
        if not response.get("ok"):
            raise RuntimeError(f"{cmd}: {response}")
        return response["result"]

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def call(path: str, cmd: str, args: dict[str, Any] | None = None, dry_run: bool = False) -> Any:
    """One request on a connection of its own (mfcd closes one idle for client_timeout)."""
    client = Client(path)
    try:
        return client.call(cmd, args, dry_run)
    finally:
        client.close()


# The floor: a plain loop of SIOCGETSGCNT over the same (S,G)s from a raw socket of its own,
# run in the namespace in the same load; the probe part of a check cannot be faster.
PROBE_LOOP = """
import fcntl, socket, struct, sys, time
n, few = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
req = struct.Struct("@4s4sLLL")
def grp(i):
    return socket.inet_aton(f"232.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
src = socket.inet_aton("198.18.0.3")
bufs = [bytearray(req.pack(src, grp(i), 0, 0, 0)) for i in range(n - few)]
fd, ioctl = s.fileno(), fcntl.ioctl
t = time.perf_counter()
for b in bufs:
    ioctl(fd, 0x89E1, b, True)
print(time.perf_counter() - t)
"""


def timed(what: str, results: dict[str, Any], fn: Any, *args: Any, **kwargs: Any) -> Any:
    started = time.monotonic()
    value = fn(*args, **kwargs)
    results[what] = round(time.monotonic() - started, 3)
    print(f"{what}: {results[what]} s", file=sys.stderr, flush=True)
    return value


def longest_wait(path: str, stop: threading.Event, out: list[float]) -> None:
    """Ping mfcd in a loop until `stop`; record the longest answer time."""
    client = Client(path)
    try:
        while not stop.is_set():
            started = time.monotonic()
            client.call("ping")
            out.append(time.monotonic() - started)
            time.sleep(0.005)
    finally:
        client.close()


def drift_check(ns: str, name: str, log: Path, sock: str, results: dict[str, Any]) -> None:
    """Delete and re-create `name`; wait for the check's log line; record what it says."""
    seen = log.read_text().count("drift check of")
    run("ip", "-n", ns, "link", "del", name)
    started = time.monotonic()
    run("ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", f"p{name[1:]}")
    run("ip", "-n", ns, "link", "set", name, "up")
    stop, waits = threading.Event(), []  # type: ignore[var-annotated]
    pinger = threading.Thread(target=longest_wait, args=(sock, stop, waits))
    pinger.start()
    try:
        while log.read_text().count("drift check of") == seen:
            if time.monotonic() - started > 3600:
                raise RuntimeError("no drift check within an hour")
            time.sleep(0.1)
    finally:
        stop.set()
        pinger.join()
    line = [ln for ln in log.read_text().splitlines() if "drift check of" in ln][-1]
    match = re.search(r": (\d+) entries checked.* in ([\d.]+) s", line)
    assert match is not None, line
    results[f"check {name}: routes checked"] = int(match.group(1))
    results[f"check {name}: check s"] = float(match.group(2))
    results[f"check {name}: event to check done s"] = round(time.monotonic() - started, 3)
    results[f"check {name}: longest ping wait s"] = round(max(waits, default=0.0), 3)
    print(line, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=1_000_000)
    parser.add_argument("--full", action="store_true", help="also time sync with a full dump")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("drift.py: needs root (it creates a network namespace)")
    ns = f"mfcdd{secrets.token_hex(3)}"
    results: dict[str, Any] = {"routes": args.routes}
    proc = None
    with tempfile.TemporaryDirectory(prefix="mfcd-drift-") as tmp:
        work = Path(tmp)
        sock, log = str(work / "mfcd.sock"), work / "mfcd.log"
        (work / "mfcd.conf").write_text(
            f'socket_path = "{sock}"\nstate_file = "{work / "state.journal"}"\n'
            'socket_group = ""\nlog_level = "info"\nmax_request_bytes = 1073741824\n'
        )
        try:
            run("ip", "netns", "add", ns)
            for k in range(4):
                run("ip", "-n", ns, "link", "add", f"r{k}", "type", "veth", "peer", "name", f"p{k}")
                run("ip", "-n", ns, "link", "set", f"r{k}", "up")
            with log.open("w") as err:
                proc = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        str(BIN / "mfcd"),
                        "--config",
                        str(work / "mfcd.conf"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mfcd did not start: {log.read_text()}")
                time.sleep(0.05)
            batch = work / "routes.batch"
            batch.write_text(batch_text(args.routes))
            timed(
                "load (mfcctl batch)",
                results,
                run,
                str(BIN / "mfcctl"),
                "--socket",
                sock,
                "batch",
                str(batch),
                timeout=3600,
            )
            floor = run(
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-c",
                PROBE_LOOP,
                str(args.routes),
                str(FEW),
            )
            results["floor: SIOCGETSGCNT loop s"] = round(float(floor), 3)
            dry = timed("mfcctl -n sync", results, call, sock, "sync", dry_run=True)
            results["dry run repairs"] = len(dry["repairs"])
            done = timed("mfcctl sync", results, call, sock, "sync")
            results["sync repairs"], results["sync full"] = len(done["repairs"]), done["full"]
            drift_check(ns, "r3", log, sock, results)
            drift_check(ns, "r1", log, sock, results)
            if args.full:
                timed("sync full (netlink dump)", results, call, sock, "sync", {"full": True})
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        results["mfcd log lines"] = len(log.read_text().splitlines())
    results["load average (1, 5, 15 min)"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of learning from templates: mfcd against smcroute's (*,G), same traffic, one run.

Usage (as root, from the repository): `.venv/bin/python bench/learning.py [--flows N]
[--rate R] [--preload 0,10000]`. Results are printed and written as JSON to
bench/results/learning-<time>.json.

Each tool runs in a lab of its own (lab.netns: sender -> r0 -> router -> r1 -> receiver)
with one template, `239.9.0.0/16` from r0 to r1 (mfcd: `mfcctl mfc add --group
239.9.0.0/16 --iif r0 --oifs r1`; smcroute: `mroute from r0 group 239.9.0.0/16 to r1`).
The sender writes raw packets, each from a source no route names, so every packet is the
first of a new flow:

1 first packets  N new flows at R flows/s, one packet each, to 239.9.0.1: how many
                 reach the receiver (the kernel holds each flow's first packet on an
                 unresolved entry until the daemon installs the (S,G)), and the latency
                 from send to receipt, p50 and p99 (upcall, learning, install and the
                 kernel's forwarding of the held packet: an upper bound of the daemon's
                 upcall-to-install time).
2 learning rate  with P entries learned already (P new flows to 239.9.0.2 first), N new
                 flows sent at once to 239.9.0.3: the time until the kernel holds all N
                 (counted with `ip mroute`), and the rate.
3 expiry stall   (mfcd only) E flows learned, then a ping every 5 ms on an open connection
                 while all E go idle and expire (learned_idle_timeout 30 s): round trips,
                 p50, p99 and the longest.
4 drain stall    (mfcd only, `--drain-entries D`) D flows learned, then `mfcctl flush`
                 while pinging as in 3; D learned again, then the template deleted while
                 pinging: each command's time, p99 and longest round trip. With `--base
                 SRC` it runs for that revision's `src` (A) and this checkout (B) in turn.

Every process this program starts is stopped by pid and every namespace removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.netns import Lab  # noqa: E402
from lab.traffic import _datagram  # noqa: E402

BIN = Path(sys.executable).parent
TEMPLATE = "239.9.0.0/16"
PORT = 5000


# --- the two ends, run in the namespaces (`bench/learning.py recv|send ...`) ---------------------


def recv(group: str, ifname: str) -> None:
    """Join `group` on `ifname`, print "ready", then at SIGTERM {index: receive time}."""
    ifindex = socket.if_nametoindex(ifname)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((group, PORT))
    mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", ifindex)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    sock.settimeout(0.05)
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    got: dict[int, float] = {}
    print("ready", flush=True)
    while not stop:
        try:
            data = sock.recv(2048)
        except TimeoutError:
            continue
        got.setdefault(int(data.split()[-1]), time.monotonic())
    print(json.dumps(got), flush=True)


def send(group: str, ifname: str, first: str, count: int, rate: float) -> None:
    """One packet from each of `count` sources from `first` on, `rate` a second (0: at
    once); print the send time of each."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    base = int.from_bytes(socket.inet_aton(first), "big")
    grp = socket.inet_aton(group)
    sent = []
    start = time.monotonic()
    for i in range(count):
        if rate:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        packet = _datagram(4, (base + i).to_bytes(4, "big"), grp, PORT, b"flow %d" % i)
        sent.append(time.monotonic())
        sock.sendto(packet, (group, 0))
    print(json.dumps(sent), flush=True)


# --- the daemons -----------------------------------------------------------------------------


class Tool:
    name = ""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)
            self.proc = None


class Mfcd(Tool):
    name = "mfcd"
    idle_timeout = 60.0
    src: Path | None = None  # run this `src` directory's mfcd (None: the checkout's venv)

    def start(self) -> None:
        sock = self.sock = self.workdir / "mfcd.sock"
        config = self.workdir / "mfc_daemon.conf"
        config.write_text(
            f'socket_path = "{sock}"\nstate_file = "{self.workdir / "state"}"\n'
            'socket_group = ""\nlog_level = "warning"\nmax_learned = 1000000\n'
            f"learned_idle_timeout = {self.idle_timeout}\n"
        )
        self.ctl = [str(BIN / "mfcctl"), "--socket", str(sock)]
        daemon = [str(BIN / "mfcd")]
        self.env: dict[str, str] | None = None
        if self.src is not None:
            self.env = dict(os.environ, PYTHONPATH=str(self.src))
            self.ctl = [sys.executable, "-m", "mfcd.cli", "--socket", str(sock)]
            daemon = [sys.executable, "-m", "mfcd.daemon"]
        self.proc = self.lab.spawn(self.lab.router, *daemon, "--config", str(config), env=self.env)
        deadline = time.monotonic() + 20
        while self.mfcctl("ping", check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("mfcd did not start")
            time.sleep(0.05)
        self.mfcctl("mfc", "add", "--group", TEMPLATE, "--iif", "r0", "--oifs", "r1")

    def mfcctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ctl, *args], check=check, capture_output=True, text=True, env=self.env
        )


class Smcroute(Tool):
    name = "smcroute"

    def start(self) -> None:
        config = self.workdir / "smcroute.conf"
        config.write_text(
            f"phyint r0 enable\nphyint r1 enable\nmroute from r0 group {TEMPLATE} to r1\n"
        )
        pidfile = self.workdir / "smcroute.pid"
        self.proc = self.lab.spawn(
            self.lab.router,
            "smcrouted",
            "-n",
            "-N",
            "-f",
            str(config),
            "-l",
            "none",
            "-u",
            str(self.workdir / "smcroute.sock"),
            "-P",
            str(pidfile),
        )
        deadline = time.monotonic() + 20
        while not pidfile.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("smcrouted did not start")
            time.sleep(0.05)


# --- scenarios -------------------------------------------------------------------------------


def resolved(lab: Lab, group: str) -> int:
    """(S,G) entries of `group` the kernel holds, resolved ones only."""
    out = lab.ip(lab.router, "mroute", "show")
    return sum(1 for line in out.splitlines() if f",{group})" in line and "unresolved" not in line)


def first_packets(lab: Lab, flows: int, rate: float) -> dict[str, Any]:
    group = "239.9.0.1"
    receiver = lab.spawn(lab.rx[0], sys.executable, __file__, "recv", group, "x0")
    assert receiver.stdout is not None
    if receiver.stdout.readline().strip() != "ready":
        raise RuntimeError("receiver failed")
    sent = lab.exec(
        lab.sender,
        sys.executable,
        __file__,
        "send",
        group,
        "s0",
        "198.18.64.1",
        str(flows),
        str(rate),
    )
    times = json.loads(sent.stdout)
    time.sleep(1.0)
    _, out, _ = lab.stop(receiver)
    got = {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}
    latencies = sorted((got[i] - times[i]) * 1000 for i in got)
    return {
        "flows": flows,
        "rate": rate,
        "delivered": len(got),
        "lost": flows - len(got),
        "latency_ms_p50": round(statistics.median(latencies), 3) if latencies else None,
        "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 3)
        if latencies
        else None,
    }


def learning_rate(lab: Lab, preload: int, flows: int) -> dict[str, Any]:
    if preload:
        lab.exec(
            lab.sender,
            sys.executable,
            __file__,
            "send",
            "239.9.0.2",
            "s0",
            "198.20.0.1",
            str(preload),
            "0",
        )
        deadline = time.monotonic() + 30
        while resolved(lab, "239.9.0.2") < preload and time.monotonic() < deadline:
            time.sleep(0.2)
    started = time.monotonic()
    lab.exec(
        lab.sender,
        sys.executable,
        __file__,
        "send",
        "239.9.0.3",
        "s0",
        "198.19.0.1",
        str(flows),
        "0",
    )
    deadline = started + 30
    count = 0
    while time.monotonic() < deadline:
        count = resolved(lab, "239.9.0.3")
        if count >= flows:
            break
        time.sleep(0.01)
    seconds = time.monotonic() - started
    return {
        "preload": preload,
        "preloaded": resolved(lab, "239.9.0.2"),
        "flows": flows,
        "learned": count,
        "seconds": round(seconds, 3),
        "flows_per_s": round(count / seconds),
    }


def expiry_stall(lab: Lab, mfcd: Mfcd, entries: int) -> dict[str, Any]:
    """`entries` flows learned (sent at 5,000 a second), then pings on an open connection
    every 5 ms while they all go idle and expire: the longest and p99 round trips."""
    lab.exec(
        lab.sender,
        sys.executable,
        __file__,
        "send",
        "239.9.0.4",
        "s0",
        "198.21.0.1",
        str(entries),
        "5000",
        timeout=600,
    )
    learned, before = resolved(lab, "239.9.0.4"), -1
    while learned > before:  # until no more come in
        time.sleep(1)
        before, learned = learned, resolved(lab, "239.9.0.4")
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(mfcd.sock))
    reader = client.makefile("rb")
    rtts = []
    until = time.monotonic() + mfcd.idle_timeout * 1.5 + 5
    while time.monotonic() < until:
        started = time.monotonic()
        client.sendall(b'{"v":1,"id":1,"cmd":"ping"}\n')
        reader.readline()
        rtts.append((time.monotonic() - started) * 1000)
        time.sleep(0.005)
    client.close()
    rtts.sort()
    return {
        "learned": learned,
        "left_after": resolved(lab, "239.9.0.4"),
        "idle_timeout": mfcd.idle_timeout,
        "pings": len(rtts),
        "rtt_ms_p50": round(statistics.median(rtts), 3),
        "rtt_ms_p99": round(rtts[int(0.99 * (len(rtts) - 1))], 3),
        "rtt_ms_max": round(rtts[-1], 3),
    }


def learn(lab: Lab, group: str, first: str, entries: int) -> int:
    """`entries` flows to `group` from `first` on, sent at 5,000 a second: how many the
    kernel then holds resolved."""
    lab.exec(
        lab.sender, sys.executable, __file__, "send", group, "s0", first, str(entries), "5000",
        timeout=600,
    )  # fmt: skip
    learned, before = resolved(lab, group), -1
    while learned > before:  # until no more come in
        time.sleep(1)
        before, learned = learned, resolved(lab, group)
    return learned


def stall_of(mfcd: Mfcd, *command: str) -> dict[str, Any]:
    """Run an mfcctl command while pinging on an open connection every 5 ms: its time, and
    the ping round trips while it ran."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(mfcd.sock))
    reader = client.makefile("rb")
    rtts = []
    started = time.monotonic()
    proc = subprocess.Popen(
        [*mfcd.ctl, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=mfcd.env,
    )
    while proc.poll() is None:
        sent = time.monotonic()
        client.sendall(b'{"v":1,"id":1,"cmd":"ping"}\n')
        reader.readline()
        rtts.append((time.monotonic() - sent) * 1000)
        time.sleep(0.005)
    took = time.monotonic() - started
    client.close()
    if proc.returncode:
        raise RuntimeError(
            f"mfcctl {' '.join(command)}: {proc.stderr.read() if proc.stderr else ''}"
        )
    rtts.sort()
    return {
        "s": round(took, 2),
        "pings": len(rtts),
        "rtt_ms_p99": round(rtts[int(0.99 * (len(rtts) - 1))], 1),
        "rtt_ms_max": round(rtts[-1], 1),
    }


def drain(lab: Lab, mfcd: Mfcd, entries: int) -> dict[str, Any]:
    """`entries` flows learned, then `mfcctl flush` while pinging; as many learned again,
    then the template deleted while pinging."""
    row: dict[str, Any] = {"learned": learn(lab, "239.9.0.5", "198.21.0.1", entries)}
    row["flush"] = stall_of(mfcd, "flush")
    row["learned again"] = learn(lab, "239.9.0.6", "198.22.0.1", entries)
    row["template del"] = stall_of(mfcd, "mfc", "del", "--group", TEMPLATE, "--iif", "r0")
    row["left"] = resolved(lab, "239.9.0.6")
    return row


def run_drain(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """drain() for the `--base` revision (A) and this checkout (B) in turn, A B A B."""
    revisions: dict[str, Path | None] = {"B (this checkout)": None}
    if args.base is not None:
        revisions = {"A (base)": args.base.resolve(), **revisions}
    rows: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeat):
        for label, src in revisions.items():
            lab = Lab(receivers=1)
            workdir = Path(tempfile.mkdtemp(prefix="mfcd-bench-learning-"))
            lab.create()
            mfcd = Mfcd(lab, workdir)
            mfcd.idle_timeout = 600.0  # nothing expires during the run
            mfcd.src = src
            try:
                for conf in ("all", "r0"):
                    lab.exec(lab.router, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
                mfcd.start()
                row = drain(lab, mfcd, args.drain_entries)
                print(f"mfcd drain run {repeat + 1} {label}: {row}", flush=True)
                rows.setdefault(label, []).append(row)
            finally:
                mfcd.stop()
                lab.destroy()
                shutil.rmtree(workdir, ignore_errors=True)
    return rows


def run_expiry(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for repeat in range(args.repeat):
        lab = Lab(receivers=1)
        workdir = Path(tempfile.mkdtemp(prefix="mfcd-bench-learning-"))
        lab.create()
        mfcd = Mfcd(lab, workdir)
        mfcd.idle_timeout = 30.0  # longer than sending them all takes
        try:
            for conf in ("all", "r0"):
                lab.exec(lab.router, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
            mfcd.start()
            row = expiry_stall(lab, mfcd, args.expiry_entries)
            print(f"mfcd expiry run {repeat + 1}: {row}", flush=True)
            rows.append(row)
        finally:
            mfcd.stop()
            lab.destroy()
            shutil.rmtree(workdir, ignore_errors=True)
    return rows


def run_tool(tool_cls: type[Tool], args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"tool": tool_cls.name, "first_packets": [], "learning_rate": []}
    for repeat in range(args.repeat):
        for preload in [None, *args.preload]:
            lab = Lab(receivers=1)
            workdir = Path(tempfile.mkdtemp(prefix="mfcd-bench-learning-"))
            lab.create()
            tool = tool_cls(lab, workdir)
            try:
                for conf in ("all", "r0"):
                    lab.exec(lab.router, "sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
                tool.start()
                if preload is None:
                    row = first_packets(lab, args.flows, args.rate)
                    result["first_packets"].append(row)
                else:
                    row = learning_rate(lab, preload, args.flows)
                    result["learning_rate"].append(row)
                print(f"{tool.name} run {repeat + 1}: {row}", flush=True)
            finally:
                tool.stop()
                lab.destroy()
                shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "recv":
        recv(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=1000, help="new flows (0: only expiry)")
    parser.add_argument("--rate", type=float, default=1000.0, help="new flows per second")
    parser.add_argument("--preload", default="0,10000", help="learned entries present first")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--expiry-entries", type=int, default=100_000, help="learned entries expiring (0: skip)"
    )
    parser.add_argument(
        "--drain-entries",
        type=int,
        default=0,
        help="learned entries flushed, then let go with their template (0: skip)",
    )
    parser.add_argument("--base", type=Path, help="src directory of the revision to compare (A)")
    args = parser.parse_args()
    args.preload = [int(p) for p in args.preload.split(",") if p]
    if os.geteuid() != 0:
        print("bench/learning.py: needs root (network namespaces)", file=sys.stderr)
        return 1
    results: list[Any] = []
    if args.flows:
        results += [run_tool(Mfcd, args), run_tool(Smcroute, args)]
    if args.expiry_entries:
        results.append({"tool": "mfcd", "expiry": run_expiry(args)})
    if args.drain_entries:
        results.append({"tool": "mfcd", "drain": run_drain(args)})
    out = ROOT / "bench" / "results" / f"learning-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"args": vars(args), "results": results}, indent=1, default=str) + "\n"
    )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

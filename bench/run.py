"""Benchmarks: mfcd against smcroute and against the kernel's own limit, like for like, in one run.

Usage (as root, from the repository): `make bench` (full run, up to 1,000,000 routes; see
docs/benchmarks.md for its duration) or `make bench-quick` (small N, under a minute; the
test suite runs it).  Results are printed as a table of medians, paired ratios with their
range, growth exponents and target verdicts, and written as JSON to bench/results/.

Every tool runs in its own network namespace (one MRT_INIT per table per namespace)
with interfaces r0 (VIF 0, the iif) and r1 (VIF 1, the oif), the two ends of one veth
pair created inside that namespace, and r2 (a second oif, one end of another pair): the
host's interfaces are never touched and no packet is sent.  An agent (nsagent.py) in
each namespace runs the raw setsockopt loop and answers "is route i in the kernel yet?"
with an O(1) SIOCGETSGCNT, so that polling never dominates what is measured; above
Settings.proc_max routes the kernel is checked by probing a sample of routes that way,
because dumping /proc/net/ip_mr_cache is super-linear (minutes at 1,000,000).  Every
process this program starts is stopped by pid and every namespace deleted on exit, also
on errors and SIGTERM.

Like for like: a CLI is compared with a CLI (a process start each), an open connection
with smcroute's closest equivalent (its own IPC message on a fresh connection, which is
all smcrouted accepts: one request per connection), and every comparison runs its two
sides in turn (A B A B), so each ratio is taken over pairs measured back to back and
reported with its range.  A batch is timed until the daemon answers the next request,
not until its own answer, because mfcd compacts its journal after answering and
everyone waits for that.

Scenarios (docs/benchmarks.md explains each and the targets):
  1 bulk install   mfcctl batch of N routes, until mfcd answers the next request
                   | smcroutectl -b of N adds | smcrouted started with N routes | raw loop
  2 recovery       mfcd restart with N routes in its state file -> answers a request
                   | smcrouted restart with N routes -> all in the kernel and serving | raw
  3 one command    C x each of mfcctl mfc add, ping, show, batch FILE | smcroutectl add,
                   show | python3 -I -c pass, all interleaved
  4 show           mfcctl show (table, json) | smcroutectl show routes | reading /proc
  5 one change     one add with a small and a large table: open connection | smcroute's
                   IPC on a fresh connection | mfcctl | smcroutectl | one setsockopt
  6 memory         peak (VmHWM) and settled (VmRSS) in MiB, after a batch and a restart
  7 line shapes    mfcctl batch of N lines of each valid shape against the usual one
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import itertools
import json
import math
import os
import platform
import secrets
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nsagent import IIF, OIF, OIF2, route_addr, status_kib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent  # the venv's mfcd and mfcctl, as in tests/netns
AGENT = str(HERE / "nsagent.py")
SMCROUTED = "smcrouted"
SMCROUTECTL = "smcroutectl"
MIB = 1024.0  # KiB per MiB: every memory figure is in MiB (2^20 bytes)
MB_IN_MIB = 1e6 / 2**20  # the memory target is in MB (10^6 bytes)
# Route indexes of scenarios 3 and 5, far above any bulk N (route_addr is distinct below 2^24).
COMMAND_BASE = 8_000_000
SCALING_BASE = 9_000_000


class BenchError(Exception):
    pass


class Stop(BaseException):
    """SIGTERM/SIGHUP: unwind through every `finally`, so everything is cleaned up."""


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]  # scenarios 1, 2 and 6: route counts (mfcd and the raw loop)
    repeats: int  # pairs per size in scenarios 1, 2 and 7
    smcroute_max: int  # largest N smcroute is asked to load (its start is super-linear)
    smcroute_repeat_max: int  # above this N, smcroute runs once instead of `repeats` times
    smcroute_batch_max: int  # largest N for smcroutectl -b (slower than its start)
    commands: int  # scenario 3: rounds, each running every command once
    show_sizes: tuple[int, ...]
    show_repeats: int
    scaling_small: int  # scenario 5: the small table
    scaling_sizes: tuple[int, ...]  # scenario 5: the large tables (must be in sizes)
    scaling_adds: int  # scenario 5: timed adds per case
    shape_n: int  # scenario 7: lines per batch
    proc_max: int  # largest N counted by reading /proc/net/ip_mr_cache; sampled above
    probes: int  # routes probed with SIOCGETSGCNT per sampled check
    blocks: int  # scenarios 3 and 5: ratios are taken per block of consecutive rounds
    timeout: float  # seconds any one wait may take

    def with_max_n(self, max_n: int) -> Settings:
        """The same run with no size above max_n (the largest one becomes max_n)."""
        sizes = tuple(sorted({min(n, max_n) for n in self.sizes}))

        def cap(ns: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(sorted({min(n, max_n) for n in ns}))

        return replace(
            self,
            sizes=sizes,
            show_sizes=cap(self.show_sizes),
            scaling_sizes=cap(self.scaling_sizes),
            shape_n=min(self.shape_n, max_n),
        )


FULL = Settings(
    sizes=(1_000, 10_000, 20_000, 40_000, 100_000, 1_000_000),
    repeats=3,
    # smcrouted's start grows with about N^2.3: 20 s at 20,000 on a quiet machine, 100 s at
    # 40,000 (4-7 minutes with the machine shared), 100,000 would take 10 minutes or more.
    smcroute_max=20_000,
    smcroute_repeat_max=10_000,
    smcroute_batch_max=10_000,
    commands=300,
    show_sizes=(10_000, 100_000, 1_000_000),
    show_repeats=5,
    scaling_small=100,
    scaling_sizes=(100_000, 1_000_000),
    scaling_adds=200,
    shape_n=100_000,
    proc_max=100_000,
    probes=2_000,
    blocks=5,
    timeout=1800,
)
QUICK = Settings(
    sizes=(100, 1_000),
    repeats=2,
    smcroute_max=1_000,
    smcroute_repeat_max=1_000,
    smcroute_batch_max=1_000,
    commands=10,
    show_sizes=(1_000,),
    show_repeats=2,
    scaling_small=100,
    scaling_sizes=(1_000,),
    scaling_adds=10,
    shape_n=1_000,
    proc_max=100_000,
    probes=100,
    blocks=2,
    timeout=60,
)


# --- results ---------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: int
    name: str  # what was measured, e.g. "bulk install"
    n: int
    tool: str  # mfcd | smcroute | raw (the kernel or interpreter floor)
    variant: str  # e.g. "mfcctl batch -> next answer", "smcroutectl -b"
    unit: str  # s | ms | MiB
    samples: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Comparison:
    """A / B over pairs measured back to back (A B A B ...): the ratio of each pair."""

    scenario: int
    n: int
    a: str  # variant names, as in Result
    b: str
    ratios: list[float]
    how: str  # "pairs" (one ratio per pair) or "blocks of K" (ratio of block medians)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)


@dataclass
class Growth:
    """t ~ N^k for one variant: k fitted over all sizes, and between the two largest."""

    scenario: int
    variant: str
    sizes: list[int]
    exponent: float
    last_exponent: float


@dataclass
class Results:
    rows: list[Result] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)

    def add(  # noqa: PLR0917 (one measurement is all these fields)
        self,
        scenario: int,
        name: str,
        n: int,
        tool: str,
        variant: str,
        unit: str,
        samples: Sequence[float],
        note: str = "",
    ) -> None:
        if not samples:
            return
        result = Result(scenario, name, n, tool, variant, unit, list(samples), note)
        self.rows.append(result)
        spread = (
            f"{_fmt(min(samples), unit)}-{_fmt(max(samples), unit)}" if len(samples) > 1 else ""
        )
        print(
            f"  [{scenario}] {name:<13} N={n:<8} {variant:<36} {_fmt(result.median, unit):>10}"
            f"  ({len(samples)} samples{', ' + spread if spread else ''})"
            f"{'  ' + note if note else ''}",
            flush=True,
        )

    def get(self, scenario: int, n: int, variant: str) -> Result | None:
        for r in self.rows:
            if r.scenario == scenario and r.n == n and r.variant == variant:
                return r
        return None

    def compare(self, scenario: int, n: int, a: str, b: str, blocks: int = 0) -> None:
        """Record A/B from the two variants' samples, taken in turn (sample i of each is a
        pair).  With `blocks`, the ratio of medians of each block of consecutive rounds:
        single commands are too noisy to pair one by one."""
        ra, rb = self.get(scenario, n, a), self.get(scenario, n, b)
        if ra is None or rb is None:
            return
        xs, ys = ra.samples, rb.samples
        k = min(len(xs), len(ys))
        if blocks and k >= blocks:
            size = k // blocks
            parts = [
                (xs[i * size : (i + 1) * size], ys[i * size : (i + 1) * size])
                for i in range(blocks)
            ]
            ratios = [statistics.median(x) / statistics.median(y) for x, y in parts]
            how = f"blocks of {size} rounds"
        else:
            ratios = [x / y for x, y in zip(xs[:k], ys[:k], strict=True) if y > 0]
            how = "pairs"
        if not ratios:
            return
        c = Comparison(scenario, n, a, b, ratios, how)
        self.comparisons.append(c)
        print(
            f"  [{scenario}] N={n:<8} {a} / {b}: {c.median:.2f}x"
            f" ({min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} {how})",
            flush=True,
        )

    def comparison(self, scenario: int, n: int, a: str, b: str) -> Comparison | None:
        for c in self.comparisons:
            if (c.scenario, c.n, c.a, c.b) == (scenario, n, a, b):
                return c
        return None

    def growth(self) -> list[Growth]:
        """Growth exponents of every timed variant measured at two or more sizes >= 1,000
        (below that, process start-up hides the per-route cost)."""
        out = []
        seen: set[tuple[int, str]] = set()
        for row in self.rows:
            key = (row.scenario, row.variant)
            if key in seen or row.unit != "s" or row.scenario not in (1, 2, 4):
                continue
            seen.add(key)
            points = sorted(
                (r.n, r.median)
                for r in self.rows
                if (r.scenario, r.variant) == key and r.n >= 1_000 and r.median > 0
            )
            if len(points) < 2:
                continue
            xs = [math.log(n) for n, _ in points]
            ys = [math.log(t) for _, t in points]
            mx, my = statistics.fmean(xs), statistics.fmean(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
                (x - mx) ** 2 for x in xs
            )
            last = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
            out.append(Growth(row.scenario, row.variant, [n for n, _ in points], slope, last))
        return out


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        if value < 0.001:
            return f"{value * 1e6:.0f} us"
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:.3g} {unit}"


# --- namespaces and agents -------------------------------------------------------------------


class Namespace:
    """A network namespace with interfaces r0, r1 (a veth pair) and r2, and an agent inside."""

    def __init__(self, name: str, processes: list[subprocess.Popen[Any]], s: Settings) -> None:
        self.name = name
        self.processes = processes
        self.s = s
        run("ip", "netns", "add", name)
        ip = ("ip", "-n", name)
        run(*ip, "link", "set", "lo", "up")
        run(*ip, "link", "add", IIF, "type", "veth", "peer", "name", OIF)
        run(*ip, "link", "add", OIF2, "type", "veth", "peer", "name", OIF2 + "p")
        for k, ifname in enumerate((IIF, OIF, OIF2)):
            run(*ip, "addr", "add", f"198.18.{k}.1/24", "dev", ifname)
            run(*ip, "link", "set", ifname, "up")
        run(*ip, "link", "set", OIF2 + "p", "up")
        self.agent = self.spawn(
            [sys.executable, "-I", AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        if self._read() != {"ready": True}:
            raise BenchError(f"agent in {name} did not start")

    def spawn(self, cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start a process in this namespace (`ip netns exec` execs it: same pid as the command)."""
        proc: subprocess.Popen[str] = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd], text=True, **kwargs
        )
        self.processes.append(proc)
        return proc

    def _read(self) -> dict[str, Any]:
        assert self.agent.stdout is not None
        line = self.agent.stdout.readline()
        if not line:
            raise BenchError(f"agent in {self.name} died")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise BenchError(f"agent in {self.name}: {reply['error']}")
        return reply

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self.send(cmd, **args)
        return self._read()

    def send(self, cmd: str, **args: Any) -> None:
        """Ask the agent without waiting for its answer (it works while we time something)."""
        assert self.agent.stdin is not None
        self.agent.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.agent.stdin.flush()

    def watch_route(self, index: int, timeout: float) -> Callable[[], float]:
        """Start polling for route `index` now; the returned function waits for the moment
        the agent saw it (monotonic), so that a route's arrival is timed while we wait for
        something else."""
        self.send("wait", index=index, timeout=timeout)

        def seen() -> float:
            value = self._read()["seen"]
            if value is None:
                raise BenchError(f"{self.name}: route {index} not in the kernel in {timeout} s")
            return float(value)

        return seen

    def wait_route(self, index: int, timeout: float) -> float:
        seen = self.call("wait", index=index, timeout=timeout)["seen"]
        if seen is None:
            raise BenchError(f"{self.name}: route {index} did not reach the kernel in {timeout} s")
        return float(seen)

    def wait_all(self, n: int, timeout: float, seen: float | None = None) -> float:
        """Monotonic time at which the kernel held all n routes (0..n-1, loaded in order);
        `seen`: when the last one was seen already (watch_route)."""
        if seen is None:
            seen = self.wait_route(n - 1, timeout) if n else time.monotonic()
        if n > self.s.proc_max:  # a dump would take minutes: probe a sample instead
            got = self.call("sample", start=0, n=n, probes=self.s.probes)
            if got["wrong"]:
                raise BenchError(f"{self.name}: {got['wrong']} of {got['probed']} probed missing")
            return seen
        got = self.call("count")["count"]
        if got < n:  # the last route came early: fall back to counting (coarser, rare)
            reply = self.call("wait_count", n=n, timeout=timeout)
            got, seen = reply["count"], reply["seen"]
        if got != n:
            raise BenchError(f"{self.name}: the kernel holds {got} entries, expected {n}")
        return seen

    def check_gone(self, n: int) -> None:
        """The kernel holds none of routes 0..n-1 (after a batch of deletes)."""
        got = self.call("sample", start=0, n=n, probes=self.s.probes, present=False)
        if got["wrong"]:
            raise BenchError(f"{self.name}: {got['wrong']} of {got['probed']} probed still there")


def memory_mib(pid: int) -> tuple[float, float]:
    """(peak, now) of a process: VmHWM and VmRSS in MiB."""
    return status_kib(pid, "VmHWM") / MIB, status_kib(pid, "VmRSS") / MIB


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# --- the tools -------------------------------------------------------------------------------


# Scenario 7: every valid shape of a generated batch line ("mfc add ... --oifs r1" is the
# usual one). {s} and {g} are route i's source and group.
SHAPES = {
    "mfc add, one oif": f"mfc add --source {{s}} --group {{g}} --iif {IIF} --oifs {OIF}\n",
    "add (no mfc), one oif": f"add --source {{s}} --group {{g}} --iif {IIF} --oifs {OIF}\n",
    "mfc add, oifs r1,r2": f"mfc add --source {{s}} --group {{g}} --iif {IIF}"
    f" --oifs {OIF},{OIF2}\n",
    "mfc add, oifs r1 r2": f"mfc add --source {{s}} --group {{g}} --iif {IIF}"
    f" --oifs {OIF} {OIF2}\n",
    "mfc del": "mfc del --source {s} --group {g}\n",
    "del (no mfc)": "del --source {s} --group {g}\n",
}
USUAL = "mfc add, one oif"


def batch_lines(start: int, n: int, shape: str = USUAL) -> str:
    line = SHAPES[shape]
    return "".join(line.format(s=s, g=g) for s, g in map(route_addr, range(start, start + n)))


class Mfcd:
    """The real daemon in its namespace, with its socket and state file in a work directory."""

    def __init__(self, ns: Namespace, workdir: Path, timeout: float) -> None:
        self.ns = ns
        self.workdir = workdir
        self.timeout = timeout
        self.socket = str(workdir / "mfcd.sock")
        self.state = workdir / "state.journal"
        self.config = workdir / "mfcd.conf"
        # Defaults otherwise (log level info, both families): what users run.
        self.config.write_text(
            f'socket_path = "{self.socket}"\nstate_file = "{self.state}"\nsocket_group = ""\n'
            # 1,000,000 batch lines are about 63 MB of request; the default limit is 64 MiB.
            "max_request_bytes = 268435456\n"
        )
        self.notify_path = str(workdir / "notify.sock")
        self.proc: subprocess.Popen[str] | None = None
        self.conn: socket.socket | None = None
        self._buffer = b""
        self._id = 0

    def start(self) -> tuple[float, float]:
        """Start; return (seconds until READY=1, seconds until it answered a request)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            notify.bind(self.notify_path)
            env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
            log = open(self.workdir / "mfcd.log", "a")  # noqa: SIM115 (closed below)
            started = time.monotonic()
            try:
                self.proc = self.ns.spawn(
                    [str(BIN / "mfcd"), "--config", str(self.config)],
                    env=env,
                    stdout=log,
                    stderr=log,
                )
            finally:
                log.close()
            notify.settimeout(self.timeout)
            while True:
                try:
                    message = notify.recv(4096)
                except TimeoutError:
                    raise BenchError(f"mfcd not ready in {self.timeout} s: {self.log()}") from None
                if b"READY=1" in message.split(b"\n"):
                    ready = time.monotonic() - started
                    break
        finally:
            notify.close()
        self.request("ping", {})
        return ready, time.monotonic() - started

    def log(self) -> str:
        try:
            return (self.workdir / "mfcd.log").read_text()[-2000:]
        except OSError:
            return ""

    def request(self, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        """One request over a kept-open connection (no client start in the timed path)."""
        if self.conn is None:
            self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.conn.settimeout(self.timeout)
            self.conn.connect(self.socket)
        self._id += 1
        msg = {"v": 1, "id": self._id, "cmd": cmd, "args": args}
        self.conn.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        while b"\n" not in self._buffer:
            data = self.conn.recv(1 << 20)
            if not data:
                raise BenchError(f"mfcd closed the connection: {self.log()}")
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"mfcd refused {cmd}: {reply.get('error')}")
        return reply

    def next_answer(self) -> float:
        """Monotonic time at which mfcd answered a ping on a fresh connection: work it does
        after answering a request (compaction) delays every client until it is done."""
        self.close_connection()  # a kept one may have met client_timeout meanwhile
        self.request("ping", {})
        return time.monotonic()

    def ctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "mfcctl"), "--socket", self.socket, *args],
            capture_output=True,
            text=True,
            input=stdin,
            timeout=self.timeout,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"mfcctl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def memory(self) -> tuple[float, float]:
        assert self.proc is not None
        return memory_mib(self.proc.pid)

    def close_connection(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            self._buffer = b""

    def stop(self) -> None:
        self.close_connection()
        if self.proc is not None:
            stop_process(self.proc)
            if self.proc.returncode != 0:
                raise BenchError(f"mfcd exited with {self.proc.returncode}: {self.log()}")
            self.proc = None

    def forget_state(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state.unlink()


class Smcroute:
    """smcrouted in its namespace: `-n -N` (foreground, no VIFs but the config's phyints)."""

    # smcroute's IPC message (src/msg.h): size_t len, uint16 cmd, uint16 count, then the
    # arguments as NUL-terminated strings from offset 16 (where `char *argv[]` starts), and
    # one more NUL.  The daemon reads one message per connection and answers with a
    # NUL-terminated string, empty on success.
    IPC_HEADER = struct.Struct("=QHH4x")

    def __init__(self, ns: Namespace, workdir: Path, timeout: float) -> None:
        self.ns = ns
        self.workdir = workdir
        self.timeout = timeout
        self.socket = str(workdir / "smcroute.sock")
        self.pidfile = workdir / "smcroute.pid"
        self.config = workdir / "smcroute.conf"
        self.config_n = -1  # routes in the config file as written
        self.proc: subprocess.Popen[str] | None = None

    def write_config(self, n: int) -> None:
        if n == self.config_n:
            return
        lines = [f"phyint {IIF} enable\n", f"phyint {OIF} enable\n"]
        for i in range(n):
            source, group = route_addr(i)
            lines.append(f"mroute from {IIF} source {source} group {group} to {OIF}\n")
        self.config.write_text("".join(lines))
        self.config_n = n

    def start(self, n: int) -> tuple[float, float]:
        """Start with n routes in its config; return (seconds until the kernel holds all n,
        seconds until it also serves its socket)."""
        self.write_config(n)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        started = time.monotonic()
        self.proc = self.ns.spawn(
            [
                SMCROUTED,
                "-n",
                "-N",
                "-f",
                str(self.config),
                "-l",
                "none",
                "-u",
                self.socket,
                "-P",
                str(self.pidfile),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen = self.ns.wait_all(n, self.timeout)
        # It writes its pid file once the whole config is applied and it serves its socket.
        deadline = time.monotonic() + self.timeout
        while not self.pidfile.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"smcrouted exited or never got ready ({self.proc.returncode})")
            time.sleep(0.0005)
        serving = time.monotonic()
        return seen - started, max(seen, serving) - started

    def ctl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [SMCROUTECTL, "-u", self.socket, *args],
            capture_output=True,
            text=True,
            input=stdin if stdin is not None else "",
            timeout=self.timeout,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"smcroutectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def ipc(self, cmd: str, *args: str) -> None:
        """One request as smcroutectl sends it, from this already running process: the
        closest smcroute has to a request on an open connection."""
        body = b"".join(a.encode() + b"\0" for a in args) + b"\0"
        header = self.IPC_HEADER.pack(self.IPC_HEADER.size + len(body), ord(cmd), len(args))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(self.timeout)
            conn.connect(self.socket)
            conn.sendall(header + body)
            reply = b""
            while not reply.endswith(b"\0"):
                data = conn.recv(4096)
                if not data:
                    break
                reply += data
        if reply.rstrip(b"\0"):
            raise BenchError(f"smcrouted refused {cmd} {' '.join(args)}: {reply.decode()!r}")

    def memory(self) -> tuple[float, float]:
        assert self.proc is not None
        return memory_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


# --- the benchmark ---------------------------------------------------------------------------

# Variant names, used for rows, comparisons and targets alike.
BATCH_NEXT = "mfcctl batch -> next answer"
BATCH_ACK = "mfcctl batch -> its answer"
BATCH_KERNEL = "mfcctl batch -> all in kernel"
SMC_BATCH = "smcroutectl -b -> all in kernel"
SMC_START = "smcrouted start -> all in kernel"
RAW_LOOP = "raw setsockopt loop"
MFCD_RESTART = "mfcd restart -> answers"
MFCD_READY = "mfcd restart -> READY=1"
SMC_RESTART = "smcrouted restart -> serving"
PYTHON = "python3 -I -c pass"
MFCCTL_ADD = "mfcctl mfc add"
SMCCTL_ADD = "smcroutectl add"
MFCCTL_SHOW = "mfcctl show"
MFCCTL_SHOW_JSON = "mfcctl show --output json"
SMCCTL_SHOW = "smcroutectl show routes"
OPEN_ADD = "mfc.add on an open connection"
SMC_IPC_ADD = "smcroute IPC add (own connection)"
ONE_COMMANDS = ("mfcctl mfc add", "mfcctl ping", "mfcctl show", "mfcctl batch FILE")


class Bench:
    def __init__(self, settings: Settings, prefix: str, workdir: Path) -> None:
        self.s = settings
        self.prefix = prefix
        self.workdir = workdir
        self.processes: list[subprocess.Popen[Any]] = []
        self.namespaces: list[str] = []
        self.results = Results()
        self.started = time.monotonic()

    # --- set-up and clean-up ---------------------------------------------------------------------

    def namespace(self, role: str) -> Namespace:
        name = f"{self.prefix}-{role}"
        self.namespaces.append(name)
        return Namespace(name, self.processes, self.s)

    def cleanup(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(Exception):
                    if proc.stdin is not None:
                        proc.stdin.close()
                    stop_process(proc)
        for name in self.namespaces:
            run("ip", "netns", "del", name, check=False)

    def progress(self, text: str) -> None:
        """A line of progress with the minutes since the start (what takes how long)."""
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        print(f"[{minutes:3d}:{seconds:02d}] {text}", flush=True)

    # --- scenarios -------------------------------------------------------------------------------

    def run(self) -> None:
        s = self.s
        # Installed packages ship byte-compiled modules; a source checkout run with
        # PYTHONDONTWRITEBYTECODE would compile mfcd on every mfcctl start instead.
        run(sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "mfcd"))
        self.mfcd_ns = self.namespace("mfcd")
        self.smc_ns = self.namespace("smc")
        self.raw_ns = self.namespace("raw")
        (self.workdir / "mfcd").mkdir()
        (self.workdir / "smc").mkdir()
        self.mfcd = Mfcd(self.mfcd_ns, self.workdir / "mfcd", s.timeout)
        self.smc = Smcroute(self.smc_ns, self.workdir / "smc", s.timeout)
        self.progress("Scenarios 6 (no routes), 3 (one command at a time)")
        self.empty_memory_and_commands()
        self.progress(f"Scenario 5 with {s.scaling_small} routes")
        self.small_table_scaling(s.scaling_small)
        for n in s.sizes:
            self.progress(f"Scenarios 1, 2, 6 with N={n}")
            self.bulk_and_recovery(n)
        self.progress(f"Scenario 7 with N={s.shape_n}")
        self.line_shapes(s.shape_n)

    def empty_memory_and_commands(self) -> None:
        s, r = self.s, self.results
        self.mfcd.forget_state()
        self.mfcd.start()
        self.smc.start(0)
        self.raw_ns.call("raw_init")
        self.memory_rows(0, [self.mfcd.memory()], "mfcd at start")
        self.memory_rows(0, [self.smc.memory()], "smcrouted", tool="smcroute")
        raw = self.raw_ns.call("rss")
        r.add(6, "memory", 0, "raw", "raw loop (python) VmRSS", "MiB", [raw["kib"] / MIB])
        # Every command once per round, in turn, so that drift in the machine's load affects
        # all alike.  mfcd's table goes back to empty in each round (the batch deletes what
        # `mfc add` added), smcroute's too, so `show` always lists at most one route.
        names = [*ONE_COMMANDS, SMCCTL_ADD, SMCCTL_SHOW, PYTHON]
        timings: dict[str, list[float]] = {name: [] for name in names}
        one_line = self.workdir / "one-line.batch"

        def timed(name: str, fn: Callable[..., Any], *args: Any) -> None:
            t = time.perf_counter()
            fn(*args)
            timings[name].append((time.perf_counter() - t) * 1000)

        for k in range(s.commands):
            source, group = route_addr(COMMAND_BASE + k)
            add = ("mfc", "add", "--source", source, "--group", group, "--iif", IIF, "--oifs", OIF)
            one_line.write_text(f"mfc del --source {source} --group {group}\n")
            timed(MFCCTL_ADD, self.mfcd.ctl, *add)
            timed(SMCCTL_ADD, self.smc.ctl, "add", IIF, source, group, OIF)
            timed(PYTHON, run, sys.executable, "-I", "-c", "pass")
            timed("mfcctl ping", self.mfcd.ctl, "ping")
            timed(MFCCTL_SHOW, self.mfcd.ctl, "show")
            timed(SMCCTL_SHOW, self.smc.ctl, "-p", "show", "routes")
            if k == 0:  # a check, once: both adds reached the kernel
                self.mfcd_ns.wait_route(COMMAND_BASE, s.timeout)
                self.smc_ns.wait_route(COMMAND_BASE, s.timeout)
            timed("mfcctl batch FILE", self.mfcd.ctl, "batch", str(one_line))
            self.smc.ctl("del", IIF, source, group)
        self.mfcd_ns.check_gone(1)  # route 0 is not in the table; neither is any command's
        c = s.commands
        for name in names:
            tool = "mfcd" if name.startswith("mfcctl") else "raw" if name == PYTHON else "smcroute"
            r.add(3, "one command", c, tool, name, "ms", timings[name])
        for name in ONE_COMMANDS:
            r.compare(3, c, name, PYTHON, blocks=s.blocks)
        r.compare(3, c, MFCCTL_ADD, SMCCTL_ADD, blocks=s.blocks)
        r.compare(3, c, MFCCTL_SHOW, SMCCTL_SHOW, blocks=s.blocks)
        self.mfcd.stop()
        self.smc.stop()
        self.raw_ns.call("raw_done")

    def small_table_scaling(self, n: int) -> None:
        """Scenario 5 with the small table: load n routes into each tool, time single adds."""
        self.mfcd.forget_state()
        self.mfcd.start()
        self.mfcd.ctl("batch", "-", stdin=batch_lines(0, n))
        self.smc.start(n)
        self.raw_ns.call("raw_init")
        self.raw_ns.call("raw_add", start=0, n=n)
        self.measure_scaling(n, smcroute=True)
        self.mfcd.stop()
        self.smc.stop()
        self.raw_ns.call("raw_done")

    def measure_scaling(self, n: int, smcroute: bool) -> None:
        """One add at a time on a table of n routes, each way in turn."""
        s, r = self.s, self.results
        base = SCALING_BASE + n  # fresh routes, distinct per table size
        # A fresh connection: a kept one may have been idle longer than client_timeout.
        self.mfcd.close_connection()
        names = [OPEN_ADD, MFCCTL_ADD] + ([SMC_IPC_ADD, SMCCTL_ADD] if smcroute else [])
        times: dict[str, list[float]] = {name: [] for name in names}

        def timed(name: str, fn: Callable[..., Any], *args: Any) -> None:
            t = time.perf_counter()
            fn(*args)
            times[name].append((time.perf_counter() - t) * 1000)

        # Four routes per round, one per way, so that each add is a new route.
        for k in range(s.scaling_adds):
            routes = [route_addr(base + 4 * k + j) for j in range(4)]
            (s1, g1), (s2, g2), (s3, g3), (s4, g4) = routes
            args = {"source": s1, "group": g1, "iif": IIF, "oifs": [OIF]}
            timed(OPEN_ADD, self.mfcd.request, "mfc.add", args)
            if smcroute:
                timed(SMC_IPC_ADD, self.smc.ipc, "a", IIF, s2, g2, OIF)
            add = ("mfc", "add", "--source", s3, "--group", g3, "--iif", IIF, "--oifs", OIF)
            timed(MFCCTL_ADD, self.mfcd.ctl, *add)
            if smcroute:
                timed(SMCCTL_ADD, self.smc.ctl, "add", IIF, s4, g4, OIF)
        last = base + 4 * (s.scaling_adds - 1)
        self.mfcd_ns.wait_route(last + 2, s.timeout)  # a check: the adds reached the kernel
        if smcroute:
            self.smc_ns.wait_route(last + 1, s.timeout)
        for name in names:
            tool = "smcroute" if name in (SMC_IPC_ADD, SMCCTL_ADD) else "mfcd"
            r.add(5, "one change", n, tool, name, "ms", times[name])
        if smcroute:
            r.compare(5, n, OPEN_ADD, SMC_IPC_ADD, blocks=s.blocks)
            r.compare(5, n, MFCCTL_ADD, SMCCTL_ADD, blocks=s.blocks)
        samples = self.raw_ns.call("raw_one", start=base, n=s.scaling_adds)["samples"]
        r.add(5, "one change", n, "raw", "one setsockopt", "ms", [x * 1000 for x in samples])

    def bulk_and_recovery(self, n: int) -> None:
        s, r = self.s, self.results
        batch_file = self.workdir / f"batch-{n}.txt"
        batch_file.write_text(batch_lines(0, n))
        smc = n <= s.smcroute_max
        smc_repeats = s.repeats if n <= s.smcroute_repeat_max else 1
        smc_batch = smc and n <= s.smcroute_batch_max
        smc_lines = (
            "".join(f"add {IIF} {src} {grp} {OIF}\n" for src, grp in map(route_addr, range(n)))
            if smc_batch
            else ""
        )
        samples: dict[str, list[float]] = {}
        memory: dict[str, list[tuple[float, float]]] = {}

        def sample(key: str, value: float) -> None:
            samples.setdefault(key, []).append(value)

        raw_rss = 0.0
        for rep in range(s.repeats):
            last = rep == s.repeats - 1
            smc_now = smc and rep < smc_repeats
            tools = "raw loop, mfcd" + (", smcroute" if smc_now else "")
            self.progress(f"  round {rep + 1} of {s.repeats}: {tools}")
            # The three tools in turn, each round: A B C A B C.
            self.raw_ns.call("raw_init")
            sample(RAW_LOOP, self.raw_ns.call("raw_add", start=0, n=n)["seconds"])
            self.raw_ns.wait_all(n, s.timeout)
            if last:
                raw_rss = self.raw_ns.call("rss")["kib"] / MIB
            else:
                self.raw_ns.call("raw_done")
            self.mfcd_round(n, batch_file, sample, memory, keep=last)
            if smc_now:
                self.smcroute_round(n, smc_lines, sample, keep=rep == smc_repeats - 1)
        self.report_bulk(n, samples, smc_repeats if smc else 0)
        for label, values in memory.items():
            self.memory_rows(n, values, label)
        if smc:
            self.memory_rows(n, [self.smc.memory()], "smcrouted", tool="smcroute")
        r.add(6, "memory", n, "raw", "raw loop (python) VmRSS", "MiB", [raw_rss])
        if n in s.show_sizes:
            self.show(n, smc)
        if n in s.scaling_sizes:
            self.measure_scaling(n, smcroute=smc)
        self.mfcd.stop()
        self.smc.stop()
        self.raw_ns.call("raw_done")

    def memory_rows(
        self, n: int, values: list[tuple[float, float]], label: str, tool: str = "mfcd"
    ) -> None:
        r = self.results
        r.add(6, "memory", n, tool, f"{label}: peak (VmHWM)", "MiB", [hwm for hwm, _ in values])
        r.add(6, "memory", n, tool, f"{label}: settled (VmRSS)", "MiB", [rss for _, rss in values])

    def mfcd_round(
        self,
        n: int,
        batch_file: Path,
        sample: Callable[[str, float], None],
        memory: dict[str, list[tuple[float, float]]],
        keep: bool,
    ) -> None:
        """One batch install into an empty mfcd and one restart with the n routes.

        The batch is timed from mfcctl's start until mfcd answers the next request (a ping
        on a fresh connection sent as soon as mfcctl returns), and also until mfcctl
        returns (kernel and journal both done) and until the kernel holds all n.  With
        `keep`, the restarted daemon stays up for the scenarios that need n routes loaded.
        """
        self.mfcd.forget_state()
        self.mfcd.start()
        last_seen = self.mfcd_ns.watch_route(n - 1, self.s.timeout)
        started = time.monotonic()
        self.mfcd.ctl("batch", str(batch_file))
        acked = time.monotonic()
        answered = self.mfcd.next_answer()
        sample(BATCH_ACK, acked - started)
        sample(BATCH_NEXT, answered - started)
        seen = self.mfcd_ns.wait_all(n, self.s.timeout, last_seen())
        sample(BATCH_KERNEL, seen - started)
        # Settled: compaction is over (the ping was answered after it).
        memory.setdefault("mfcd after a batch", []).append(self.mfcd.memory())
        self.mfcd.stop()
        ready, answers = self.mfcd.start()
        self.mfcd_ns.wait_all(n, self.s.timeout)  # a check: restore happens before READY=1
        sample(MFCD_READY, ready)
        sample(MFCD_RESTART, answers)
        memory.setdefault("mfcd after a restart", []).append(self.mfcd.memory())
        if not keep:
            self.mfcd.stop()

    def smcroute_round(
        self, n: int, lines: str, sample: Callable[[str, float], None], keep: bool
    ) -> None:
        """smcroutectl -b into an empty smcrouted (if `lines`), smcrouted started with n
        routes in its config, and a restart of it, each measured on its own."""
        if n > self.s.smcroute_repeat_max:  # minutes: say so
            self.progress(f"  smcrouted start and restart with {n} routes (super-linear)")
        self.smc.stop()
        if lines:
            self.smc.start(0)
            last_seen = self.smc_ns.watch_route(n - 1, self.s.timeout)
            started = time.monotonic()
            self.smc.ctl("-b", stdin=lines)
            returned = time.monotonic()
            seen = self.smc_ns.wait_all(n, self.s.timeout, last_seen())
            sample(SMC_BATCH, max(seen, returned) - started)
            self.smc.stop()
        sample(SMC_START, self.smc.start(n)[0])
        self.smc.stop()
        sample(SMC_RESTART, self.smc.start(n)[1])
        if not keep:
            self.smc.stop()

    def report_bulk(self, n: int, samples: dict[str, list[float]], smc_repeats: int) -> None:
        """Scenarios 1 and 2, and their paired ratios."""
        r = self.results
        note = "" if smc_repeats in (0, self.s.repeats) else f"ran {smc_repeats}x (slow)"
        for variant in (RAW_LOOP, BATCH_NEXT, BATCH_ACK, BATCH_KERNEL):
            r.add(
                1,
                "bulk install",
                n,
                "raw" if variant == RAW_LOOP else "mfcd",
                variant,
                "s",
                samples[variant],
            )
        for variant in (SMC_BATCH, SMC_START):
            r.add(1, "bulk install", n, "smcroute", variant, "s", samples.get(variant, []), note)
        r.add(2, "recovery", n, "raw", RAW_LOOP, "s", samples[RAW_LOOP])
        r.add(2, "recovery", n, "mfcd", MFCD_RESTART, "s", samples[MFCD_RESTART])
        r.add(2, "recovery", n, "mfcd", MFCD_READY, "s", samples[MFCD_READY])
        r.add(2, "recovery", n, "smcroute", SMC_RESTART, "s", samples.get(SMC_RESTART, []), note)
        for a, b in ((BATCH_NEXT, RAW_LOOP), (SMC_BATCH, BATCH_NEXT), (SMC_START, BATCH_NEXT)):
            r.compare(1, n, a, b)
        r.compare(2, n, MFCD_RESTART, RAW_LOOP)
        r.compare(2, n, SMC_RESTART, MFCD_RESTART)

    def show(self, n: int, smc: bool) -> None:
        s, r = self.s, self.results
        dump = n <= s.proc_max
        # Above proc_max a show takes seconds (tens under load): fewer rounds.
        repeats = s.show_repeats if dump else min(s.show_repeats, 2)
        times: dict[str, list[float]] = {}
        outputs: dict[str, str] = {}

        def timed(name: str, fn: Callable[..., Any], *args: Any) -> None:
            t = time.perf_counter()
            done = fn(*args)
            times.setdefault(name, []).append(time.perf_counter() - t)
            outputs.setdefault(name, done.stdout)  # the first, checked below

        for _ in range(repeats):  # in turn: A B C D A B C D ...
            timed(MFCCTL_SHOW, self.mfcd.ctl, "show")
            timed(MFCCTL_SHOW_JSON, self.mfcd.ctl, "show", "--output", "json")
            if smc:
                timed(SMCCTL_SHOW, self.smc.ctl, "-p", "show", "routes")
            if dump:
                times.setdefault("read /proc/net/ip_mr_cache", []).append(
                    self.raw_ns.call("count")["seconds"]
                )
        shown = outputs[MFCCTL_SHOW_JSON].count('"group":')
        if shown != n:
            raise BenchError(f"mfcctl show listed {shown} routes, expected {n}")
        if smc and outputs[SMCCTL_SHOW].count(f" {IIF} ") < n:
            raise BenchError(f"smcroutectl show listed fewer than {n} routes")
        for name, values in times.items():
            tool = "mfcd" if name.startswith("mfcctl") else "raw"
            r.add(4, "show", n, "smcroute" if name == SMCCTL_SHOW else tool, name, "s", values)
        if smc:
            r.compare(4, n, MFCCTL_SHOW, SMCCTL_SHOW)
            r.compare(4, n, MFCCTL_SHOW_JSON, SMCCTL_SHOW)

    def line_shapes(self, n: int) -> None:
        """Scenario 7: a batch of n lines of each shape into an empty mfcd, in turn; the del
        shapes delete the routes the add before them loaded."""
        s, r = self.s, self.results
        files: dict[str, Path] = {}
        for shape in SHAPES:
            files[shape] = self.workdir / f"shape-{len(files)}.txt"
            files[shape].write_text(batch_lines(0, n, shape))
        # Each add shape, followed by a delete of the same routes (alternating the two forms).
        plan = [
            (shape, "mfc del" if k % 2 == 0 else "del (no mfc)")
            for k, shape in enumerate(SHAPES)
            if "add" in shape
        ]
        times: dict[str, list[float]] = {}
        for _ in range(s.repeats):
            for add, delete in plan:
                self.mfcd.forget_state()
                self.mfcd.start()
                for shape in (add, delete):
                    started = time.monotonic()
                    self.mfcd.ctl("batch", str(files[shape]))
                    times.setdefault(shape, []).append(self.mfcd.next_answer() - started)
                    if shape == add:
                        self.mfcd_ns.wait_all(n, s.timeout)
                    else:
                        self.mfcd_ns.check_gone(n)
                self.mfcd.stop()
        # The parsing alone (mfcd.batchfile.lines, in this process), where the shapes differ:
        # a whole batch also does the model's and the kernel's work for each oif.
        from mfcd import batchfile  # noqa: PLC0415 (only the benchmark's orchestrator needs it)

        texts = {shape: files[shape].read_text() for shape in SHAPES}
        for _ in range(max(s.repeats, 5)):  # cheap: 0.1 s per 100,000 lines
            for shape, text in texts.items():
                gc.disable()  # as in mfcd, which pauses the cyclic GC while it handles a request
                started = time.monotonic()
                collections.deque(batchfile.lines(text), maxlen=0)
                times.setdefault(f"parse {shape}", []).append(time.monotonic() - started)
                gc.enable()
        for prefix, how in (("batch of", "batch of '{}' lines"), ("parse", "parse '{}' lines")):
            for shape in SHAPES:
                key = shape if prefix == "batch of" else f"parse {shape}"
                r.add(7, "line shapes", n, "mfcd", how.format(shape), "s", times[key])
            for shape in SHAPES:
                if shape not in (USUAL, "mfc del"):
                    base = "mfc del" if "del" in shape else USUAL
                    r.compare(7, n, how.format(shape), how.format(base))


# --- targets and report ----------------------------------------------------------------------


@dataclass
class Target:
    scenario: int
    text: str
    verdict: str  # met | missed | straddled | not measured
    detail: str


def verdict(values: Sequence[float], ok: Callable[[float], bool]) -> str:
    """met if every value meets the target, missed if none does, straddled otherwise."""
    if not values:
        return "not measured"
    hits = [ok(v) for v in values]
    return "met" if all(hits) else "missed" if not any(hits) else "straddled"


def _range(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    lo, hi, mid = min(values), max(values), statistics.median(values)
    if lo == hi:
        return fmt.format(mid)
    return f"{fmt.format(mid)} ({fmt.format(lo)}-{fmt.format(hi)})"


def targets(res: Results, s: Settings) -> list[Target]:
    out: list[Target] = []
    big = min(s.sizes, key=lambda n: abs(n - 100_000))  # the targets' N, or the nearest run
    n10 = min(s.sizes, key=lambda n: abs(n - 10_000))

    def ratio_target(
        scenario: int, text: str, c: Comparison | None, limit: float, at_least: bool = False
    ) -> None:
        if c is None:
            out.append(Target(scenario, text, "not measured", ""))
            return
        ok = (lambda v: v >= limit) if at_least else (lambda v: v <= limit)
        detail = f"{c.a} / {c.b} = {_range(c.ratios)}x over {len(c.ratios)} {c.how}"
        out.append(Target(scenario, text, verdict(c.ratios, ok), detail))

    def value_target(scenario: int, text: str, row: Result | None, limit: float, unit: str) -> None:
        if row is None:
            out.append(Target(scenario, text, "not measured", ""))
            return
        detail = f"{row.variant} = {_range(row.samples)} {unit} over {len(row.samples)} runs"
        out.append(Target(scenario, text, verdict(row.samples, lambda v: v <= limit), detail))

    ratio_target(
        1, f"{big} routes within 3x the raw loop", res.comparison(1, big, BATCH_NEXT, RAW_LOOP), 3.0
    )
    ratio_target(
        1,
        f"{n10} routes 50x faster than smcroute (smcroutectl -b)",
        res.comparison(1, n10, SMC_BATCH, BATCH_NEXT),
        50.0,
        at_least=True,
    )
    ratio_target(
        1,
        f"{n10} routes 50x faster than smcroute (start with config)",
        res.comparison(1, n10, SMC_START, BATCH_NEXT),
        50.0,
        at_least=True,
    )
    value_target(2, f"{big} routes recovered in < 1 s", res.get(2, big, MFCD_RESTART), 1.0, "s")
    for name in ONE_COMMANDS:
        ratio_target(
            3,
            f"`{name}` within 2.5x python -I -c pass",
            res.comparison(3, s.commands, name, PYTHON),
            2.5,
        )
    n_show = min(s.show_sizes, default=n10)
    for variant in (MFCCTL_SHOW, MFCCTL_SHOW_JSON):
        ratio_target(
            4,
            f"{variant} of {n_show} within 1.5x smcroute",
            res.comparison(4, n_show, variant, SMCCTL_SHOW),
            1.5,
        )
    shows = sorted(s.show_sizes)
    for lo, hi in itertools.pairwise(shows):
        for variant in (MFCCTL_SHOW, MFCCTL_SHOW_JSON):
            a, b = res.get(4, lo, variant), res.get(4, hi, variant)
            text = f"{variant}: {lo} -> {hi} not super-linear (time/N grows <= 1.2x)"
            if a is None or b is None:
                out.append(Target(4, text, "not measured", ""))
                continue
            growth = [(y / x) / (hi / lo) for x in a.samples for y in b.samples]
            out.append(
                Target(
                    4,
                    text,
                    verdict(growth, lambda v: v <= 1.2),
                    f"(t_hi/t_lo)/(N_hi/N_lo) = {_range(growth)} over all pairs of runs",
                )
            )
    small = res.get(5, s.scaling_small, OPEN_ADD)
    for n in s.scaling_sizes:
        large = res.get(5, n, OPEN_ADD)
        text = f"one add with {n} vs {s.scaling_small} routes <= 1.5x"
        if small is None or large is None:
            out.append(Target(5, text, "not measured", ""))
            continue
        k = min(len(small.samples), len(large.samples))
        size = max(1, k // s.blocks)
        ratios = [
            statistics.median(large.samples[i : i + size])
            / statistics.median(small.samples[i : i + size])
            for i in range(0, k - size + 1, size)
        ]
        detail = f"{OPEN_ADD}: {_range(ratios)}x over {len(ratios)} blocks of {size} adds each"
        out.append(Target(5, text, verdict(ratios, lambda v: v <= 1.5), detail))
    mem_n = big
    limit = 80 * MB_IN_MIB
    for label in ("mfcd after a restart", "mfcd after a batch"):
        for kind in ("settled (VmRSS)", "peak (VmHWM)"):
            value_target(
                6,
                f"at most 80 MB ({limit:.1f} MiB) with {mem_n} routes: {label}, {kind}",
                res.get(6, mem_n, f"{label}: {kind}"),
                limit,
                "MiB",
            )
    for shape in SHAPES:
        if shape not in (USUAL, "mfc del"):
            base = "mfc del" if "del" in shape else USUAL
            for what, how in (("parsing", "parse '{}' lines"), ("batch", "batch of '{}' lines")):
                ratio_target(
                    7,
                    f"'{shape}' lines as fast as '{base}' (within 1.1x): {what}",
                    res.comparison(7, s.shape_n, how.format(shape), how.format(base)),
                    1.1,
                )
    return out


def report(res: Results, s: Settings) -> str:
    header = f"{'scenario':<15} {'N':>8}  {'tool':<9} {'what':<40} {'median':>10}  range"
    lines = [header, "-" * (len(header) + 20)]
    for row in res.rows:
        name = f"{row.scenario} {row.name}"
        spread = (
            f"{_fmt(min(row.samples), row.unit)} - {_fmt(max(row.samples), row.unit)}"
            if len(row.samples) > 1
            else "(1 run)"
        )
        lines.append(
            f"{name:<15} {row.n:>8}  {row.tool:<9} {row.variant:<40}"
            f" {_fmt(row.median, row.unit):>10}  {spread}"
        )
    lines += ["", "Paired ratios (A / B, each pair measured back to back):"]
    for c in res.comparisons:
        lines.append(
            f"  [{c.scenario}] N={c.n:<8} {c.a} / {c.b}: {_range(c.ratios)}x"
            f" ({len(c.ratios)} {c.how})"
        )
    lines += ["", "Growth exponents (time ~ N^k; fitted over the sizes, and between the last two):"]
    for g in res.growth():
        sizes = ", ".join(str(n) for n in g.sizes)
        lines.append(
            f"  [{g.scenario}] {g.variant:<40} k = {g.exponent:.2f}"
            f"  (last pair {g.last_exponent:.2f}; N = {sizes})"
        )
    lines += ["", "Targets:"]
    for t in _targets_or_error(res, s):
        lines.append(f"  [{t.verdict:>12}] {t.scenario}: {t.text} ({t.detail})")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    smc = run(SMCROUTED, "-v", check=False).stdout.strip().splitlines()
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    load = ""
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        load = f.read().strip()
    rev = run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "loadavg": load,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "smcroute": smc[0] if smc else "",
        "mfcd_revision": rev,
    }


def to_json(res: Results, s: Settings, quick: bool, seconds: float) -> dict[str, Any]:
    return {
        "quick": quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(seconds, 1),
        "machine": machine(),
        "settings": s.__dict__,
        "results": [
            {
                "scenario": x.scenario,
                "name": x.name,
                "n": x.n,
                "tool": x.tool,
                "variant": x.variant,
                "unit": x.unit,
                "median": x.median,
                "min": min(x.samples),
                "max": max(x.samples),
                "samples": x.samples,
                "note": x.note,
            }
            for x in res.rows
        ],
        "comparisons": [
            {**c.__dict__, "median": c.median, "min": min(c.ratios), "max": max(c.ratios)}
            for c in res.comparisons
        ],
        "growth": [g.__dict__ for g in res.growth()],
        "targets": [t.__dict__ for t in _targets_or_error(res, s)],
    }


def _targets_or_error(res: Results, s: Settings) -> list[Target]:
    """The targets; a bug in judging them must not lose the run's samples."""
    try:
        return targets(res, s)
    except Exception as e:  # reported in the JSON and on stderr
        print(f"bench: judging the targets failed: {e!r}", file=sys.stderr)
        return [Target(0, "judging the targets failed", "not measured", repr(e))]


# --- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Stop(f"signal {signum}")

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="small N (the test suite runs this)")
    parser.add_argument(
        "--out", metavar="FILE", help="JSON results (default bench/results/<time>.json)"
    )
    parser.add_argument("--repeats", type=int, help="pairs per size in scenarios 1, 2 and 7")
    parser.add_argument(
        "--max-n",
        type=int,
        metavar="N",
        help="largest route count for mfcd (default 1,000,000; each size above it becomes N)",
    )
    parser.add_argument(
        "--smcroute-max",
        type=int,
        metavar="N",
        help="largest N smcroute loads (default 20,000; 40,000 adds two starts of 100 s or more)",
    )
    parser.add_argument(
        "--sizes",
        metavar="N,N,...",
        help="route counts of scenarios 1, 2 and 6 instead of the defaults (show and scaling"
        " run at those of their defaults that remain)",
    )
    parser.add_argument("--commands", type=int, metavar="C", help="rounds of scenario 3")
    parser.add_argument("--prefix", help="namespace name prefix (default random)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    for tool in (SMCROUTED, SMCROUTECTL):
        if run("which", tool, check=False).returncode != 0:
            print(f"bench: {tool} not found: apt-get install smcroute", file=sys.stderr)
            return 2
    if not (BIN / "mfcd").exists():
        print(f"bench: no mfcd next to {sys.executable}; run `make bench`", file=sys.stderr)
        return 2
    s = QUICK if args.quick else FULL
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    if args.sizes:
        sizes = tuple(sorted({int(n.replace("_", "")) for n in args.sizes.split(",")}))
        s = replace(
            s,
            sizes=sizes,
            show_sizes=tuple(n for n in s.show_sizes if n in sizes),
            scaling_sizes=tuple(n for n in s.scaling_sizes if n in sizes),
            shape_n=min(s.shape_n, max(sizes)),
        )
    if args.max_n:
        s = s.with_max_n(args.max_n)
    if args.commands:
        s = replace(s, commands=args.commands)
    if args.smcroute_max is not None:
        s = replace(s, smcroute_max=args.smcroute_max)
    prefix = args.prefix or f"mfcdb{secrets.token_hex(3)}"
    print(f"mfcd benchmark ({'quick' if args.quick else 'full'}), namespaces {prefix}-*")
    print(f"sizes {', '.join(map(str, s.sizes))}; smcroute up to {s.smcroute_max}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mfcd-bench-", dir="/var/tmp") as tmp:
        bench = Bench(s, prefix, Path(tmp))
        try:
            with stop_on_signals():
                bench.run()
        except (BenchError, Stop) as e:
            print(f"bench: {e}", file=sys.stderr)
            return 1
        finally:
            bench.cleanup()
    seconds = time.monotonic() - started
    # The JSON first: it holds every sample even if the report below fails.
    out = Path(args.out) if args.out else HERE / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(bench.results, s, args.quick, seconds), indent=2) + "\n")
    print()
    print(report(bench.results, s))
    print(f"\nresults: {out} (the run took {seconds / 60:.1f} minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmarks: mfcd against smcroute and against the kernel's own limit, side by side in one run.

Usage (as root, from the repository): `make bench` (full run, about 15 minutes) or
`make bench-quick` (small N, under a minute; the test suite runs it).  Results are
printed as a table of medians with ratios and written as JSON to bench/results/.

Every tool runs in its own network namespace (one MRT_INIT per table per namespace)
with two interfaces, r0 (VIF 0, the iif) and r1 (VIF 1, the oif), the two ends of one
veth pair created inside that namespace: the host's interfaces are never touched and
no packet is sent.  An agent (nsagent.py) in each namespace runs the raw setsockopt
loop and answers "is route i in the kernel yet?" with an O(1) SIOCGETSGCNT, so that
polling never dominates what is measured.  Every process this program starts is
stopped by pid and every namespace deleted on exit, also on errors and SIGTERM.

Scenarios (docs/benchmarks.md explains each and the targets):
  1 bulk install   mfcctl batch of N routes | smcroute started with N routes in its
                   config (and smcroutectl -b) | the raw loop; until the kernel holds all N
  2 recovery       mfcd start with N routes in its state file -> answers requests
                   | smcroute start with N routes | the raw loop
  3 one command    C x mfcctl mfc add | C x smcroutectl add | C x python3 -I -c pass
  4 show           mfcctl show (table, json) | smcroutectl show routes | reading /proc
  5 one change     one add with 100 routes present vs. with the largest N present
  6 memory         VmRSS with 0 and N routes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsagent import IIF, OIF, route_addr, rss_kib

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent  # the venv's mfcd and mfcctl, as in tests/netns
AGENT = str(HERE / "nsagent.py")
SMCROUTED = "smcrouted"
SMCROUTECTL = "smcroutectl"


class BenchError(Exception):
    pass


class Stop(BaseException):
    """SIGTERM/SIGHUP: unwind through every `finally`, so everything is cleaned up."""


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


# --- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...]  # scenario 1, 2 (and 6) route counts
    repeats: int
    commands: int  # scenario 3: commands per tool
    show_sizes: tuple[int, ...]
    show_repeats: int
    scaling_small: int
    scaling_adds: int  # scenario 5: timed adds per case
    memory_sizes: tuple[int, ...]
    smcroute_max: int  # largest N smcroute is asked to load (it is quadratic)
    smcroute_repeat_max: int  # above this N, smcroute runs once instead of `repeats` times
    smcroute_batch_max: int  # largest N for the smcroutectl -b variant
    timeout: float  # seconds any one wait may take


FULL = Settings(
    sizes=(1_000, 10_000, 100_000),
    repeats=3,
    commands=1_000,
    show_sizes=(10_000, 100_000),
    show_repeats=5,
    scaling_small=100,
    scaling_adds=200,
    memory_sizes=(10_000, 100_000),
    smcroute_max=20_000,  # 100,000 would take smcroute about 5 minutes per start
    smcroute_repeat_max=20_000,
    smcroute_batch_max=20_000,
    timeout=1800,
)
QUICK = Settings(
    sizes=(100, 1_000),
    repeats=2,
    commands=20,
    show_sizes=(1_000,),
    show_repeats=2,
    scaling_small=100,
    scaling_adds=20,
    memory_sizes=(1_000,),
    smcroute_max=1_000,
    smcroute_repeat_max=1_000,
    smcroute_batch_max=1_000,
    timeout=60,
)


# --- results ---------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: int
    name: str  # what was measured, e.g. "bulk install"
    n: int
    tool: str  # mfcd | smcroute | raw (the kernel or interpreter floor)
    variant: str  # e.g. "mfcctl batch", "smcroutectl -b"
    unit: str  # s | ms | MiB
    samples: list[float]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Results:
    rows: list[Result] = field(default_factory=list)

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
        result = Result(scenario, name, n, tool, variant, unit, list(samples), note)
        self.rows.append(result)
        print(
            f"  [{scenario}] {name:<14} N={n:<7} {variant:<28} {_fmt(result.median, unit):>12}"
            f"  ({len(samples)} samples){'  ' + note if note else ''}",
            flush=True,
        )

    def get(self, scenario: int, n: int, variant: str) -> Result | None:
        for r in self.rows:
            if r.scenario == scenario and r.n == n and r.variant == variant:
                return r
        return None


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:.3g} {unit}"


# --- namespaces and agents -------------------------------------------------------------------


class Namespace:
    """A network namespace with interfaces r0 and r1 (a veth pair) and an agent inside."""

    def __init__(self, name: str, processes: list[subprocess.Popen[Any]]) -> None:
        self.name = name
        self.processes = processes
        run("ip", "netns", "add", name)
        ip = ("ip", "-n", name)
        run(*ip, "link", "set", "lo", "up")
        run(*ip, "link", "add", IIF, "type", "veth", "peer", "name", OIF)
        for k, ifname in enumerate((IIF, OIF)):
            run(*ip, "addr", "add", f"198.18.{k}.1/24", "dev", ifname)
            run(*ip, "link", "set", ifname, "up")
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
        assert self.agent.stdin is not None
        self.agent.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.agent.stdin.flush()
        return self._read()

    def wait_route(self, index: int, timeout: float) -> float:
        seen = self.call("wait", index=index, timeout=timeout)["seen"]
        if seen is None:
            raise BenchError(f"{self.name}: route {index} did not reach the kernel in {timeout} s")
        return float(seen)

    def wait_all(self, n: int, timeout: float) -> float:
        """Monotonic time at which the kernel held all n routes (0..n-1, loaded in order)."""
        seen = self.wait_route(n - 1, timeout) if n else time.monotonic()
        got = self.call("count")["count"]
        if got < n:  # the last route came early: fall back to counting (coarser, rare)
            reply = self.call("wait_count", n=n, timeout=timeout)
            got, seen = reply["count"], reply["seen"]
        if got != n:
            raise BenchError(f"{self.name}: the kernel holds {got} entries, expected {n}")
        return seen


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


def batch_lines(start: int, n: int) -> str:
    out = []
    for i in range(start, start + n):
        source, group = route_addr(i)
        out.append(f"mfc add --source {source} --group {group} --iif {IIF} --oifs {OIF}\n")
    return "".join(out)


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

    def rss_mib(self) -> float:
        assert self.proc is not None
        return rss_kib(self.proc.pid) / 1024

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            self._buffer = b""
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

    def __init__(self, ns: Namespace, workdir: Path, timeout: float) -> None:
        self.ns = ns
        self.workdir = workdir
        self.timeout = timeout
        self.socket = str(workdir / "smcroute.sock")
        self.pidfile = workdir / "smcroute.pid"
        self.config = workdir / "smcroute.conf"
        self.proc: subprocess.Popen[str] | None = None

    def write_config(self, n: int) -> None:
        lines = [f"phyint {IIF} enable\n", f"phyint {OIF} enable\n"]
        for i in range(n):
            source, group = route_addr(i)
            lines.append(f"mroute from {IIF} source {source} group {group} to {OIF}\n")
        self.config.write_text("".join(lines))

    def start(self, n: int) -> float:
        """Start with the config's n routes; return seconds until the kernel holds all n."""
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
            time.sleep(0.001)
        return seen - started

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

    def rss_mib(self) -> float:
        assert self.proc is not None
        return rss_kib(self.proc.pid) / 1024

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


# --- the benchmark ---------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, prefix: str, workdir: Path) -> None:
        self.s = settings
        self.prefix = prefix
        self.workdir = workdir
        self.processes: list[subprocess.Popen[Any]] = []
        self.namespaces: list[str] = []
        self.results = Results()

    # --- set-up and clean-up ---------------------------------------------------------------------

    def namespace(self, role: str) -> Namespace:
        name = f"{self.prefix}-{role}"
        self.namespaces.append(name)
        return Namespace(name, self.processes)

    def cleanup(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(Exception):
                    if proc.stdin is not None:
                        proc.stdin.close()
                    stop_process(proc)
        for name in self.namespaces:
            run("ip", "netns", "del", name, check=False)

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
        print("Scenarios 6 (no routes), 3 (one command at a time), 5 (small table)", flush=True)
        self.empty_memory_and_commands()
        self.scaling(s.scaling_small)
        for n in s.sizes:
            print(f"Scenarios 1, 2 with N={n}", flush=True)
            self.bulk_and_recovery(n)

    def empty_memory_and_commands(self) -> None:
        s, r = self.s, self.results
        self.mfcd.forget_state()
        self.mfcd.start()
        self.smc.write_config(0)
        self.smc.start(0)
        self.raw_ns.call("raw_init")
        r.add(6, "memory", 0, "mfcd", "mfcd VmRSS", "MiB", [self.mfcd.rss_mib()])
        r.add(6, "memory", 0, "smcroute", "smcrouted VmRSS", "MiB", [self.smc.rss_mib()])
        raw_rss = self.raw_ns.call("rss")["kib"] / 1024
        r.add(6, "memory", 0, "raw", "raw loop (python) VmRSS", "MiB", [raw_rss])
        # Interleaved, so that drift in the machine's load affects all three alike.
        timings: dict[str, list[float]] = {"mfcd": [], "smcroute": [], "raw": []}
        base = 1_000_000  # route indexes no other scenario uses
        for k in range(s.commands):
            source, group = route_addr(base + k)
            t = time.perf_counter()
            self.mfcd.ctl(
                "mfc", "add", "--source", source, "--group", group, "--iif", IIF, "--oifs", OIF
            )
            timings["mfcd"].append(time.perf_counter() - t)
            t = time.perf_counter()
            self.smc.ctl("add", IIF, source, group, OIF)
            timings["smcroute"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
            timings["raw"].append(time.perf_counter() - t)
        last = base + s.commands - 1
        self.mfcd_ns.wait_route(last, s.timeout)
        self.smc_ns.wait_route(last, s.timeout)
        c = s.commands
        ms = {k: [v * 1000 for v in vs] for k, vs in timings.items()}
        r.add(3, "one command", c, "mfcd", "mfcctl mfc add", "ms", ms["mfcd"])
        r.add(3, "one command", c, "smcroute", "smcroutectl add", "ms", ms["smcroute"])
        r.add(3, "one command", c, "raw", "python3 -I -c pass", "ms", ms["raw"])
        self.mfcd.stop()
        self.smc.stop()
        self.raw_ns.call("raw_done")

    def scaling(self, n: int) -> None:
        """Scenario 5 with the small table: load n routes into each tool, time single adds."""
        self.mfcd.forget_state()
        self.mfcd.start()
        self.mfcd.ctl("batch", "-", stdin=batch_lines(0, n))
        self.smc.write_config(n)
        self.smc.start(n)
        self.raw_ns.call("raw_init")
        self.raw_ns.call("raw_add", start=0, n=n)
        self.measure_scaling(n)
        self.mfcd.stop()
        self.smc.stop()
        self.raw_ns.call("raw_done")

    def measure_scaling(self, n: int, smcroute: bool = True) -> None:
        s, r = self.s, self.results
        base = 2_000_000 + n  # fresh routes, distinct per table size
        times = []
        for k in range(s.scaling_adds):
            source, group = route_addr(base + k)
            args = {"source": source, "group": group, "iif": IIF, "oifs": [OIF]}
            t = time.perf_counter()
            self.mfcd.request("mfc.add", args)
            times.append((time.perf_counter() - t) * 1000)
        r.add(5, "one change", n, "mfcd", "mfc.add round trip", "ms", times)
        if smcroute:
            times = []
            for k in range(s.scaling_adds):
                source, group = route_addr(base + k)
                t = time.perf_counter()
                self.smc.ctl("add", IIF, source, group, OIF)
                times.append((time.perf_counter() - t) * 1000)
            r.add(5, "one change", n, "smcroute", "smcroutectl add", "ms", times)
        samples = self.raw_ns.call("raw_one", start=base, n=s.scaling_adds)["samples"]
        r.add(5, "one change", n, "raw", "one setsockopt", "ms", [x * 1000 for x in samples])

    def bulk_and_recovery(self, n: int) -> None:
        s, r = self.s, self.results
        batch_file = self.workdir / f"batch-{n}.txt"
        batch_file.write_text(batch_lines(0, n))
        smc = n <= s.smcroute_max
        smc_repeats = s.repeats if n <= s.smcroute_repeat_max else 1
        if smc:
            self.smc.write_config(n)
        samples: dict[str, list[float]] = {}

        def sample(key: str, value: float) -> None:
            samples.setdefault(key, []).append(value)

        raw_rss = batch_rss = 0.0
        for rep in range(s.repeats):
            last = rep == s.repeats - 1
            # Raw loop: the kernel's limit from Python.
            self.raw_ns.call("raw_init")
            sample("raw", self.raw_ns.call("raw_add", start=0, n=n)["seconds"])
            if self.raw_ns.call("count")["count"] != n:
                raise BenchError("raw loop: the kernel does not hold all routes")
            if last:
                raw_rss = self.raw_ns.call("rss")["kib"] / 1024
            else:
                self.raw_ns.call("raw_done")
            batch_rss = self.mfcd_round(n, batch_file, sample, keep=last)
            # smcroute: start with n routes in its config.
            if smc and rep < smc_repeats:
                if self.smc.proc is not None:
                    self.smc.stop()
                sample("smcroute", self.smc.start(n))
                if rep < smc_repeats - 1:
                    self.smc.stop()
        note = "" if smc_repeats == s.repeats else f"smcroute ran {smc_repeats}x (quadratic)"
        self.report_bulk(n, samples, note if smc else None)
        if n in s.memory_sizes:
            r.add(6, "memory", n, "mfcd", "mfcd VmRSS", "MiB", [self.mfcd.rss_mib()])
            r.add(6, "memory", n, "mfcd", "mfcd VmRSS after batch", "MiB", [batch_rss])
            if smc:
                r.add(6, "memory", n, "smcroute", "smcrouted VmRSS", "MiB", [self.smc.rss_mib()])
            r.add(6, "memory", n, "raw", "raw loop (python) VmRSS", "MiB", [raw_rss])
        if n in s.show_sizes:
            self.show(n, smc)
        if n == max(s.sizes):
            self.measure_scaling(n, smcroute=smc)
        if smc and n <= s.smcroute_batch_max:
            self.smcroute_batch(n, samples)
        self.mfcd.stop()
        self.smc.stop()
        self.raw_ns.call("raw_done")

    def mfcd_round(
        self, n: int, batch_file: Path, sample: Callable[[str, float], None], keep: bool
    ) -> float:
        """One batch install and one recovery; returns VmRSS after the batch (MiB).

        The batch is timed from mfcctl's start until it returns (kernel and journal both
        done); the kernel is then checked to hold all n.  With `keep`, the recovered
        daemon stays up for the scenarios that need n routes loaded.
        """
        self.mfcd.forget_state()
        self.mfcd.start()
        started = time.monotonic()
        self.mfcd.ctl("batch", str(batch_file))
        sample("mfcd", time.monotonic() - started)
        seen = self.mfcd_ns.wait_all(n, self.s.timeout)
        sample("mfcd kernel", seen - started)
        batch_rss = self.mfcd.rss_mib()
        self.mfcd.stop()
        ready, answered = self.mfcd.start()
        self.mfcd_ns.wait_all(n, self.s.timeout)  # a check: restore happens before READY=1
        sample("recovery ready", ready)
        sample("recovery answered", answered)
        if not keep:
            self.mfcd.stop()
        return batch_rss

    def report_bulk(self, n: int, samples: dict[str, list[float]], smc_note: str | None) -> None:
        """Scenarios 1 and 2; smc_note is None when smcroute did not run at this N."""
        r = self.results
        r.add(1, "bulk install", n, "raw", "raw setsockopt loop", "s", samples["raw"])
        r.add(1, "bulk install", n, "mfcd", "mfcctl batch (acked)", "s", samples["mfcd"])
        r.add(1, "bulk install", n, "mfcd", "mfcctl batch (in kernel)", "s", samples["mfcd kernel"])
        if smc_note is not None:
            r.add(
                1,
                "bulk install",
                n,
                "smcroute",
                "smcrouted start",
                "s",
                samples["smcroute"],
                smc_note,
            )
        r.add(2, "recovery", n, "raw", "raw setsockopt loop", "s", samples["raw"])
        r.add(2, "recovery", n, "mfcd", "mfcd start -> answers", "s", samples["recovery answered"])
        r.add(2, "recovery", n, "mfcd", "mfcd start -> READY=1", "s", samples["recovery ready"])
        if smc_note is not None:
            r.add(
                2, "recovery", n, "smcroute", "smcrouted start", "s", samples["smcroute"], smc_note
            )

    def show(self, n: int, smc: bool) -> None:
        s, r = self.s, self.results

        def timed(fn: Callable[[], Any]) -> list[float]:
            out = []
            for _ in range(s.show_repeats):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
            return out

        table = timed(lambda: self.mfcd.ctl("show"))
        r.add(4, "show", n, "mfcd", "mfcctl show", "s", table)
        as_json = timed(lambda: self.mfcd.ctl("show", "--output", "json"))
        r.add(4, "show", n, "mfcd", "mfcctl show --output json", "s", as_json)
        shown = len(json.loads(self.mfcd.ctl("show", "--output", "json").stdout)["routes"])
        if shown != n:
            raise BenchError(f"mfcctl show listed {shown} routes, expected {n}")
        if smc:
            out = self.smc.ctl("-p", "show", "routes").stdout
            if out.count(f" {IIF} ") < n:
                raise BenchError(f"smcroutectl show listed fewer than {n} routes")
            smc_times = timed(lambda: self.smc.ctl("-p", "show", "routes"))
            r.add(4, "show", n, "smcroute", "smcroutectl show routes", "s", smc_times)
        dumps = [self.raw_ns.call("count")["seconds"] for _ in range(s.show_repeats)]
        r.add(4, "show", n, "raw", "read /proc/net/ip_mr_cache", "s", dumps)

    def smcroute_batch(self, n: int, samples: dict[str, list[float]]) -> None:
        """smcroute's own bulk path: an empty daemon, then `smcroutectl -b` with n adds."""
        lines = "".join(
            f"add {IIF} {src} {grp} {OIF}\n" for src, grp in (route_addr(i) for i in range(n))
        )
        self.smc.stop()
        self.smc.write_config(0)
        times = []
        for _ in range(self.s.repeats if n <= self.s.smcroute_repeat_max else 1):
            self.smc.start(0)
            started = time.monotonic()
            self.smc.ctl("-b", stdin=lines)
            times.append(self.smc_ns.wait_all(n, self.s.timeout) - started)
            self.smc.stop()
        self.results.add(1, "bulk install", n, "smcroute", "smcroutectl -b", "s", times)


# --- targets and report ----------------------------------------------------------------------


@dataclass
class Target:
    scenario: int
    text: str
    met: bool | None  # None: not measured in this run
    detail: str


def targets(res: Results, s: Settings) -> list[Target]:
    out: list[Target] = []
    big = max(s.sizes)

    def med(scenario: int, n: int, variant: str) -> float | None:
        row = res.get(scenario, n, variant)
        return row.median if row else None

    def check(scenario: int, text: str, value: float | None, limit: float, what: str) -> None:
        if value is None:
            out.append(Target(scenario, text, None, "not measured"))
        else:
            out.append(Target(scenario, text, value <= limit, f"{what} = {value:.2f}"))

    mfcd, raw = med(1, big, "mfcctl batch (acked)"), med(1, big, "raw setsockopt loop")
    ratio = mfcd / raw if mfcd is not None and raw else None
    check(1, f"{big} routes within 3x the raw loop", ratio, 3.0, "mfcd/raw")
    n10 = 10_000 if 10_000 in s.sizes else max(n for n in s.sizes if n <= 10_000)
    mfcd10, smc10 = med(1, n10, "mfcctl batch (acked)"), med(1, n10, "smcrouted start")
    speedup = smc10 / mfcd10 if mfcd10 and smc10 is not None else None
    if speedup is None:
        out.append(Target(1, f"{n10} routes 50x faster than smcroute", None, "not measured"))
    else:
        detail = f"smcroute/mfcd = {speedup:.1f}"
        out.append(Target(1, f"{n10} routes 50x faster than smcroute", speedup >= 50, detail))
    check(2, f"{big} routes recovered in < 1 s", med(2, big, "mfcd start -> answers"), 1.0, "s")
    one, floor = med(3, s.commands, "mfcctl mfc add"), med(3, s.commands, "python3 -I -c pass")
    ratio = one / floor if one is not None and floor else None
    check(3, "one mfcctl command within 2.5x python -I -c pass", ratio, 2.5, "mfcctl/python")
    n_show = min(s.show_sizes)
    show, smc = med(4, n_show, "mfcctl show"), med(4, n_show, "smcroutectl show routes")
    ratio = show / smc if show is not None and smc else None
    check(4, f"mfcctl show of {n_show} within 1.5x smcroute", ratio, 1.5, "mfcd/smcroute")
    if len(s.show_sizes) > 1:
        lo, hi = min(s.show_sizes), max(s.show_sizes)
        for variant in ("mfcctl show", "mfcctl show --output json"):
            a, b = med(4, lo, variant), med(4, hi, variant)
            growth = (b / a) / (hi / lo) if a and b is not None else None
            text = f"{variant}: {lo} -> {hi} not super-linear (time/N ratio <= 1.2)"
            check(4, text, growth, 1.2, "(t_hi/t_lo)/(N_hi/N_lo)")
    small, large = med(5, s.scaling_small, "mfc.add round trip"), med(5, big, "mfc.add round trip")
    ratio = large / small if large is not None and small else None
    check(5, f"one add with {big} vs {s.scaling_small} routes <= 1.5x", ratio, 1.5, "ratio")
    rss = med(6, max(s.memory_sizes), "mfcd VmRSS")
    check(6, f"at most 80 MiB with {max(s.memory_sizes)} routes", rss, 80.0, "MiB")
    return out


def report(res: Results, s: Settings) -> str:
    """One line per measurement; ratios against each peer's first (main) variant."""
    header = f"{'scenario':<15} {'N':>7}  {'tool':<9} {'what':<28} {'median':>11}  ratios"
    lines = [header, "-" * (len(header) + 30)]
    for row in res.rows:
        group = [x for x in res.rows if (x.scenario, x.n) == (row.scenario, row.n)]
        ratios = []
        if row.tool == "mfcd":
            for tool in ("smcroute", "raw"):
                other = next((x for x in group if x.tool == tool), None)
                if other is not None and other.median:
                    ratios.append(f"{row.median / other.median:.2f}x {tool}")
        name = f"{row.scenario} {row.name}"
        lines.append(
            f"{name:<15} {row.n:>7}  {row.tool:<9} {row.variant:<28}"
            f" {_fmt(row.median, row.unit):>11}  {', '.join(ratios)}"
        )
    lines.append("")
    lines.append("Targets:")
    for t in targets(res, s):
        mark = {True: "met", False: "MISSED", None: "n/a"}[t.met]
        lines.append(f"  [{mark:>6}] {t.scenario}: {t.text} ({t.detail})")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if "model name" in line), "")
    smc = run(SMCROUTED, "-v", check=False).stdout.strip().splitlines()
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    rev = run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD", check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "smcroute": smc[0] if smc else "",
        "mfcd_revision": rev,
    }


def to_json(res: Results, s: Settings, quick: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
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
                "samples": x.samples,
                "note": x.note,
            }
            for x in res.rows
        ],
        "targets": [t.__dict__ for t in targets(res, s)],
    }


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
    parser.add_argument("--repeats", type=int, help="repeats of scenarios 1 and 2")
    parser.add_argument(
        "--smcroute-max", type=int, metavar="N", help="largest N smcroute loads (quadratic)"
    )
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
        s = Settings(**{**s.__dict__, "repeats": args.repeats})
    if args.smcroute_max is not None:
        s = Settings(**{**s.__dict__, "smcroute_max": args.smcroute_max})
    prefix = args.prefix or f"mfcdb{secrets.token_hex(3)}"
    print(f"mfcd benchmark ({'quick' if args.quick else 'full'}), namespaces {prefix}-*")
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
    text = report(bench.results, s)
    print()
    print(text)
    out = Path(args.out) if args.out else HERE / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(to_json(bench.results, s, args.quick), indent=2) + "\n")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

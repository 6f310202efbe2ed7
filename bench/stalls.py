"""Concurrency and stalls: durable changes/s of concurrent clients, and how long other clients
wait during a large show, after a large batch, during an interface re-creation and a restart.

Usage (root): python bench/stalls.py [--routes N] [--clients 20] [--seconds 5] [--rounds 2]
              [--pairs 8] [--base SRC]
              [--only clients,pings,show,batch,relink,degrade,updown,tables,idle]
              [--work-dir DIR] [--wait-compaction] [--distinct-sources] [--lean-clients]
              [--table-per-line]

Each scenario runs mfcd in a network namespace of its own (`mfcds<random>`, veth pairs
`r0`..`r2`, nothing on the host is touched). With `--base SRC` (a `src` directory of another
revision, e.g. from `git archive`) every scenario runs for that revision (A) and for this
checkout (B) in turn, A B A B, in the same run, so load on the shared machine lands on both.
mfcd is started as `python -m mfcd.daemon` with PYTHONPATH set to the revision's `src`.

- clients: `--clients` connections, each sending `mfc.add` of a new route and waiting for its
  answer, for `--seconds`: changes acknowledged per second (each acknowledged only once
  durable) and the answer time's median and p99; the state file's records and syncs are not
  read, the rate is what clients see. mfcd's CPU time per change (from /proc) and the
  clients' own (this process's) say which side of the shared cores is the limit; the
  median fdatasync of the run's directory, measured just before, what the disk allows
  (each record costs one; two before one sync per record). `--lean-clients`: the same
  connections served by plain sockets and one `select`, answers checked, not decoded
  (the least CPU a client can spend). With `--work-dir /dev/shm`
  syncs cost next to nothing and the rate shows the CPU cost alone.
- pings: the same connections sending `ping`, which changes nothing and waits for no sync:
  requests/s and mfcd's CPU per request (user and system), the cost of the server's own
  path (reading, decoding, answering, asyncio) that every request pays.
- show: `--routes` loaded (and the compaction that follows over), then `show --output json`
  read by a client over a raw connection
  (bytes, time to the last byte, the daemon's peak RSS during it) while a pinger process
  measures the longest wait of a `ping` on its own connection.
- batch: a `--routes` batch; the longest ping wait from its answer to 5 s after it.
- relink: `r1` (every route's oif) deleted and created again; the longest ping wait until
  mfcd logs that the interface is up (every entry written again) and has logged the drift
  check that follows the events.
- degrade: `r1` deleted; the longest ping wait until the drift check that follows is logged.
- updown: `r1` set down, and up 2 s later; the longest ping wait over 4 s.
- restart (with batch): right after the batch is answered, mfcd is stopped and started
  again; time until it answers, peak and settled RSS. With `--wait-compaction`, the
  restart waits for the compaction the batch made due to finish, and the RSS then is
  reported too (the restart then reads a snapshot, not the batch's journal records).
- tables: two tables against one, as `--pairs` pairs of batches, each pair in an mfcd of
  its own: `--routes` into one table, then as many (the same groups) into the other
  (`mfcctl batch --table 100` of the same file; `--table-per-line`: a file whose every line
  ends in `--table 100`, 17% more text to send and read). The order alternates (default
  table first, then table 100 first). Each batch's time and mfcd's CPU time; two tables ÷
  one as 1 + median(second) / median(first), with a 95% bootstrap interval, and the
  medians by table; the RSS after each batch. The control, as many pairs again: the
  second batch is as many new routes into the same table.
- tablestart: two tables against one at a start: in `--pairs` mfcds of their own, the time
  until a restarted mfcd answers with no routes, with `--routes` in one table (snapshot
  read), then with as many more in the other (the table loaded first alternates); two
  tables ÷ one as the ratio of the medians, plain and less the empty start.
- idle: the floor of the above, the longest ping wait over 5 s with `--routes` loaded and
  nothing else happening (the machine's own scheduling delays when it is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
PYTHON = sys.executable
# MFCD_PROFILE=FILE: run mfcd under cProfile, its stats written to FILE when it stops.
_PROFILE_FILE = os.environ.get("MFCD_PROFILE")
PROFILE = ("-m", "cProfile", "-o", _PROFILE_FILE) if _PROFILE_FILE else ()
PINGER = """
import json, socket, sys, time, select
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
f = sock.makefile("rwb")
waits = []
while not select.select([sys.stdin], [], [], 0.005)[0]:
    t = time.monotonic()
    f.write(b'{"v":1,"id":1,"cmd":"ping","args":{}}\\n'); f.flush()
    f.readline()
    waits.append((t, time.monotonic() - t))
print(json.dumps(waits))
"""


def run(*cmd: str, timeout: float = 600) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def group(n: int) -> str:
    return f"232.{n >> 16 & 255}.{(n >> 8) & 255}.{n & 255}"


# --lean-clients: the clients scenario's connections served by _lean_clients
LEAN_CLIENTS = False
# --table-per-line: the tables scenario's second batch names its table on every line.
TABLE_PER_LINE = False

# --distinct-sources: route n from source 10.0.0.0 + n (198.18.0.0/15 holds too few for
# 1,000,000; nothing leaves the namespace), not all from one source
DISTINCT_SOURCES = False


def source(n: int) -> str:
    if not DISTINCT_SOURCES:
        return "198.18.0.3"
    return f"10.{n >> 16 & 255}.{(n >> 8) & 255}.{n & 255}"


def batch_text(start: int, routes: int, table: str = "") -> str:
    return "".join(
        f"mfc add --source {source(n)} --group {group(n)} --iif r0 --oifs r1{table}\n"
        for n in range(start, start + routes)
    )


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Daemon:
    """mfcd of one revision in a namespace of its own."""

    def __init__(self, src: Path, work: Path) -> None:
        self.src, self.work = src, work
        self.ns = f"mfcds{secrets.token_hex(3)}"
        self.sock = str(work / "mfcd.sock")
        self.log = work / "mfcd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        (work / "mfcd.conf").write_text(
            f'socket_path = "{self.sock}"\nstate_file = "{work / "state.journal"}"\n'
            'socket_group = ""\nlog_level = "info"\nmax_request_bytes = 1073741824\n'
            "client_timeout = 600\n"
        )
        run("ip", "netns", "add", self.ns)
        for k in range(3):
            veth = ("type", "veth", "peer", "name", f"p{k}")
            run("ip", "-n", self.ns, "link", "add", f"r{k}", *veth)
            run("ip", "-n", self.ns, "link", "set", f"r{k}", "up")

    def start(self) -> float:
        """Start mfcd; seconds until it answers a ping."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock)
        env = dict(os.environ, PYTHONPATH=str(self.src))
        started = time.monotonic()
        with self.log.open("a") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, PYTHON, *PROFILE, "-m", "mfcd.daemon", "--config",
                 str(self.work / "mfcd.conf")],
                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=self.work,
            )  # fmt: skip
        while True:
            if self.proc.poll() is not None or time.monotonic() - started > 600:
                raise RuntimeError(f"mfcd did not start: {self.log.read_text()[-2000:]}")
            try:
                self.call("ping")
                return time.monotonic() - started
            except OSError:
                time.sleep(0.01)

    def call(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(self.sock)
            f = sock.makefile("rwb")
            f.write(json.dumps({"v": 1, "id": 1, "cmd": cmd, "args": args or {}}).encode() + b"\n")
            f.flush()
            response = json.loads(f.readline())
        if not response.get("ok"):
            raise RuntimeError(f"{cmd}: {response}")
        return response["result"]

    def pinger(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYTHON, "-c", PINGER, self.sock],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        subprocess.run(["ip", "netns", "del", self.ns], check=False, capture_output=True)


def waits_of(pinger: subprocess.Popen[str]) -> list[tuple[float, float]]:
    out, _ = pinger.communicate("stop\n", timeout=600)
    return [(t, w) for t, w in json.loads(out)]


def longest(waits: list[tuple[float, float]], start: float = 0.0, end: float = 1e18) -> float:
    """The longest wait of a ping sent in [start, end] (ms)."""
    return round(1000 * max((w for t, w in waits if start <= t <= end), default=0), 1)


# --- scenarios --------------------------------------------------------------------------------


async def _client(
    path: str, base: int, until: float, answers: list[float], cmd: str = "mfc.add"
) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    n = 0
    while time.monotonic() < until:
        route = base + n
        n += 1
        args = {"source": "198.18.0.4", "group": group(route), "iif": "r0", "oifs": ["r1"]}
        if cmd == "ping":
            args = {}
        t = time.monotonic()
        writer.write(json.dumps({"v": 1, "id": n, "cmd": cmd, "args": args}).encode() + b"\n")
        response = json.loads(await reader.readline())
        if not response.get("ok"):
            raise RuntimeError(f"{cmd}: {response}")
        answers.append(time.monotonic() - t)
    writer.close()


def _lean_clients(path: str, n: int, seconds: float, answers: list[float]) -> None:
    """`_client` for `n` connections at the least CPU a client can spend (--lean-clients):
    plain sockets and one `select` for all of them, each request formatted from a
    template, each answer checked for `"ok":true` instead of decoded. Says how much of
    the figure the benchmark's own clients cost on the cores they share with mfcd."""
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        socks.append(sock)
    template = (
        '{"v":1,"id":%d,"cmd":"mfc.add","args":{"source":"198.18.0.4","group":"%s",'
        '"iif":"r0","oifs":["r1"]}}\n'
    )
    sent = [0.0] * n
    count = [0] * n
    pending = [b""] * n
    by_fd = {sock.fileno(): i for i, sock in enumerate(socks)}

    def send(i: int) -> None:
        count[i] += 1
        sent[i] = time.monotonic()
        socks[i].sendall((template % (count[i], group((i << 16) + count[i] - 1))).encode())

    until = time.monotonic() + seconds
    for i in range(n):
        send(i)
    waiting = set(socks)
    while waiting:
        readable, _, _ = select.select(list(waiting), [], [])
        for sock in readable:
            i = by_fd[sock.fileno()]
            data = pending[i] + sock.recv(65536)
            if not data:
                raise RuntimeError("mfcd closed a connection")
            if not data.endswith(b"\n"):
                pending[i] = data
                continue
            pending[i] = b""
            if b'"ok":true' not in data:
                raise RuntimeError(f"mfc.add: {data[:300]!r}")
            answers.append(time.monotonic() - sent[i])
            if time.monotonic() < until:
                send(i)
            else:
                waiting.discard(sock)
    for sock in socks:
        sock.close()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (all its threads)."""
    return sum(cpu_times(pid))


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time a process has used so far (all its threads), apart."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def pings(d: Daemon, n: int, seconds: float) -> dict[str, Any]:
    d.start()
    assert d.proc is not None
    answers: list[float] = []
    user, system = cpu_times(d.proc.pid)

    async def main() -> float:
        t = time.monotonic()
        until = t + seconds
        await asyncio.gather(*(_client(d.sock, 0, until, answers, "ping") for _ in range(n)))
        return time.monotonic() - t

    took = asyncio.run(main())
    user_after, system_after = cpu_times(d.proc.pid)
    d.stop()
    count = max(len(answers), 1)
    return {
        "requests/s": round(len(answers) / took),
        "answer median ms": round(1000 * statistics.median(answers), 2),
        "mfcd CPU ms per request": round(
            1000 * (user_after - user + system_after - system) / count, 3
        ),
        "… of it system": round(1000 * (system_after - system) / count, 3),
        "mfcd CPU % of one core": round(100 * (user_after - user + system_after - system) / took),
    }


def sync_ms(directory: Path, count: int = 50) -> float:
    """The median time (ms) of a small append and its fdatasync in `directory` now: with
    one of them per journal record (two before one sync per record), what bounds the
    records per second."""
    path = directory / "sync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 200)
            t = time.monotonic()
            os.fdatasync(fd)
            times.append(time.monotonic() - t)
    finally:
        os.close(fd)
        path.unlink()
    return round(1000 * statistics.median(times), 2)


def clients(d: Daemon, n: int, seconds: float) -> dict[str, Any]:
    synced = sync_ms(d.work)
    d.start()
    assert d.proc is not None
    answers: list[float] = []
    (user, system), own_cpu = cpu_times(d.proc.pid), time.process_time()

    async def main() -> float:
        t = time.monotonic()
        until = t + seconds
        await asyncio.gather(*(_client(d.sock, c << 16, until, answers) for c in range(n)))
        return time.monotonic() - t

    if LEAN_CLIENTS:
        t = time.monotonic()
        _lean_clients(d.sock, n, seconds, answers)
        took = time.monotonic() - t
    else:
        took = asyncio.run(main())
    user_after, system_after = cpu_times(d.proc.pid)
    daemon_cpu = user_after - user + system_after - system
    own_cpu = time.process_time() - own_cpu
    d.stop()
    answers.sort()
    # Records of changes in the journal (no compaction below 10,000 changes): changes per sync.
    records = len((d.work / "state.journal").read_bytes().splitlines()) - 2
    return {
        "fdatasync median ms (before)": synced,
        "changes per journal record": round(len(answers) / max(records, 1), 1),
        "changes/s": round(len(answers) / took),
        "answer median ms": round(1000 * statistics.median(answers), 2),
        "answer p99 ms": round(1000 * answers[int(0.99 * (len(answers) - 1))], 2),
        # Where the 2 cores went: mfcd's CPU, and the clients' own (this process).
        "mfcd CPU ms per change": round(1000 * daemon_cpu / max(len(answers), 1), 3),
        "… of it system": round(1000 * (system_after - system) / max(len(answers), 1), 3),
        "mfcd CPU % of one core": round(100 * daemon_cpu / took),
        "clients' CPU ms per change": round(1000 * own_cpu / max(len(answers), 1), 3),
    }


def load(d: Daemon, routes: int, table: int | None = None, start: int = 0) -> float:
    """Load `routes` new routes (from route `start` on) with `mfcctl batch`: into `table` by
    `batch --table N`, the file the same as the default table's, or with --table-per-line
    by a file whose every line ends in `--table N`. Seconds until mfcctl returns."""
    per_line = f" --table {table}" if table and TABLE_PER_LINE else ""
    batch = d.work / f"routes{per_line.replace(' --table ', '')}-{start}.batch"
    if not batch.exists():
        batch.write_text(batch_text(start, routes, per_line))
    option = ["--table", str(table)] if table and not per_line else []
    t = time.monotonic()
    subprocess.run(
        [PYTHON, "-m", "mfcd.cli", "--socket", d.sock, "batch", *option, str(batch)],
        check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(d.src)),
    )  # fmt: skip
    return time.monotonic() - t


def batch(d: Daemon, routes: int, wait_compaction: bool = False) -> dict[str, Any]:
    d.start()
    pinger = d.pinger()
    time.sleep(0.2)
    took = load(d, routes)
    answered = time.monotonic()
    time.sleep(5)
    waits = waits_of(pinger)
    result = {
        "batch answered s": round(took, 2),
        "longest ping wait after the answer ms": longest(waits, answered),
        "RSS after ... MiB (peak, now)": [
            round(kib(d.proc.pid, "VmHWM") / 1024, 1),  # type: ignore[union-attr]
            round(kib(d.proc.pid, "VmRSS") / 1024, 1),  # type: ignore[union-attr]
        ],
    }
    if wait_compaction:  # and once the compaction the batch made due has finished
        compacted(d)
        result["RSS once compacted MiB"] = round(kib(d.proc.pid, "VmRSS") / 1024, 1)  # type: ignore[union-attr]
    # The restart right after a batch: its last journal record is the whole batch.
    d.stop()
    started = d.start()
    assert d.proc is not None
    result["restart → answers s"] = round(started, 2)
    result["RSS after restart MiB (peak, now)"] = [
        round(kib(d.proc.pid, "VmHWM") / 1024, 1),
        round(kib(d.proc.pid, "VmRSS") / 1024, 1),
    ]
    d.stop()
    return result


def compacted(d: Daemon, timeout: float = 300) -> None:
    """Wait until mfcd has logged the compaction a batch made due (it runs in a thread, for
    11-18 s after a batch of 1,000,000 routes, and its JSON encoding holds the GIL)."""
    deadline = time.monotonic() + timeout
    while "compacted the state file" not in d.log.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no compaction within {timeout} s of the batch")
        time.sleep(0.2)


def show(d: Daemon, routes: int) -> dict[str, Any]:
    d.start()
    load(d, routes)
    if routes >= 10_000:  # (the journal of a fresh mfcd is compacted from 10,000 ops)
        compacted(d)  # (a show during the compaction would measure the compaction's stalls)
    time.sleep(1)
    assert d.proc is not None
    Path(f"/proc/{d.proc.pid}/clear_refs").write_text("5")  # VmHWM from now on
    rss = kib(d.proc.pid, "VmRSS")
    pinger = d.pinger()
    time.sleep(0.2)
    t = time.monotonic()
    size = 0  # (pings sent while the show is under way count)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(d.sock)
        sock.sendall(b'{"v":1,"id":1,"cmd":"show","args":{}}\n')
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise RuntimeError("connection closed during show")
            size += len(data)
            if data.endswith(b"\n"):
                break
    took = time.monotonic() - t
    time.sleep(0.2)
    waits = waits_of(pinger)
    result = {
        "show bytes": size,
        "show s": round(took, 2),
        "longest ping wait during show ms": longest(waits, t, t + took),
        "the 3 longest: ms at s into the show": [
            [round(1000 * w, 1), round(at - t, 2)]
            for at, w in sorted((x for x in waits if t <= x[0] <= t + took), key=lambda x: x[1])[
                -3:
            ]
        ],
        "RSS growth during show MiB": round((kib(d.proc.pid, "VmHWM") - rss) / 1024, 1),
    }
    d.stop()
    return result


# The line mfcd logs once every entry on a re-created r1 is written again (before sliced
# re-creation: with the VIF, in one go).
RELINKED = re.compile(r"interface r1 up.*(reissue_mfc|written again)")


# The line of the drift check that follows interface events on r1 (a second after them).
CHECKED = re.compile(r"drift check of routes on r1")


def logged(d: Daemon, pattern: re.Pattern[str], seen: int, since: float) -> float:
    """Wait until `pattern` is in the log more than `seen` times; seconds since `since`."""
    while len(pattern.findall(d.log.read_text())) <= seen:
        if time.monotonic() - since > 600:
            raise RuntimeError(f"no {pattern.pattern!r} in 10 minutes")
        time.sleep(0.05)
    return time.monotonic() - since


def relink(d: Daemon, routes: int) -> dict[str, Any]:
    d.start()
    load(d, routes)
    time.sleep(6)
    text = d.log.read_text()
    seen, checked = len(RELINKED.findall(text)), len(CHECKED.findall(text))
    pinger = d.pinger()
    time.sleep(0.2)
    t = time.monotonic()
    run("ip", "-n", d.ns, "link", "del", "r1")
    run("ip", "-n", d.ns, "link", "add", "r1", "type", "veth", "peer", "name", "p1")
    run("ip", "-n", d.ns, "link", "set", "r1", "up")
    took = logged(d, RELINKED, seen, t)
    until = logged(d, CHECKED, checked, t)  # (it may run before the rewrite ends)
    time.sleep(0.2)
    waits = waits_of(pinger)
    d.stop()
    return {
        "re-creation to logged s": round(took, 2),
        "and its drift check s": round(until, 2),
        "longest ping wait ms": longest(waits, t),
    }


def degrade(d: Daemon, routes: int) -> dict[str, Any]:
    """r1 (every route's oif) deleted: the longest ping wait until the drift check that
    follows is logged."""
    d.start()
    load(d, routes)
    time.sleep(6)
    checked = len(CHECKED.findall(d.log.read_text()))
    pinger = d.pinger()
    time.sleep(0.2)
    t = time.monotonic()
    run("ip", "-n", d.ns, "link", "del", "r1")
    took = logged(d, CHECKED, checked, t)
    time.sleep(0.2)
    waits = waits_of(pinger)
    d.stop()
    return {
        "deletion to drift check logged s": round(took, 2),
        "longest ping wait ms": longest(waits, t),
    }


def updown(d: Daemon, routes: int) -> dict[str, Any]:
    """r1 set down, then up again 2 s later: the longest ping wait over 4 s."""
    d.start()
    load(d, routes)
    time.sleep(6)
    pinger = d.pinger()
    time.sleep(0.2)
    t = time.monotonic()
    run("ip", "-n", d.ns, "link", "set", "r1", "down")
    time.sleep(2)
    run("ip", "-n", d.ns, "link", "set", "r1", "up")
    time.sleep(2)
    waits = waits_of(pinger)
    d.stop()
    return {"longest ping wait ms": longest(waits, t)}


def tables(d: Daemon, routes: int, pairs: int) -> dict[str, Any]:
    """Two tables against one, as `pairs` pairs of batches, each pair in an mfcd of its own:
    `routes` into one table, then as many (the same groups) into the other. The order
    alternates (default table first, then table 100 first), so "second" is never one
    table: a cost of table 100 itself shows in the medians by table. Two tables ÷ one is
    1 + median(second) / median(first), with a 95% bootstrap interval of that ratio. The
    control, as many pairs again: the second batch is `routes` new groups into the same
    table, which says whether a second batch costs more for its table or for the routes
    already there. RSS (settled, after the compaction) from the first pair."""
    runs, rss, peak = _pairs(d, routes, pairs, control=False)
    control, _, _ = _pairs(d, routes, pairs, control=True)
    one, two = rss[1] - rss[0], rss[2] - rss[0]
    return {
        **_ratios("", runs),
        **_ratios("control: ", control),
        "RSS MiB (empty, one table, two)": [round(r / 1024, 1) for r in rss],
        "two tables / one: RSS growth": round(two / one, 2),
        "two tables / one: RSS": round(rss[2] / rss[1], 2),
        "RSS peak MiB": round(peak / 1024, 1),
    }


def _pairs(
    d: Daemon, routes: int, pairs: int, control: bool
) -> tuple[list[dict[str, Any]], list[int], int]:
    """`pairs` fresh mfcds (the first is `d`), each given two batches of `routes`: for each,
    the table of each batch and its wall time and mfcd CPU time; the RSS (KiB) before, after
    the first and after the second batch of the first pair, and that pair's peak RSS."""
    runs: list[dict[str, Any]] = []
    rss: list[int] = []
    peak = 0
    for k in range(pairs):
        order: tuple[int | None, int | None] = (None, 100) if k % 2 == 0 else (100, None)
        if control:
            order = (order[0], order[0])
        if k == 0 and not control:
            daemon = d
        else:
            (d.work / f"pair{int(control)}-{k}").mkdir()
            daemon = Daemon(d.src, d.work / f"pair{int(control)}-{k}")
        try:
            daemon.start()
            assert daemon.proc is not None
            sizes = [kib(daemon.proc.pid, "VmRSS")]
            run_: dict[str, Any] = {"tables": [t or "default" for t in order], "s": [], "cpu": []}
            for second, table in enumerate(order):
                before = cpu_seconds(daemon.proc.pid)
                start = routes if control and second else 0
                run_["s"].append(load(daemon, routes, table, start))
                run_["cpu"].append(cpu_seconds(daemon.proc.pid) - before)
                time.sleep(6)  # the compaction after the batch is over
                sizes.append(kib(daemon.proc.pid, "VmRSS"))
            if k == 0 and not control:
                rss, peak = sizes, kib(daemon.proc.pid, "VmHWM")
            runs.append(run_)
        finally:
            if daemon is d:
                daemon.stop()  # (the caller closes its namespace)
            else:
                daemon.close()
    return runs, rss, peak


def _ratios(prefix: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The batches' times and CPU, and two tables ÷ one (see tables) with its interval."""
    out: dict[str, Any] = {
        prefix + "batch s (first, second)": [[round(t, 2) for t in r["s"]] for r in runs],
        prefix + "batch CPU s (first, second)": [[round(c, 2) for c in r["cpu"]] for r in runs],
    }
    for what, key in (("time", "s"), ("CPU", "cpu")):
        first = [r[key][0] for r in runs]
        second = [r[key][1] for r in runs]
        low, high = _interval(first, second)
        out[f"{prefix}two tables / one: {what}"] = round(_ratio(first, second), 3)
        out[f"{prefix}two tables / one: {what}, 95% interval"] = [round(low, 3), round(high, 3)]
        by_table: dict[str, list[float]] = {}
        for r in runs:
            for table, value in zip(r["tables"], r[key], strict=True):
                by_table.setdefault(str(table), []).append(value)
        out[f"{prefix}median {what} by table"] = {
            t: round(statistics.median(v), 3) for t, v in by_table.items()
        }
    return out


def tablestart(d: Daemon, routes: int, pairs: int) -> dict[str, Any]:
    """Two tables against one at a start (recovery from the state file): in `pairs` mfcds
    of their own, the time until a restarted mfcd answers with no routes, with `routes` in
    one table, and with as many more (the same groups) in the other; which table is loaded
    first alternates. Two tables ÷ one is median(two) / median(one), and the same less the
    empty start (the process's own fixed cost, which flatters the plain ratio)."""
    times: dict[str, list[float]] = {"empty": [], "one": [], "two": []}
    for k in range(pairs):
        order = (None, 100) if k % 2 == 0 else (100, None)
        daemon = d
        if k:
            (d.work / f"start-{k}").mkdir()
            daemon = Daemon(d.src, d.work / f"start-{k}")
        try:
            daemon.start()
            for what, table in (("empty", None), ("one", order[0]), ("two", order[1])):
                if what != "empty":
                    load(daemon, routes, table)
                    time.sleep(6)  # the compaction after the batch is over: a snapshot is read
                daemon.stop()
                times[what].append(daemon.start())
        finally:
            if daemon is d:
                daemon.stop()
            else:
                daemon.close()
    median = {what: statistics.median(v) for what, v in times.items()}
    return {
        "start s (empty, one table, two)": [[round(t, 3) for t in times[w]] for w in times],
        "two tables / one: start": round(median["two"] / median["one"], 3),
        "two tables / one: start less the empty start": round(
            (median["two"] - median["empty"]) / (median["one"] - median["empty"]), 3
        ),
    }


def _ratio(first: list[float], second: list[float]) -> float:
    return 1 + statistics.median(second) / statistics.median(first)


def _interval(first: list[float], second: list[float], draws: int = 4000) -> tuple[float, float]:
    """A 95% percentile-bootstrap interval of _ratio (a fixed seed: the same runs give the
    same interval)."""
    pick = random.Random(12).choices
    got = sorted(
        _ratio(pick(first, k=len(first)), pick(second, k=len(second))) for _ in range(draws)
    )
    return got[int(0.025 * draws)], got[int(0.975 * draws) - 1]


def idle(d: Daemon, routes: int) -> dict[str, Any]:
    """The floor: the longest ping wait over 5 s with `routes` loaded and nothing else asked
    (the machine's own scheduling delays, on a shared machine)."""
    d.start()
    load(d, routes)
    time.sleep(6)
    pinger = d.pinger()
    time.sleep(5)
    waits = waits_of(pinger)
    d.stop()
    return {"longest ping wait, idle, ms": longest(waits)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--pairs", type=int, default=8, help="tables: pairs of batches (each in an mfcd of its own)"
    )
    parser.add_argument("--base", type=Path, help="src directory of the revision to compare (A)")
    parser.add_argument("--only", default="clients,show,batch,relink")
    parser.add_argument("--wait-compaction", action="store_true", help="see batch")
    parser.add_argument(
        "--distinct-sources", action="store_true", help="every route from a source of its own"
    )
    parser.add_argument(
        "--lean-clients",
        action="store_true",
        help="clients: plain sockets and one select, answers not decoded (see _lean_clients)",
    )
    parser.add_argument(
        "--table-per-line",
        action="store_true",
        help="tables: table 100's batch ends every line in --table 100 (not batch --table 100)",
    )
    parser.add_argument("--keep-logs", type=Path, help="copy each run's mfcd log into DIR")
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="make each run's directory (state file included) in DIR, e.g. /dev/shm: syncs"
        " then cost next to nothing and the clients scenario measures CPU alone",
    )
    args = parser.parse_args()
    global DISTINCT_SOURCES, LEAN_CLIENTS, TABLE_PER_LINE  # noqa: PLW0603 (the whole run's)
    DISTINCT_SOURCES = args.distinct_sources
    LEAN_CLIENTS = args.lean_clients
    TABLE_PER_LINE = args.table_per_line
    if os.geteuid() != 0:
        sys.exit("stalls.py: needs root (it creates network namespaces)")
    revisions = {"B (this checkout)": SRC}
    if args.base is not None:
        revisions = {"A (base)": args.base.resolve(), **revisions}
    scenarios = {
        "clients": lambda d: clients(d, args.clients, args.seconds),
        "pings": lambda d: pings(d, args.clients, args.seconds),
        "show": lambda d: show(d, args.routes),
        "batch": lambda d: batch(d, args.routes, args.wait_compaction),
        "relink": lambda d: relink(d, args.routes),
        "degrade": lambda d: degrade(d, args.routes),
        "updown": lambda d: updown(d, args.routes),
        "idle": lambda d: idle(d, args.routes),
        "tables": lambda d: tables(d, args.routes, args.pairs),
        "tablestart": lambda d: tablestart(d, args.routes, args.pairs),
    }
    results: dict[str, Any] = {"routes": args.routes, "connections": args.clients, "load": []}
    for name in args.only.split(","):
        for round_ in range(args.rounds):
            for label, src in revisions.items():
                with tempfile.TemporaryDirectory(prefix="mfcd-stalls-", dir=args.work_dir) as tmp:
                    d = Daemon(src, Path(tmp))
                    try:
                        got = scenarios[name](d)
                    finally:
                        d.close()
                        if args.keep_logs is not None:
                            args.keep_logs.mkdir(parents=True, exist_ok=True)
                            kept = args.keep_logs / f"{name}-{round_ + 1}-{label[0]}.log"
                            kept.write_bytes(d.log.read_bytes())
                print(f"{name} round {round_ + 1} {label}: {json.dumps(got)}", flush=True)
                results.setdefault(name, {}).setdefault(label, []).append(got)
                results["load"].append(round(os.getloadavg()[0], 1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Recovery at start, in one process: reading the state file and restoring its routes into
the real kernel, phase by phase, for two revisions against the raw setsockopt loop.

Usage (root): python bench/restore_ab.py --base SRC [--head SRC] [--routes N] [--rounds R]
              [--form journal|snapshot] [--profile FILE]

A private network namespace with a veth pair (r0, r1) holds the kernel's tables.
Each revision writes its own state file of N routes (`bench/run.py`'s routes: one source
in 62,500 per 16 routes, every group distinct, iif r0, oif r1) as a restart finds it:
`journal`, the records of one `mfcctl batch` (the default; a restart right after a large
batch), or `snapshot`, a compacted file. Then, in a fresh process per round, in turn: the
raw loop (MRT_ADD_MFC of N structs packed in advance), revision A, the raw loop,
revision B. A revision's round is what Daemon._restore does before it answers: imports,
StateFile.load, Controller.restore into a Kernel of both families, with the cyclic GC
paused (a revision that streams the restore from the read, Controller.restore_stream, does
so; its "load" phase then holds the kernel's writes made meanwhile). Printed: CPU time
(process_time) and wall-clock time of each phase, and the ratio of the whole to the raw
loop of the same round, and the user and system parts of the CPU time of each (os.times).
`--profile FILE` runs B's last round under cProfile and writes its stats to FILE.
Figures: docs/benchmarks.md, "Recovery at
start through runs".
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WRITE = """
import sys
from mfcd.model import AddRoute, Ports
from mfcd.state import RouteView, StateFile
sys.path.insert(0, {bench!r})
from nsagent import route_addr
n, form, path = {n}, {form!r}, {path!r}
ports = Ports("r0", ("r1",))
routes = {{(4, *route_addr(i), 253): ports for i in range(n)}}
state = StateFile(path)
state.lock()
state.load()
if form == "journal":
    state.write_snapshot([], {{}})
    state.append([AddRoute(k, p) for k, p in routes.items()])
else:
    state.write_snapshot(RouteView(routes), {{}})
state.close()
"""

RESTORE = """
import os, time
wall0, cpu0, times0 = time.monotonic(), time.process_time(), os.times()
import gc, json, sys
from mfcd import netlink
from mfcd.controller import Controller, gc_paused
from mfcd.kernel import Kernel
from mfcd.state import StateFile
wall1, cpu1 = time.monotonic(), time.process_time()
profile = {profile!r}
if profile:
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
with gc_paused():
    state = StateFile({path!r})
    state.lock()
    kernel = Kernel([4, 6])
    controller = Controller(kernel, state)
    links = netlink.current_links()
    if hasattr(controller, "restore_stream"):  # (the routes go in while the file is read)
        stream = controller.restore_stream(links)
        loaded = state.load(stream)
        wall2, cpu2 = time.monotonic(), time.process_time()
        controller.restore(loaded, links, stream)
        del stream
    else:
        loaded = state.load()
        wall2, cpu2 = time.monotonic(), time.process_time()
        controller.restore(loaded, links)
    del loaded
    gc.freeze()
wall3, cpu3, times3 = time.monotonic(), time.process_time(), os.times()
if profile:
    prof.disable()
    prof.dump_stats(profile)
assert len(controller.router.installed) == {n}, len(controller.router.installed)
print(json.dumps({{
    "imports": cpu1 - cpu0, "load": cpu2 - cpu1, "restore": cpu3 - cpu2, "cpu": cpu3 - cpu0,
    "wall": wall3 - wall0, "load wall": wall2 - wall1, "restore wall": wall3 - wall2,
    "user": times3.user - times0.user, "sys": times3.system - times0.system,
}}))
kernel.close()
state.close()
"""

RAW = """
import json, os, socket, struct, sys, time
sys.path.insert(0, {bench!r})
from nsagent import _packed
MFCCTL = struct.Struct("=4s4sH32s2xIIIi")
VIFCTL = struct.Struct("=HBBIi4s")
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
sock.setsockopt(socket.IPPROTO_IP, 200, struct.pack("=i", 1))
for vifi, name in enumerate(("r0", "r1")):
    vif = VIFCTL.pack(vifi, 8, 1, 0, socket.if_nametoindex(name), bytes(4))
    sock.setsockopt(socket.IPPROTO_IP, 202, vif)
addrs = [_packed(i) for i in range({n})]
ttls = bytes([0, 1] + [0] * 30)
setsockopt, pack, level = sock.setsockopt, MFCCTL.pack, socket.IPPROTO_IP
wall0, cpu0, times0 = time.monotonic(), time.process_time(), os.times()
for src, grp in addrs:
    setsockopt(level, 204, pack(src, grp, 0, ttls, 0, 0, 0, 0))
times1 = os.times()
print(json.dumps({{
    "wall": time.monotonic() - wall0, "cpu": time.process_time() - cpu0,
    "user": times1.user - times0.user, "sys": times1.system - times0.system,
}}))
sock.close()
"""


def run_snippet(code: str, src: str | None = None, ns: str | None = None) -> dict[str, float]:
    """Run `code` in a fresh interpreter, in network namespace `ns` if given, with revision
    `src` first on its path if given; the JSON object it prints (empty if none). Its stderr
    ends the bench if it fails. (bench/restore_parts.py runs its rounds through it too.)"""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    where = ["ip", "netns", "exec", ns] if ns is not None else []
    done = subprocess.run(
        [*where, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    out: dict[str, float] = json.loads(done.stdout) if done.stdout.strip() else {}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="revision A's src directory")
    parser.add_argument("--head", default=str(REPO / "src"), help="revision B's src")
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--form", choices=("journal", "snapshot"), default="journal")
    parser.add_argument("--profile", help="cProfile stats of B's last round to this file")
    args = parser.parse_args()
    ns = f"mfcdrs{secrets.token_hex(3)}"
    revisions = {"A": str(Path(args.base).resolve()), "B": str(Path(args.head).resolve())}
    bench = str(REPO / "bench")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rows: dict[str, list[float]] = {}
    try:
        link = ["ip", "-n", ns, "link"]
        subprocess.run([*link, "add", "r0", "type", "veth", "peer", "name", "r1"], check=True)
        for name in ("r0", "r1"):
            subprocess.run([*link, "set", name, "up"], check=True)
        with tempfile.TemporaryDirectory(prefix="mfcd-restore-ab-", dir="/var/tmp") as tmp:
            paths = {rev: f"{tmp}/{rev}/state.journal" for rev in revisions}
            for rev, src in revisions.items():
                code = WRITE.format(bench=bench, n=args.routes, form=args.form, path=paths[rev])
                run_snippet(code, src, ns)
            for r in range(args.rounds):
                for rev, src in revisions.items():
                    raw = run_snippet(RAW.format(bench=bench, n=args.routes), ns=ns)
                    profile = args.profile if rev == "B" and r == args.rounds - 1 else ""
                    code = RESTORE.format(path=paths[rev], n=args.routes, profile=profile)
                    got = run_snippet(code, src, ns)
                    got["raw wall"], got["raw cpu"] = raw["wall"], raw["cpu"]
                    got["raw user"], got["raw sys"] = raw["user"], raw["sys"]
                    got["wall ÷ raw"] = got["wall"] / raw["wall"]
                    got["cpu ÷ raw cpu"] = got["cpu"] / raw["cpu"]
                    for k, v in got.items():
                        rows.setdefault(f"{rev} {k}", []).append(v)
                    print(
                        f"round {r + 1} {rev}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items())
                    )
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    print(f"\n{args.routes} routes, {args.form}, medians (ranges) of {args.rounds} rounds:")
    for k, values in rows.items():
        print(f"  {k}: {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Three route-engine costs a review found (2026-12-03), each timed in-process with the unit
tests' fake kernel and state file, A and B in turn.

Usage: python bench/engine_costs.py [--base SRC] [--head SRC] [--rounds R]
                                    [--routes N] [--links L] [--config-routes M]

- `note_short`: N runtime routes with wildcard oifs (`vlan*`) on a box of L interfaces (20
  vlans, the rest container veths): one more wildcard route added (a pattern change), and
  a veth coming and going (a link event no pattern matches), as the daemon follows it
  (link_event, then the config files' and the runtime wildcards followed), and a vlan
  coming and going (one every pattern matches: each route changes).
- `unreached`: a reload's `unreached_of` over M added config routes, the longest stretch it
  holds the loop (B: between two turns of the loop in the sliced pass).
- `pending`: a JSON batch of 100,000 plain routes while one wildcard route is short of
  an interface (Commands._pending after the batch).

Each child prints the median of its repeats (process CPU time); the summary gives each
revision's median over the rounds. Figures: docs/benchmarks.md, "Engine costs found in
review (2026-12-03)".
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from revision_ab import parser, revisions, run_child  # noqa: E402

CHILD = """
import asyncio, gc, inspect, json, logging, statistics, sys, time
from mfcd import wildcards
from mfcd.controller import Controller
from mfcd.model import AddRoute, Ports
from tests.unit.conftest import FakeKernel, FakeState

n, nlinks, nconfig = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
logging.basicConfig(level=logging.WARNING, stream=open("/dev/null", "w"))
clock = time.process_time
out = {}

def median(f, repeats=7):
    times = []
    for _ in range(repeats):
        started = clock()
        f()
        times.append(clock() - started)
    return statistics.median(times)

# --- note_short: runtime wildcard routes, link events and pattern changes ----------------
c = Controller(FakeKernel(), FakeState())
names = ["a"] + [f"vlan{i}" for i in range(20)] + [f"veth{i}" for i in range(nlinks - 21)]
for ifindex, name in enumerate(names, 1):
    c.link_up(name, ifindex)
pattern = wildcards.pattern("a", ("vlan*",))
def key(i):
    return (4, "198.18.0.1", f"239.1.{i >> 8 & 255}.{i & 255}", 0)
c.change([AddRoute(key(i), pattern) for i in range(n)], keep_steps=False)
c.flush()
follows = inspect.signature(c.follow_api_wildcards).parameters
def follow(touched):
    kw = {"names": touched} if "names" in follows else {}
    c.follow_wildcards(**kw)
    c.follow_api_wildcards(**kw)
extra = iter(range(n, n + 10_000))
def add_one():
    c.change([AddRoute(key(next(extra)), pattern)], keep_steps=False)
def veth_flap():
    c.link_event("new", "vethx", 9999)
    follow({"vethx"})
    c.link_event("del", "vethx", 9999)
    follow({"vethx"})
def vlan_flap():  # (one every pattern matches: each route follows it, both revisions)
    c.link_event("new", "vlanx", 9998)
    follow({"vlanx"})
    c.link_event("del", "vlanx", 9998)
    follow({"vlanx"})
out["wild add"] = median(add_one, 21)
out["veth up+down"] = median(veth_flap, 7)
out["vlan up+down"] = median(vlan_flap, 3)
assert not c.router.short

# --- pending: one short wildcard route, then a batch of plain routes ----------------------
from mfcd.commands import Commands, Peer
c = Controller(FakeKernel(), FakeState())
for ifindex, name in enumerate(("a", "b", "vlan1"), 1):
    c.link_up(name, ifindex)
c.change([AddRoute(key(0), wildcards.pattern("a", ("vlan*", "eth*")))], keep_steps=False)
assert c.router.short
commands = Commands(c, (4, 6))
plain = Ports("a", ("b",))
changes = [AddRoute((4, "198.18.0.2", f"239.2.{i >> 8 & 255}.{i & 255}", 0), plain)
           for i in range(100_000)]
out["pending 100k"] = median(lambda: commands._pending(changes, []), 7)

# --- unreached: a reload's warnings over M added config routes ---------------------------
from mfcd import daemon, declarations
from mfcd import config
from mfcd.diagnosis import Rules
keys = [(4, f"198.18.{i >> 16 & 255}.{i >> 8 & 255}", f"239.3.{i >> 8 & 255}.{i & 255}", 0)
        for i in range(nconfig)]
ports = Ports("a", ("b",))
declared = declarations.Declarations(
    files=["bench.conf"], routes=dict.fromkeys(keys, ports),
    positions={k: i + 1 for i, k in enumerate(keys)})
change = declarations.Diff(added=keys)
mfcd = daemon.Daemon(config.Config(), "bench.conf", {})
mfcd.controller = Controller(FakeKernel(), FakeState())
mfcd.controller.link_up("a", 1)
mfcd.controller.link_up("b", 2)
mfcd.mrules = lambda family: Rules()

async def warnings():
    gaps, done = [], False
    async def ticker():
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    started = time.perf_counter()
    await mfcd._reload_warnings(declared, {}, True, change)
    total = time.perf_counter() - started
    done = True
    await tick
    return max(gaps), total

gc.disable()  # (as during a reload: Daemon._reload pauses the cyclic GC)
held = [asyncio.run(warnings()) for _ in range(5)]
out["reload longest hold"] = statistics.median(h[0] for h in held)
out["reload warnings total"] = statistics.median(h[1] for h in held)
print(json.dumps(out))
"""


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--routes", type=int, default=2_000)
    arguments.add_argument("--links", type=int, default=200)
    arguments.add_argument("--config-routes", type=int, default=1_000_000)
    args = arguments.parse_args()
    sizes = (str(args.routes), str(args.links), str(args.config_routes))
    figures: list[tuple[str, dict[str, float]]] = []  # (revision, its figures) as they ran
    for round_, (name, src) in itertools.product(range(1, args.rounds + 1), revisions(args)):
        figures.append((name, run_child(src, CHILD, *sizes)))
        text = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in figures[-1][1].items())
        print(f"round {round_} {name}: {text}", flush=True)
    for (name, _), kind in itertools.product(revisions(args), figures[0][1]):
        values = [f[kind] * 1e3 for n, f in figures if n == name]
        low, high = min(values), max(values)
        print(f"{name} {kind}: median {statistics.median(values):.2f} ms ({low:.2f}-{high:.2f})")


if __name__ == "__main__":
    main()

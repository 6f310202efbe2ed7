"""The control socket's own cost per request: mfcd's Server (asyncio, the connections, group
commit with its journal thread) and Commands, with the unit tests' fake kernel and journal,
under lean clients on open connections; no disk, no kernel, no namespace.

Usage: python bench/server_path.py [--base SRC] [--head SRC] [--clients N] [--requests N]
                                   [--rounds R] [--kind add|ping]

Each round serves `--clients` connections (default 20) of a client process that sends
`--requests` requests on each (`mfc.add` of new routes, or `ping`), the next once the last
is answered (as bench/stalls.py --lean-clients does). It reports the server process's CPU
time per request (`time.process_time`: all its threads, the client's process not counted)
and, in a second run of the same round under cProfile, the Python function and C calls per
request (deterministic but for how requests fall into groups). With `--base` (a `src`
directory of another revision), A (`--base`) and B (`--head`, default this checkout's
`src`) run in turn, each in a process of its own, A B A B.
Figures: docs/benchmarks.md, "Group commit towards 5,000 changes/s: the server's own path".
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from revision_ab import parser, revisions, run_child  # noqa: E402

CLIENT = """
import select, socket, sys
path, n, requests, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
add = ('{"v":1,"id":%d,"cmd":"mfc.add","args":{"source":"10.0.0.1","group":"239.%d.%d.%d",'
       '"iif":"a","oifs":["b"]}}\\n')
ping = '{"v":1,"id":%d,"cmd":"ping","args":{}}\\n'
socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n)]
for s in socks:
    s.connect(path)
count = [0] * n
def send(i):
    c = count[i] = count[i] + 1
    k = i * requests + c
    line = add % (c, k >> 16 & 255, k >> 8 & 255, k & 255) if kind == "add" else ping % c
    socks[i].sendall(line.encode())
for i in range(n):
    send(i)
by_fd = {s.fileno(): i for i, s in enumerate(socks)}
waiting = set(socks)
while waiting:
    for s in select.select(list(waiting), [], [])[0]:
        data = s.recv(65536)
        assert data.endswith(b"\\n") and b'"ok":true' in data, data
        i = by_fd[s.fileno()]
        if count[i] < requests:
            send(i)
        else:
            waiting.discard(s)
"""

CHILD = """
import asyncio, cProfile, json, logging, os, pstats, sys, tempfile, time
from mfcd.commands import Commands
from mfcd.controller import Controller
from mfcd.server import Server, bind_control_socket
from tests.unit.conftest import FakeKernel, FakeState

clients, requests, kind, client = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
logging.basicConfig(level=logging.INFO, stream=open("/dev/null", "w"))

def commands():
    controller = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        controller.link_up(name, ifindex)
    return Commands(controller, (4, 6))

async def serve(profile):
    path = os.path.join(tempfile.mkdtemp(), "mfcd.sock")
    server = Server(commands(), path, 600.0, 1 << 20)
    await server.start(bind_control_socket(path, "", 0o600))
    started = time.process_time()
    if profile is not None:
        profile.enable()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", client, path, str(clients), str(requests), kind)
    assert await proc.wait() == 0
    if profile is not None:
        profile.disable()
    spent = time.process_time() - started
    await server.stop()
    return spent / (clients * requests)

cpu = asyncio.run(serve(None))
profile = cProfile.Profile()
asyncio.run(serve(profile))
calls = pstats.Stats(profile).total_calls / (clients * requests)
print(json.dumps({"cpu": cpu, "calls": calls}))
"""


def measure(src: Path, clients: int, requests: int, kind: str) -> dict[str, float]:
    """Run the child for revision `src`: CPU seconds and calls per request."""
    return run_child(src, CHILD, str(clients), str(requests), kind, CLIENT)


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--clients", type=int, default=20)
    arguments.add_argument("--requests", type=int, default=500, help="per client")
    arguments.add_argument("--kind", choices=("add", "ping"), default="add")
    args = arguments.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in revisions(args)}
    for round_ in range(1, args.rounds + 1):
        for name, src in revisions(args):
            figures = measure(src, args.clients, args.requests, args.kind)
            results[name].append(figures)
            print(
                f"round {round_} {name}: {figures['cpu'] * 1e6:.1f} us of CPU,"
                f" {figures['calls']:.1f} calls per request",
                flush=True,
            )
    for name, rounds in results.items():
        cpu = [r["cpu"] * 1e6 for r in rounds]
        calls = [r["calls"] for r in rounds]
        print(
            f"{name} {args.kind}: {min(cpu):.1f}-{max(cpu):.1f} us of CPU per request"
            f" (median {statistics.median(cpu):.1f}),"
            f" {min(calls):.1f}-{max(calls):.1f} calls per request"
        )


if __name__ == "__main__":
    main()

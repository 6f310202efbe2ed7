"""The single change's own cost: `Commands.submit` of one-route `mfc.add` and `mfc.del` requests,
without the server, the kernel or the disk.

Usage: python bench/request_path.py [--base SRC] [--head SRC] [--changes N] [--rounds R]
                                    [--profile [FILE]] [--mix plain|readd|dry]

Each round handles N `mfc.add` of new routes (one source, N groups, iif a, oif b) and then
their N `mfc.del`, as requests on an open connection would be: `submit`, a flush of the
group every 10 changes (as the journal's thread would sync it) and `settle` of its
answers, with the unit tests' fake kernel and state file and the log at INFO (written to
/dev/null). It reports the process's CPU time per request (`time.process_time`: other work
on a shared machine slows it down much less than wall-clock time), the best of the round.
With `--base` (a `src` directory of another revision, e.g. from `git archive`), revision A
(`--base`) and B (`--head`, default this checkout's `src`) run in turn, each in a process
of its own, A B A B. `--profile` runs B once under cProfile instead and prints the
functions by their own time and by cumulative time (or writes the stats to FILE).
`--mix readd` sends each add twice in a row (the second changes nothing), `--mix dry` a
dry run of another route's add before each add: "add" is then per request of the mix.
Figures: docs/benchmarks.md, "The single change's own cost (issue 12)".
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from revision_ab import parser, revisions, run_child  # noqa: E402

CHILD = """
import cProfile, json, logging, pstats, sys, time
from mfcd.commands import Commands, Peer
from mfcd.controller import Controller
from tests.unit.conftest import FakeKernel, FakeState

n, profile, mix = int(sys.argv[1]), sys.argv[2], sys.argv[3]
logging.basicConfig(level=logging.INFO, stream=open("/dev/null", "w"))
peer = Peer(pid=1, uid=0, gid=0)

def request(i, cmd, dry_run=False, **args):
    envelope = {"v": 1, "id": i, "cmd": cmd, "args": args}
    if dry_run:
        envelope["dry_run"] = True
    return json.dumps(envelope).encode() + b"\\n"

groups = [f"239.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(n)]
adds = [request(i, "mfc.add", source="10.0.0.1", group=g, iif="a", oifs=["b"])
        for i, g in enumerate(groups)]
dels = [request(i, "mfc.del", source="10.0.0.1", group=g) for i, g in enumerate(groups)]
if mix == "readd":  # each add sent again at once: the same route, no change
    adds = [line for add in adds for line in (add, add)]
elif mix == "dry":  # a dry run of another route's add before each add
    tries = [request(i, "mfc.add", True, source="10.0.0.3", group=g, iif="a", oifs=["b"])
             for i, g in enumerate(groups)]
    adds = [line for pair in zip(tries, adds) for line in pair]

def commands():
    controller = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        controller.link_up(name, ifindex)
    controller.grouping = True
    # One route kept, so that the VIFs stay: every add and del is one MFC entry.
    controller.change(controller_route())
    controller.flush()
    return Commands(controller, (4, 6))

def controller_route():
    from mfcd import validate
    return [validate.route_change(
        {"source": "10.0.0.2", "group": "239.255.0.1", "iif": "a", "oifs": ["b"]})]

def run(c, lines):
    answers = []
    started = time.process_time()
    for i, line in enumerate(lines):
        answers.append(c.submit(line, peer))
        if i % 10 == 9:
            c.flush()
            for answer in answers:
                assert b'"ok":true' in c.settle(answer)  # (not decoded: not the daemon's work)
            answers.clear()
    c.flush()
    for answer in answers:
        assert b'"ok":true' in c.settle(answer)
    return (time.process_time() - started) / len(lines)

if profile != "-":
    c = commands()
    p = cProfile.Profile()
    p.enable()
    run(c, adds)
    run(c, dels)
    p.disable()
    if profile:
        p.dump_stats(profile)
    else:
        stats = pstats.Stats(p)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)
    sys.exit()
best = [1.0, 1.0]
for _ in range(3):
    c = commands()
    best = [min(best[0], run(c, adds)), min(best[1], run(c, dels))]
print(json.dumps({"add": best[0], "del": best[1]}))
"""


def measure(src: Path, n: int, mix: str, profile: str = "-") -> dict[str, float]:
    """Run the child for revision `src`; its figures (seconds per request)."""
    return run_child(src, CHILD, str(n), profile, mix, figures=profile == "-")


def main() -> None:
    arguments = parser(__doc__)
    arguments.add_argument("--changes", type=int, default=20_000)
    arguments.add_argument("--profile", nargs="?", const="", help="cProfile B once (to FILE)")
    arguments.add_argument("--mix", choices=("plain", "readd", "dry"), default="plain")
    args = arguments.parse_args()
    if args.profile is not None:
        measure(args.head, args.changes, args.mix, args.profile)
        return
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in revisions(args)}
    for round_ in range(1, args.rounds + 1):
        for name, src in revisions(args):
            figures = measure(src, args.changes, args.mix)
            results[name].append(figures)
            text = ", ".join(f"{k} {v * 1e6:.1f} us" for k, v in figures.items())
            print(f"round {round_} {name}: {text}", flush=True)
    for name, rounds in results.items():
        for kind in ("add", "del"):
            values = [r[kind] * 1e6 for r in rounds]
            print(
                f"{name} {kind}: {min(values):.1f}-{max(values):.1f} us per request"
                f" (median {statistics.median(values):.1f})"
            )


if __name__ == "__main__":
    main()

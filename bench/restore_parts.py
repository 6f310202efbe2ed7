"""mfcd's own work in a recovery at start, without the kernel's: reading the state file,
building the model of its routes, and packing their MFC structures, for two revisions.

Usage: python bench/restore_parts.py --base SRC [--head SRC] [--routes N] [--rounds R]
              [--form journal|snapshot]

Each revision writes a state file of N routes (bench/run.py's routes: 62,500 sources each
used by 16 routes, every group distinct, r0 -> r1) as a restart finds it, with
bench/restore_ab.py's writer: `journal`, as a `mfcctl batch` leaves it (the default), or
`snapshot`, as a compaction leaves it. Then, in a fresh process per round, A and B in
turn: StateFile.load, then the model of the table as Controller.restore makes it (the
first route, which adds the VIFs, then one run of the others), then the packing of the
run's structures (kernel.mfc_structs where the revision has it, else the per-route loop it
replaced), each by process_time, with the cyclic GC off as at start, and the RSS at the
end and its peak. No kernel and no root needed: what the kernel does for each route
(bench/restore_ab.py measures it) is the same in both. Figures: docs/benchmarks.md,
"Recovery at start: mfcd's own work" and "Recovery at start: where the read's time goes".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from restore_ab import WRITE, run_snippet

REPO = Path(__file__).resolve().parents[1]

PARTS = """
import gc, json, socket, time
from mfcd import kernel
from mfcd.controller import _runs
from mfcd.model import Router
from mfcd.state import StateFile
gc.disable()
cpu0 = time.process_time()
state = StateFile({path!r})
state.lock()
loaded = state.load()
cpu1 = time.process_time()
router = Router()
router.begin(undo=False)
router.link_up("r0", 1000)
router.link_up("r1", 1001)
ports, keys = next(_runs(loaded.routes))
steps = []
cpu2 = time.process_time()
first, rest = keys[0], keys[1:]
if not router.add_direct(first, ports, steps):
    steps += router.restore(first, ports)
if hasattr(router, "add_keyed_run"):
    assert router.add_keyed_run(rest, ports, steps, loaded.routes)
else:
    assert router.add_run(rest, ports, steps)
cpu3 = time.process_time()
layout = kernel.mfc_layout(4, 0, bytes([0, 1] + [0] * 30))
if hasattr(kernel, "mfc_structs"):
    for at in range(0, len(rest), kernel.MFC_RUN_CHUNK):
        kernel.mfc_structs(4, rest[at : at + kernel.MFC_RUN_CHUNK], layout)
else:
    pton, af, tail = kernel._pton, socket.AF_INET, layout[2]
    for key in rest:
        pton(af, key[1]) + pton(af, key[2]) + tail
cpu4 = time.process_time()
with open("/proc/self/statm") as f:
    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10
print(json.dumps({{
    "load": cpu1 - cpu0, "model": cpu3 - cpu2, "packing": cpu4 - cpu3,
    "own work": cpu4 - cpu2 + cpu1 - cpu0, "rss MiB": rss, "peak MiB": peak,
}}))
""".replace("import gc, json", "import gc, json, os")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="revision A's src directory")
    parser.add_argument("--head", default=str(REPO / "src"), help="revision B's src")
    parser.add_argument("--routes", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--form", choices=("journal", "snapshot"), default="journal")
    args = parser.parse_args()
    revisions = {"A": str(Path(args.base).resolve()), "B": str(Path(args.head).resolve())}
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mfcd-restore-parts-", dir="/var/tmp") as tmp:
        paths = {rev: f"{tmp}/{rev}.journal" for rev in revisions}
        for rev, src in revisions.items():
            bench = str(REPO / "bench")
            code = WRITE.format(bench=bench, n=args.routes, form=args.form, path=paths[rev])
            run_snippet(code, src)
        for r in range(args.rounds):
            for rev, src in revisions.items():
                got = run_snippet(PARTS.format(path=paths[rev]), src)
                for k, v in got.items():
                    rows.setdefault(f"{rev} {k}", []).append(v)
                print(f"round {r + 1} {rev}: " + ", ".join(f"{k} {v:.3f}" for k, v in got.items()))
    print(f"\n{args.routes} routes, {args.form}, medians (ranges) of {args.rounds} rounds:")
    for k, values in sorted(rows.items(), key=lambda kv: (kv[0][2:], kv[0][0])):
        print(f"  {k}: {statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cost of an unmatched NOCACHE upcall in the learner, with and without looking for the
one other interface whose template would forward the flow (learning._learn_for_its_iif).

Usage: python bench/unmatched_upcalls.py [--upcalls 20000] [--rounds 5] [--others 0,2,8]

No root, no kernel: the Learner runs against the unit tests' fake kernel (tests/unit/conftest),
so what is timed is mfcd's own Python per upcall. For each number of other interfaces with
templates (none of which matches the traffic) it times --upcalls upcalls of distinct sources
to a group no template covers, A (the lookup turned off) and B (as shipped) in turn, and
prints the microseconds per upcall of each round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mfcd import validate
from mfcd.controller import Controller
from mfcd.dataplane import Upcall
from mfcd.learning import Learner
from tests.unit.conftest import FakeKernel, FakeState


def learner(others: int) -> tuple[Learner, int]:
    """A learner with a template on r0 and on `others` more interfaces; r0's VIF number."""
    names = [f"r{k}" for k in range(others + 2)]
    kernel = FakeKernel()
    kernel.names = {k + 1: name for k, name in enumerate(names)}
    ctl = Controller(kernel, FakeState())
    for k, name in enumerate(names):
        ctl.link_up(name, k + 1)
    last = names[-1]
    changes = [validate.template_change(None, "239.1.1.1", "r0", [last])]
    changes += [
        validate.template_change(None, f"239.2.{k}.0/24", f"r{k}", [last])
        for k in range(1, others + 1)
    ]
    ctl.change(changes)
    vif = ctl.router.vif_of(4, "r0")
    assert vif is not None
    return Learner(ctl, kernel, 60.0, 10**7), vif.vifi


def per_upcall(others: int, upcalls: int, lookup: bool) -> float:
    the_learner, vif = learner(others)
    if not lookup:
        the_learner._learn_for_its_iif = lambda *args: 0  # type: ignore[method-assign]
    batch = [
        Upcall("nocache", 4, 253, f"198.18.{i // 250}.{i % 250 + 1}", "239.9.9.9", vif)
        for i in range(upcalls)
    ]
    started = time.perf_counter()
    the_learner.on_upcalls(batch)
    return (time.perf_counter() - started) / upcalls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upcalls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--others", default="0,2,8")
    args = parser.parse_args()
    for others in (int(n) for n in args.others.split(",")):
        for _ in range(args.rounds):
            a = per_upcall(others, args.upcalls, lookup=False)
            b = per_upcall(others, args.upcalls, lookup=True)
            print(f"others={others}  A (no lookup) {a:6.1f} us  B (shipped) {b:6.1f} us")


if __name__ == "__main__":
    main()

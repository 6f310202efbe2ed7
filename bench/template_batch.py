"""The cost of a batch of templates added (and deleted) under many learned entries: the
model's work to re-point the entries a template change can touch (Router._rematch).

Usage: python bench/template_batch.py [--learned 50000] [--sources 25] [--templates 2000]
[--rounds 3]

No root, no kernel: a Controller on the unit tests' fake kernel (tests/unit/conftest), as
the unit tests drive it. The learned entries come from one template, (*, 239.0.0.0/8) from
r0 to r1: `--learned` flows, `--sources` sources to each group 239.10.x.y (at most 64,000
groups). Then, timed, one batch (one transaction) of `--templates` templates from r0 to r2
and one batch deleting them:

disjoint  (*, 239.20.x.y): no learned entry is theirs to take
takeover  (*, 239.10.x.y): each takes over the entries of its group (and gives them
          back to the wide template when deleted)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mfcd import validate
from mfcd.controller import Controller
from mfcd.model import DelTemplate
from tests.unit.conftest import FakeKernel, FakeState


def group(n: int, second: int) -> str:
    return f"239.{second}.{n // 250}.{n % 250 + 1}"


def controller(learned: int, sources: int = 25) -> Controller:
    """A controller with `learned` entries learned from (*, 239.0.0.0/8) on r0."""
    kernel = FakeKernel()
    kernel.names = {1: "r0", 2: "r1", 3: "r2"}
    ctl = Controller(kernel, FakeState())
    for ifindex, name in kernel.names.items():
        ctl.link_up(name, ifindex)
    ctl.change([validate.template_change(None, "239.0.0.0/8", "r0", ["r1"])])
    router = ctl.router
    vif = router.vif_of(4, "r0")
    assert vif is not None
    router.begin()
    for i in range(learned):
        source = f"198.18.{i % sources // 250}.{i % sources % 250 + 1}"
        template, steps = router.learn(4, 253, source, group(i // sources, 10), vif.vifi)
        assert template is not None and steps
    router.commit()
    assert len(router.learned) == learned
    return ctl


def batch(ctl: Controller, templates: int, second: int) -> tuple[float, float, int]:
    """Seconds to add `templates` (*,G) templates in one batch and to delete them in another,
    and the kernel steps of the add."""
    adds = [
        validate.template_change(None, group(n, second), "r0", ["r2"]) for n in range(templates)
    ]
    started = time.perf_counter()
    steps = ctl.change(adds).steps
    added = time.perf_counter() - started
    started = time.perf_counter()
    ctl.change([DelTemplate(change.key) for change in adds])
    return added, time.perf_counter() - started, len(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learned", type=int, default=50000)
    parser.add_argument("--sources", type=int, default=25)
    parser.add_argument("--templates", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ctl = controller(args.learned, args.sources)
    for _ in range(args.rounds):
        for name, second in (("disjoint", 20), ("takeover", 10)):
            added, deleted, steps = batch(ctl, args.templates, second)
            print(
                f"{name:8}  {args.templates} templates, {args.learned} learned:"
                f" add {added:7.3f} s ({steps} steps)  delete {deleted:7.3f} s"
            )
            assert len(ctl.router.learned) == args.learned


if __name__ == "__main__":
    main()

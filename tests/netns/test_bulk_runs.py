"""Runs of MFC entries (model.AddMfcRun, DelMfcRun) against the real kernel, in the lab's
router namespace: a run writes what the same routes written one by one write, and a run
the kernel refuses at one route is undone whole by the core (dataplane.execute)."""

from __future__ import annotations

import json
import sys
import textwrap
from typing import Any

from lab.netns import Lab

# Runs in the router namespace: a Router with r0..r2 up plans VIFs and runs, the real
# Kernel applies them through dataplane.execute; prints what /proc then shows.
PRELUDE = textwrap.dedent(
    """
    import json, socket
    from mfcd.dataplane import execute
    from mfcd.errors import KernelError
    from mfcd.kernel import Kernel
    from mfcd.model import Ports, Router, DelMfcRun, run_ops

    def cache(family):
        name = "ip_mr_cache" if family == 4 else "ip6_mr_cache"
        with open(f"/proc/net/{name}") as f:
            return sorted(f.read().splitlines()[1:])

    def vifs(family):
        name = "ip_mr_vif" if family == 4 else "ip6_mr_vif"
        with open(f"/proc/net/{name}") as f:
            return f.read().splitlines()[1:]

    router = Router()
    router.begin()
    for name in ("r0", "r1", "r2"):
        router.link_up(name, socket.if_nametoindex(name))
    router.commit()
    kernel = Kernel([4, 6])

    def keys(family, n, bad=None):
        out = []
        for i in range(n):
            if family == 4:
                group = "198.18.9.9" if i == bad else f"239.17.{i // 256}.{i % 256}"
                out.append((4, "198.18.0.2", group, 253))
            else:
                group = "2001:db8::9" if i == bad else f"ff3e::17:{i:x}"
                out.append((6, "2001:db8::2", group, 254))
        return out

    def plan(family, keys, ports):
        # the VIFs by one route each (add), then the run
        router.begin()
        steps = router.add(keys[0], router.share(ports))
        assert router.add_run(keys[1:], router.share(ports), steps)
        return steps
    """
)


def run_in_router(lab: Lab, code: str) -> Any:
    script = PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    done = lab.exec(lab.router, sys.executable, "-c", script)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_run_writes_what_single_writes_write(lab: Lab) -> None:
    """500 IPv4 and 500 IPv6 routes with two oifs: written as a run, /proc shows every one,
    exactly as when the same routes are written one AddMfc at a time; a DelMfcRun removes
    them."""
    out = run_in_router(
        lab,
        """
        out = {}
        for family in (4, 6):
            ks = keys(family, 500)
            steps = plan(family, ks, Ports("r0", ("r1", "r2")))
            execute(kernel, steps)
            router.commit()
            run = steps[-1]
            as_run = cache(family)
            kernel.apply([run.undo])  # DelMfcRun of the run's routes
            emptied = len(cache(family))
            kernel.apply(run_ops(run.op))  # the same routes one by one
            out[family] = {
                "steps": [s.op.__class__.__name__ for s in steps],
                "run": as_run,
                "single": cache(family),
                "emptied": emptied,
            }
        """,
    )
    for family in ("4", "6"):
        seen = out[family]
        assert seen["steps"] == ["AddVif", "AddVif", "AddVif", "AddMfc", "AddMfcRun"]
        assert len(seen["run"]) == 500  # (the route of the first step and the run's 499)
        assert seen["emptied"] == 1  # the first step's own entry stays
        assert seen["run"] == seen["single"]
        # iif VIF 0 (r0), oifs VIFs 1 and 2 with TTL threshold 1
        assert all(line.split()[2] == "0" for line in seen["run"]), seen["run"][:2]
        assert all(line.split()[-2:] == ["1:1", "2:1"] for line in seen["run"]), seen["run"][:2]


def test_a_run_refused_at_one_route_leaves_nothing_behind(lab: Lab) -> None:
    """The 201st route of a run has a group that is not multicast: the kernel refuses it
    (EINVAL); the core takes out the 200 written before it and the VIFs and entry of the
    steps before the run, in both families."""
    out = run_in_router(
        lab,
        """
        out = {}
        for family in (4, 6):
            ks = keys(family, 400, bad=201)
            steps = plan(family, ks, Ports("r0", ("r1",)))
            try:
                execute(kernel, steps)
                error = None
            except KernelError as e:
                error = [e.operation, e.errno, e.applied, e.partial, len(e.undo_failures)]
            router.rollback()
            out[family] = {"error": error, "cache": cache(family), "vifs": vifs(family)}
        """,
    )
    for family in ("4", "6"):
        seen = out[family]
        assert seen["error"] == ["MRT_ADD_MFC", 22, 3, 200, 0], seen
        assert seen["cache"] == []
        assert seen["vifs"] == []

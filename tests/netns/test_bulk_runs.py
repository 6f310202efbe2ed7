"""Runs of MFC entries (model.AddMfcRun, DelMfcRun) against the real kernel, in the lab's
router namespace: a run writes what the same routes written one by one write, and a run
the kernel refuses at one route is undone whole by the core (dataplane.execute)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

from lab.netns import Lab
from mfcd.model import Route
from mfcd.state import StateFile
from tests.netns.conftest import Mfcd

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

    def refused(family, ks):
        # plan and execute a run from r0 to r1 the kernel refuses (or that cannot be
        # packed), then roll the model back: the error as [operation, errno, applied,
        # partial, undo failures], or None if it was not refused
        steps = plan(family, ks, Ports("r0", ("r1",)))
        try:
            execute(kernel, steps)
            error = None
        except KernelError as e:
            error = [e.operation, e.errno, e.applied, e.partial, len(e.undo_failures)]
        router.rollback()
        return error
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
            error = refused(family, keys(family, 400, bad=201))
            out[family] = {"error": error, "cache": cache(family), "vifs": vifs(family)}
        """,
    )
    for family in ("4", "6"):
        seen = out[family]
        assert seen["error"] == ["MRT_ADD_MFC", 22, 3, 200, 0], seen
        assert seen["cache"] == []
        assert seen["vifs"] == []


def test_a_long_run_refused_or_unpackable_past_its_first_chunks_says_where(lab: Lab) -> None:
    """Runs longer than the chunks mfc_run packs at once: a route the kernel refuses in the
    third chunk, and a source no structure can hold in the second, stop the run there
    (`partial` is the number written before it, in both families) and the core takes out
    everything written."""
    out = run_in_router(
        lab,
        """
        from mfcd.kernel import MFC_RUN_CHUNK
        out = {}
        for family in (4, 6):
            for case in ("refused", "unpackable"):
                bad = 2 * MFC_RUN_CHUNK + 7 if case == "refused" else MFC_RUN_CHUNK + 3
                ks = keys(family, 3 * MFC_RUN_CHUNK, bad=bad if case == "refused" else None)
                if case == "unpackable":
                    ks[bad] = (family, "not-an-address", ks[bad][2], ks[bad][3])
                error = refused(family, ks)
                out[f"{family} {case}"] = {
                    "error": error, "cache": cache(family), "vifs": vifs(family), "bad": bad,
                }
        """,
    )
    for family in ("4", "6"):
        refused, unpackable = out[f"{family} refused"], out[f"{family} unpackable"]
        # (the run is the keys after the first, which an AddMfc of its own writes)
        assert refused["error"] == ["MRT_ADD_MFC", 22, 3, refused["bad"] - 1, 0], refused
        assert unpackable["error"] == ["encode", 0, 3, unpackable["bad"] - 1, 0], unpackable
        for seen in (refused, unpackable):
            assert seen["cache"] == []
            assert seen["vifs"] == []


# --- a restart restores its state file through runs ---------------------------------------------


def write_state(path: str, routes: list[Route]) -> None:
    """A state file holding `routes` (as mfcd's own compaction writes it)."""
    state = StateFile(path)
    state.load()
    state.write_snapshot(routes, {})
    state.close()


def mroute_cache(lab: Lab, family: int) -> list[list[str]]:
    name = "ip_mr_cache" if family == 4 else "ip6_mr_cache"
    done = lab.exec(lab.router, "cat", f"/proc/net/{name}")
    assert done.returncode == 0, done.stderr
    return [line.split() for line in done.stdout.splitlines()[1:]]


def routes_of(family: int, n: int, oifs: tuple[str, ...]) -> list[Route]:
    if family == 4:
        return [
            Route(4, "198.18.0.2", f"239.19.{i // 256}.{i % 256}", "r0", oifs, 253)
            for i in range(n)
        ]
    return [Route(6, "2001:db8::2", f"ff3e::19:{i:x}", "r0", oifs, 254) for i in range(n)]


def test_a_restart_restores_its_routes_through_runs(lab: Lab, tmp_path: Path) -> None:
    """3,000 IPv4 and 3,000 IPv6 routes in the state file: once mfcd answers, the kernel's
    caches hold every one, iif VIF 0 (r0) and oifs VIFs 1 and 2 (r1, r2)."""
    daemon = Mfcd(lab, tmp_path)
    write_state(
        daemon.state_file, routes_of(4, 3000, ("r1", "r2")) + routes_of(6, 3000, ("r1", "r2"))
    )
    daemon.start()
    try:
        for family in (4, 6):
            cache = mroute_cache(lab, family)
            assert len(cache) == 3000
            assert all(row[2] == "0" and row[-2:] == ["1:1", "2:1"] for row in cache), cache[:2]
        assert "restoring all routes at once failed" not in daemon.stop()[1]
    finally:
        if daemon.proc is not None:
            daemon.stop()


def test_a_route_the_kernel_refuses_in_a_restore_run_stays_pending_alone(
    lab: Lab, tmp_path: Path
) -> None:
    """The state file's 1,001st route has a group that is not multicast (a file written by
    hand: the checksum vouches for the bytes only): the kernel refuses it inside the run;
    what the run wrote is taken out, every route is restored one by one, and the refused
    one stays pending with the kernel's reason while the others are in the kernel."""
    routes = routes_of(4, 2000, ("r1",))
    routes[1000] = routes[1000]._replace(group="198.18.9.9")
    daemon = Mfcd(lab, tmp_path)
    # Info, not debug: a debug line per route restored one by one would fill the pipe the
    # lab reads mfcd's stderr through only at the end, and block mfcd.
    config = daemon.config_file.read_text().replace('"debug"', '"info"')
    daemon.config_file.write_text(config)
    write_state(daemon.state_file, routes)
    daemon.start()
    try:
        cache = mroute_cache(lab, 4)
        assert len(cache) == 1999
        shown = {r["group"]: r for r in daemon.show()["routes"]}
        assert shown["198.18.9.9"]["state"] == "pending"
        assert "the kernel refused it" in shown["198.18.9.9"]["reason"]
        assert sum(r["state"] == "installed" for r in shown.values()) == 1999
        assert "restoring all routes at once failed" in daemon.stop()[1]
    finally:
        if daemon.proc is not None:
            daemon.stop()

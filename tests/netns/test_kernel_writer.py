"""The kernel writer process (kernel.Writer, kernel_writer.py) against the real kernel: long
runs of a restore written by it through the daemon's own MRT sockets go in whole and
forward, a run it sees refused is undone exactly and says where, and when it is killed
mid-run mfcd writes the rest itself; nothing of it outlives mfcd."""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lab.netns import Lab
from mfcd.kernel import CREW, WRITER_MIN
from tests.netns.conftest import Mfcd
from tests.netns.test_batch_fast_path import DUMMIES
from tests.netns.test_bulk_runs import PRELUDE, mroute_cache, routes_of, write_state

# Beside test_bulk_runs.PRELUDE: `later(steps)` does what Controller._restore_into and
# _settle do (apply_later, settle, and on a failure the core's undo of what went in); keys
# past 65,536 routes.
LATER = textwrap.dedent(
    """
    import logging, os, signal, time
    from mfcd.dataplane import undo, undo_applied
    from mfcd.kernel import WRITER_MIN

    warnings = []
    class Keep(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())
    logging.getLogger("mfcd").addHandler(Keep(logging.WARNING))

    def later(steps):
        try:
            kernel.apply_later([step.op for step in steps])
            kernel.settle()
            return None
        except KernelError as e:
            undo_applied(kernel, steps, e)
            return [e.operation, e.errno, e.applied, e.partial, len(e.undo_failures)]

    def kill_writer_after(probe):
        # SIGKILL the first writer once the probe's route is in the kernel (part of the run
        # is: the run's first piece goes to the first writer)
        pid = kernel.writers[0].proc.pid
        deadline = time.monotonic() + 30
        while kernel.counters(probe[0], probe[3], [probe[1:3]]).entries[0] is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)

    def many(family, n, tag, bad=None):
        out = []
        for i in range(n):
            if family == 4:
                group = f"239.{tag + (i >> 16)}.{i >> 8 & 255}.{i & 255}"
                group = "198.18.9.9" if i == bad else group
                out.append((4, "198.18.0.2", group, 253))
            else:
                group = "2001:db8::9" if i == bad else f"ff3e::{tag}:{i >> 16:x}:{i & 0xffff:x}"
                out.append((6, "2001:db8::2", group, 254))
        return out
    """
)


# The writers a Kernel runs on this machine (two on two CPUs).
CREW_HERE = max(1, min(CREW, len(os.sched_getaffinity(0))))


def run_in_router(lab: Lab, code: str) -> Any:
    """test_bulk_runs.run_in_router with LATER, and the time long runs take."""
    script = PRELUDE + LATER + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    done = lab.exec(lab.router, sys.executable, "-c", script, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_run_the_kernel_refuses_through_the_writer_is_undone_and_says_where(
    lab: Lab,
) -> None:
    """Two long runs handed to the writer, the first refused at a route past its first
    chunks: KernelError says where (the op, `partial`), the core takes out all that went in,
    the second run never reaches the kernel; the same writer then writes a good run whole."""
    out = run_in_router(
        lab,
        """
        out = {}
        for family in (4, 6):
            n, bad = WRITER_MIN + 5000, WRITER_MIN - 7
            steps = plan(family, many(family, n, 20, bad=bad), Ports("r0", ("r1",)))
            assert router.add_run(many(family, n, 40), router.share(Ports("r0", ("r1",))), steps)
            error = later(steps)
            router.rollback()
            refused = {"error": error, "cache": len(cache(family)), "vifs": len(vifs(family)),
                       "writers": [w.proc.poll() is None for w in kernel.writers]}
            steps = plan(family, many(family, n, 60), Ports("r0", ("r1",)))
            good = {"error": later(steps), "cache": len(cache(family)), "bad": bad,
                    "writers": [w.proc.poll() is None for w in kernel.writers]}
            assert not undo(kernel, [step.undo for step in steps])
            router.rollback()
            good["emptied"] = len(cache(family))
            out[family] = {"refused": refused, "good": good}
        out["warnings"] = warnings
        """,
    )
    for family in ("4", "6"):
        refused, good = out[family]["refused"], out[family]["good"]
        # (the first run is the keys after the first, which an AddMfc of its own writes)
        assert refused["error"] == ["MRT_ADD_MFC", 22, 3, good["bad"] - 1, 0], refused
        assert refused["cache"] == 0 and refused["vifs"] == 0
        # Refused by the kernel, through a writer: both still run (the other's routes of
        # the pieces after the refused one were taken out again: the cache is empty).
        assert refused["writers"] == [True] * CREW_HERE
        assert good["error"] is None
        assert good["cache"] == WRITER_MIN + 5000
        assert good["writers"] == [True] * CREW_HERE
        assert good["emptied"] == 0
    assert out["warnings"] == []


def test_a_writer_killed_mid_run_leaves_the_rest_to_mfcd_and_nothing_half_done(
    lab: Lab,
) -> None:
    """The writer is killed (SIGKILL) once it has written part of a long run: mfcd finds
    how far it got, says once that it writes long runs itself, and writes the rest, so the
    table holds the whole run; killed again before a route the kernel refuses, the rest is
    written in-process up to that route, `partial` counts from the run's start, and the
    core's undo leaves nothing behind."""
    out = run_in_router(
        lab,
        """
        from mfcd.kernel import Kernel
        out = {}
        for family in (4, 6):
            for case in ("whole", "refused"):
                n = WRITER_MIN + 70000  # (60,000 a writer: the kill comes well before its end)
                bad = n - 10 if case == "refused" else None
                kernel.close()
                kernel = Kernel([4, 6])
                steps = plan(family, many(family, n, 80, bad=bad), Ports("r0", ("r1",)))
                ops = [step.op for step in steps]
                kernel.apply_later(ops)
                kill_writer_after(steps[-1].op.keys[1000])
                try:
                    kernel.settle()
                    error = None
                except KernelError as e:
                    undo_applied(kernel, steps, e)
                    error = [e.operation, e.errno, e.applied, e.partial, len(e.undo_failures)]
                seen = {"error": error, "cache": len(cache(family)), "bad": bad,
                        "writers": len(kernel.writers), "warnings": list(warnings)}
                if error is None:
                    assert not undo(kernel, [step.undo for step in steps])
                router.rollback()
                seen["emptied"] = len(cache(family))
                out[f"{family} {case}"] = seen
                warnings.clear()
        """,
    )
    for family in ("4", "6"):
        whole, refused = out[f"{family} whole"], out[f"{family} refused"]
        assert whole["error"] is None
        assert whole["cache"] == WRITER_MIN + 70000
        assert whole["writers"] == 0  # (one was killed: mfcd ended the other)
        assert len(whole["warnings"]) == 1
        assert "the kernel writer process is not available" in whole["warnings"][0]
        assert refused["error"] == ["MRT_ADD_MFC", 22, 3, refused["bad"] - 1, 0], refused
        assert refused["cache"] == 0
        for seen in (whole, refused):
            assert seen["emptied"] == 0


def test_a_restart_writes_its_long_runs_through_the_writer_and_they_forward(
    lab: Lab, tmp_path: Path
) -> None:
    """A state file with more routes than WRITER_MIN in each family: mfcd hands the runs to
    the writer process while it reads the file (its log says so), the kernel's caches hold
    every route, real packets to the last one of the run are forwarded; the writer has
    ended once mfcd answers, and after mfcd stops neither a writer nor a route is left in
    the namespace."""
    n = WRITER_MIN + 2000
    daemon = Mfcd(lab, tmp_path)  # (log level debug: the writer's line)
    write_state(daemon.state_file, routes_of(4, n, ("r1", "r2")) + routes_of(6, n, ("r1", "r2")))
    daemon.start(wait=False)
    try:
        daemon.wait_ready(timeout=60)
        for family in (4, 6):
            assert len(mroute_cache(lab, family)) == n
        last = routes_of(4, n, ())[-1].group, routes_of(6, n, ())[-1].group
        for group in last:
            counts = lab.probe(group)
            assert [counts[ns] for ns in lab.rx] == [5, 5, 0]
        assert daemon.ok("ping")
    finally:
        if daemon.proc is not None:
            _, log = daemon.stop()
    pids = [int(p) for p in re.findall(r"kernel writer \(pid (\d+)\): (?:\d+) routes", log)]
    # The restore is streamed from the file's read: runs of 50,000 routes or more as read,
    # each family's first route (its VIFs) and a run's first route of a family begun in the
    # run before (what a hand-over that spans both families starts with) written by mfcd.
    written = re.findall(r"kernel writer \(pid \d+\): (\d+) routes written", log)
    # (a line per writer a settle waited for: the runs' pieces went to both)
    assert 2 <= len(written) <= 4 * CREW_HERE and sum(map(int, written)) in (2 * n - 3, 2 * n - 2)
    assert len(set(pids)) == CREW_HERE
    assert "restoring all routes at once failed" not in log
    assert "kernel writer process is not available" not in log
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "kernel_writer" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_text(errors="replace")
    for family in (4, 6):
        assert mroute_cache(lab, family) == []
    assert os.path.exists(daemon.state_file)


def test_a_route_refused_in_a_run_the_writer_writes_stays_pending_alone(
    lab: Lab, tmp_path: Path
) -> None:
    """test_bulk_runs' refused restore run, with a run long enough for the writer: the
    kernel refuses a route past WRITER_MIN; mfcd undoes what the writer wrote, restores
    every route one by one, and only the refused one stays pending."""
    n, bad = WRITER_MIN + 2000, WRITER_MIN + 1000
    routes = routes_of(4, n, ("r1",))
    routes[bad] = routes[bad]._replace(group="198.18.9.9")
    daemon = Mfcd(lab, tmp_path)
    config = daemon.config_file.read_text().replace('"debug"', '"info"')  # (see test_bulk_runs)
    daemon.config_file.write_text(config)
    write_state(daemon.state_file, routes)
    daemon.start(wait=False)
    try:
        daemon.wait_ready(timeout=120)
        assert len(mroute_cache(lab, 4)) == n - 1
        shown = {r["group"]: r for r in daemon.show()["routes"]}
        assert shown["198.18.9.9"]["state"] == "pending"
        assert "the kernel refused it" in shown["198.18.9.9"]["reason"]
        assert sum(r["state"] == "installed" for r in shown.values()) == n - 1
    finally:
        if daemon.proc is not None:
            _, log = daemon.stop()
    assert "restoring all routes at once failed" in log
    assert "kernel writer process is not available" not in log
    assert mroute_cache(lab, 4) == []


def long_batch(n: int, extra: str = "") -> str:
    return (
        "".join(
            f"mfc add --source 198.18.0.2 --group 239.{21 + (i >> 16)}.{i >> 8 & 255}.{i & 255}"
            " --iif r0 --oifs r1\n"
            for i in range(n)
        )
        + extra
    )


def test_a_long_batch_goes_through_the_writer_and_lands_whole(lab: Lab, mfcd: Mfcd) -> None:
    """A `mfcctl batch` of more than LATER_MIN routes: its chunks go to the writer while
    the next ones are planned (mfcd's log says so), every route is in the kernel and
    forwards, and no writer is left once the batch is answered."""
    n = WRITER_MIN + 1000
    assert f'"added": {n}' in mfcd.ok("batch", "-", "-o", "json", stdin=long_batch(n))
    assert len(mroute_cache(lab, 4)) == n
    counts = lab.probe(f"239.{21 + ((n - 1) >> 16)}.{(n - 1) >> 8 & 255}.{(n - 1) & 255}")
    assert [counts[ns] for ns in lab.rx] == [5, 0, 0]
    _, log = mfcd.stop()
    written = re.findall(r"kernel writer \(pid (\d+)\): (\d+) routes written", log)
    # (nearly all: a run cut short where a chunk ends, under WRITER_CHUNK_MIN routes, is
    # written by mfcd itself)
    assert written and sum(int(routes) for _, routes in written) >= 0.9 * n, log[-3000:]
    assert len({pid for pid, _ in written}) == CREW_HERE  # (side by side)
    assert "kernel writer process is not available" not in log
    for pid, _ in written:
        assert not Path(f"/proc/{pid}").exists() or "kernel_writer" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_text(errors="replace")
    assert mroute_cache(lab, 4) == []


@pytest.mark.lab(receivers=1)
def test_a_long_batch_refused_at_its_end_leaves_nothing(lab: Lab, mfcd: Mfcd) -> None:
    """test_batch_fast_path's refused batch, long enough for the writer: the route refused
    after 51,000 others (a VIF past the table's 32) comes while the writer still has the
    chunks before it; the error is the same, and everything that went in comes out."""
    for a, b in zip(DUMMIES[::2], DUMMIES[1::2], strict=True):
        lab.ip(lab.router, "link", "add", a, "type", "veth", "peer", "name", b)
        lab.ip(lab.router, "link", "set", a, "up")
        lab.ip(lab.router, "link", "set", b, "up")
    wide = ",".join(DUMMIES[:30])  # r0, r1 (the batch's) and these: the table's 32 VIFs
    n = WRITER_MIN + 1000
    refused = (
        f"mfc add --source 198.18.9.1 --group 239.4.0.1 --iif r0 --oifs {wide}\n"
        f"mfc add --source 198.18.9.2 --group 239.4.0.2 --iif r0 --oifs {DUMMIES[30]}\n"
    )
    result = mfcd.ctl("batch", "-", stdin=long_batch(n, refused))
    assert result.returncode != 0
    assert (
        f"stdin:{n + 2}: cannot add 1 new IPv4 VIF (d30):"
        " only 0 of the 32 VIFs of table 253 are free" in result.stderr
    ), result.stderr
    assert mroute_cache(lab, 4) == []
    assert mfcd.show()["routes"] == []
    _, log = mfcd.stop()
    assert re.search(r"kernel writer \(pid \d+\): \d+ routes written", log), log[-2000:]


def test_a_refusal_after_a_dead_writer_s_run_was_finished_by_mfcd_undoes_all_of_it(
    lab: Lab,
) -> None:
    """The writer is killed mid-run; the next op, one mfcd writes itself, first finishes
    that run in-process; a later op is refused. Its `applied` still counts every op since
    the last settle (once it counted from the finished run: the core's undo then left the
    run's routes in the kernel, a refused batch half done). Then a run whose route cannot
    be packed (a bad address in a state file, say) stops the writer: mfcd writes up to it
    itself, names it, and the writer stays in use (no warning)."""
    out = run_in_router(
        lab,
        """
        from mfcd.kernel import Kernel
        from mfcd.model import AddMfc, DelMfc, Step
        out = {}
        for family in (4, 6):
            n = WRITER_MIN + 20000
            keys = many(family, n + 2, 81, bad=n + 1)
            steps = plan(family, keys[:n], Ports("r0", ("r1",)))
            run = steps[-1].op
            def single(key):
                op = AddMfc(family, key[1], key[2], run.parent, run.oifs, key[3])
                return Step(op, DelMfc(family, key[1], key[2], key[3]), "add_mfc")
            steps += [single(keys[n]), single(keys[n + 1])]  # the last one refused
            kernel.apply_later([step.op for step in steps[:-2]])
            kill_writer_after(run.keys[1000])
            try:
                kernel.apply_later([steps[-2].op])  # settles: mfcd finishes the run
                kernel.apply_later([steps[-1].op])
                kernel.settle()
                error = None
            except KernelError as e:
                undo_applied(kernel, steps, e)
                error = [e.operation, e.errno, e.applied, e.partial, len(e.undo_failures)]
            out[f"{family} refused"] = {"error": error, "steps": len(steps),
                                        "cache": len(cache(family))}
            router.rollback()
            kernel.close()
            kernel = Kernel([4, 6])
            warnings.clear()
            # A run with an address that cannot be packed past its first chunks.
            bad = WRITER_MIN + 5000
            good = many(family, WRITER_MIN + 10000, 82)
            steps = plan(family, good, Ports("r0", ("r1",)))
            run = steps[-1].op
            odd = "198.18.300.1" if family == 4 else "2001:db8::zz"
            keys = list(run.keys)
            keys[bad] = (family, keys[bad][1], odd, keys[bad][3])
            steps[-1] = steps[-1]._replace(op=run._replace(keys=keys))
            error = later(steps)
            out[f"{family} unpackable"] = {"error": error, "cache": len(cache(family)),
                                           "warnings": list(warnings)}
            router.rollback()
            steps = plan(family, good, Ports("r0", ("r1",)))  # and the writer goes on
            out[f"{family} after"] = [later(steps), len(kernel.writers), len(cache(family))]
            assert not undo(kernel, [step.undo for step in steps])
            router.rollback()
        """,
    )
    for family in ("4", "6"):
        refused = out[f"{family} refused"]
        assert refused["error"] == ["MRT_ADD_MFC", 22, refused["steps"] - 1, 0, 0], refused
        assert refused["cache"] == 0
        unpackable = out[f"{family} unpackable"]
        assert unpackable["error"][0] == "encode", unpackable
        assert unpackable["error"][3] == WRITER_MIN + 5000, unpackable
        assert unpackable["cache"] == 0
        assert unpackable["warnings"] == []
        # (the writer whose feeder met the route ended; the other goes on)
        assert out[f"{family} after"] == [None, max(1, CREW_HERE - 1), WRITER_MIN + 10000]


def test_random_runs_refusals_and_a_killed_writer_end_as_one_writer_in_order_would(
    lab: Lab,
) -> None:
    """The crew against the one-writer-in-order rule, over seeded random cases: runs of
    various lengths (under a piece, a few pieces), single adds between them (each settles
    the writers first), up to two bad routes (one the kernel refuses, one that cannot be
    packed), a writer killed at a random moment, the runs handed out in two calls with a
    look at `pending()` between. The error always names the first bad route (`applied`,
    `partial`), the core's undo then leaves the table empty with no undo failure, and a case
    with no bad route leaves every route in the table."""
    out = run_in_router(
        lab,
        """
        import random, threading
        rnd = random.Random(20261202)
        out = {"cases": 0, "wrong": []}
        made = [0]
        def fresh(family, n):
            keys = []
            for _ in range(n):
                i = made[0]
                made[0] += 1
                group = (f"239.{90 + (i >> 16)}.{i >> 8 & 255}.{i & 255}" if family == 4
                         else f"ff3e::90:{i >> 16:x}:{i & 0xffff:x}")
                keys.append((family, "198.18.0.2" if family == 4 else "2001:db8::2", group,
                             253 if family == 4 else 254))
            return keys
        def kill_one():
            time.sleep(rnd.random() * 0.04)
            for writer in list(kernel.writers)[:1]:
                os.kill(writer.proc.pid, signal.SIGKILL)
        for case in range(24):
            family = rnd.choice((4, 6))
            if kernel._writer_failed:
                kernel.close()
                kernel = Kernel([4, 6])
            shared = router.share(Ports("r0", ("r1",)))
            router.begin()
            steps = router.add(fresh(family, 1)[0], shared)
            parts = [(rnd.random() < 0.25, fresh(family, rnd.choice((1, 600, 8192, 9000, 20000))))
                     for _ in range(rnd.randint(2, 5))]
            bads = []
            for b, kind in enumerate(rnd.sample(("refused", "unpackable", None, None), 2)):
                if kind is None:
                    continue
                at = rnd.randrange(len(parts))
                single, ks = parts[at]
                pos = rnd.randrange(len(ks))
                if kind == "refused":
                    group = f"198.18.9.{b + 9}" if family == 4 else f"2001:db8::{b + 9}"
                else:
                    group = f"198.18.300.{b}" if family == 4 else f"2001:db8::z{b}"
                ks[pos] = (*ks[pos][:2], group, ks[pos][3])
                bads.append((at, pos, kind))
            starts = []  # each part's first step (the first route's are its VIFs' and its own)
            for single, ks in parts:
                starts.append(len(steps))
                if single or len(ks) == 1:
                    for key in ks:
                        assert router.add_direct(key, shared, steps)
                else:
                    assert router.add_run(ks, shared, steps)
            ops = [step.op for step in steps]
            expected = None
            if bads:
                at, pos, kind = min(bads)
                before = starts[at]
                single = parts[at][0] or len(parts[at][1]) == 1
                expected = ["MRT_ADD_MFC" if kind == "refused" else "encode",
                            22 if kind == "refused" else 0,
                            before + (pos if single else 0), 0 if single else pos]
            killer = threading.Thread(target=kill_one) if rnd.random() < 0.4 else None
            error = None
            try:
                cut = rnd.randrange(1, len(ops) + 1)
                kernel.apply_later(ops[:cut], True)
                if killer is not None:
                    killer.start()
                kernel.pending()
                kernel.apply_later(ops[cut:], True)
                kernel.settle()
            except KernelError as e:
                undo_applied(kernel, steps, e)
                error = [e.operation, e.errno, e.applied, e.partial, len(e.undo_failures)]
            if killer is not None and killer.ident is not None:
                killer.join()
            held = len(cache(family))
            if error is None:
                right = expected is None and held == 1 + sum(len(ks) for _, ks in parts)
                assert not undo(kernel, [step.undo for step in steps])
            else:
                right = error == [*expected, 0] and held == 0
            router.rollback()
            out["cases"] += 1
            if not right or cache(family):
                out["wrong"].append({"case": case, "expected": expected, "error": error,
                                     "held": held, "bads": bads,
                                     "parts": [(s, len(ks)) for s, ks in parts]})
        """,
    )
    assert out["cases"] == 24
    assert out["wrong"] == []


def test_a_long_run_waits_for_room_with_descriptors_past_1024(lab: Lab) -> None:
    """Twenty thousand IPv4 joins take some 1,000 sockets, and mfcd raises its limit of
    open files (membership._more_files): the writers' sockets then have descriptors past
    1024, which select() cannot take. A run of 60,000 routes, more than the writers may
    hold at once (WRITER_AHEAD made one piece here), waits for room (with poll()) and goes
    in whole."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("the hard limit of open files is under 1,200 here")
    out = run_in_router(
        lab,
        """
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        held = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(1100)]
        import mfcd.kernel
        mfcd.kernel.WRITER_AHEAD = mfcd.kernel.WRITER_PIECE
        steps = plan(4, many(4, 60000, 40), Ports("r0", ("r1",)))
        kernel.apply_later([step.op for step in steps])
        out = {"fds": [w.conn.fileno() for w in kernel.writers]}
        kernel.settle()
        out["cache"] = len(cache(4))
        assert not undo(kernel, [step.undo for step in steps])
        router.rollback()
        """,
    )
    assert min(out["fds"]) > 1024
    assert out["cache"] == 60000

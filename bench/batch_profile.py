"""Where mfcd's CPU goes in a `mfcctl batch` of N routes, in one process: time splits and a profile.

Usage: python bench/batch_profile.py [--routes N] [--kernel] [--profile FILE] [--repeat R]

The request line is made as mfcctl makes it (protocol.encode_request of the file's text,
bench/run.py's usual lines), and handled by the daemon's own path: Commands.handle ->
Controller -> a real state file (fdatasync'ed) in a temporary directory. The kernel is one
that accepts every operation, or with --kernel the real one (run it in a network namespace
holding interfaces r0 and r1: `bench/batch_profile.py --netns` makes one and runs itself
there). Prints the CPU time (time.process_time) and wall-clock time of the whole request
and of its parts (decoding, reading the text, planning, the kernel, the journal), in µs a
route. With --profile, a cProfile of the request is written to FILE and its top printed.
Run it with PYTHONPATH set to a revision's `src` to compare two revisions.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import os
import pstats
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mfcd import commands as commands_module
from mfcd import controller as controller_module
from mfcd import protocol, state
from mfcd.commands import Commands, Peer
from mfcd.controller import Controller

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from nsagent import route_addr  # noqa: E402  (bench/run.py's addresses)

LINE = "mfc add --source {s} --group {g} --iif r0 --oifs r1\n"


class AcceptingKernel:
    """A dataplane that takes every operation (only `apply` is used by a batch)."""

    def apply(self, ops: Sequence[Any]) -> None:
        pass


class Splits:
    """CPU and wall-clock seconds spent in the functions wrapped (outermost calls only)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.depth = 0

    def wrap(self, owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            c, w = time.process_time(), time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - c
                self.wall[label] = self.wall.get(label, 0.0) + time.perf_counter() - w

        setattr(owner, name, timed)


def request_line(n: int) -> bytes:
    text = "".join(LINE.format(s=s, g=g) for s, g in map(route_addr, range(n)))
    return protocol.encode_request("batch", {"text": text}, 1)


def make_controller(path: Path, real: bool) -> tuple[Controller, state.StateFile]:
    st = state.StateFile(str(path))
    st.load()
    if real:
        from mfcd.kernel import Kernel  # noqa: PLC0415

        kernel: Any = Kernel([4])
    else:
        kernel = AcceptingKernel()
    ctl = Controller(kernel, st)
    ctl.router.begin()
    for name in ("r0", "r1"):
        ctl.router.link_up(name, socket.if_nametoindex(name) if real else len(name))
    ctl.router.commit()
    return ctl, st


def one(n: int, real: bool, profile: str | None) -> dict[str, float]:
    line = request_line(n)
    splits = Splits()
    splits.wrap(protocol, "decode", "decode JSON")
    splits.wrap(Commands, "_read_text", "read the text")
    splits.wrap(Controller, "_execute_into", "kernel")
    splits.wrap(Controller, "_record", "journal")
    splits.wrap(Controller, "_plan_piece", "plan: runs")
    splits.wrap(Controller, "_plan_chunk", "plan: route by route")
    splits.wrap(os, "fdatasync", "journal: fdatasync")
    with tempfile.TemporaryDirectory(prefix="mfcd-batch-profile-", dir="/var/tmp") as tmp:
        ctl, st = make_controller(Path(tmp) / "state.journal", real)
        cmds = Commands(ctl, (4,))
        gc.collect()
        profiler = cProfile.Profile() if profile else None
        c, w = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        answer = cmds.handle(line, Peer(1, 0, 0))
        if profiler is not None:
            profiler.disable()
        cpu, wall = time.process_time() - c, time.perf_counter() - w
        assert b'"ok":true' in answer and len(ctl.router.routes) == n, answer[:300]
        c2 = time.process_time()
        del line
        st.close()
        close = getattr(ctl.kernel, "close", None)
        if close is not None:
            close()
        out = {"whole request": cpu, "whole request (wall)": wall}
        out["after: free the request"] = time.process_time() - c2
        for label, seconds in splits.cpu.items():
            out[label] = seconds
        out["journal: fdatasync (wall)"] = splits.wall.get("journal: fdatasync", 0.0)
        if profiler is not None and profile:
            profiler.dump_stats(profile)
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    # undo the wrapping for the next repeat
    for owner, name in (
        (protocol, "decode"),
        (Commands, "_read_text"),
        (Controller, "_execute_into"),
        (Controller, "_record"),
        (Controller, "_plan_piece"),
        (Controller, "_plan_chunk"),
        (os, "fdatasync"),
    ):
        setattr(owner, name, getattr(owner, name).__wrapped__)
    return out


def raw_loop(n: int) -> tuple[float, float]:
    """bench/nsagent.py's raw loop (struct.pack + setsockopt a route) of the same routes into
    the namespace's table, then MRT_DONE: its CPU and wall-clock seconds."""
    from nsagent import Agent  # noqa: PLC0415

    agent = Agent()
    agent.raw_init()
    c = time.process_time()
    wall = agent.raw_add(0, n)["seconds"]
    cpu = time.process_time() - c
    agent.raw_done()
    return cpu, wall


def in_netns(argv: list[str]) -> int:
    """Run this script with argv in a namespace of its own holding r0 and r1 (veth)."""
    ns = f"mfcdprof{secrets.token_hex(3)}"
    run: Callable[..., Any] = functools.partial(subprocess.run, check=True)
    run(["ip", "netns", "add", ns])
    try:
        for name in ("r0", "r1"):
            run(["ip", "-n", ns, "link", "add", name, "type", "veth", "peer", name + "p"])
            run(["ip", "-n", ns, "link", "set", name, "up"])
            run(["ip", "-n", ns, "link", "set", name + "p", "up"])
        argv = ["ip", "netns", "exec", ns, sys.executable, __file__, *argv]
        return subprocess.run(argv, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=300_000)
    parser.add_argument("--kernel", action="store_true", help="the real kernel (in a netns)")
    parser.add_argument("--netns", action="store_true", help="make a netns and use --kernel")
    parser.add_argument("--profile", help="write a cProfile of the request here")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.netns:
        argv = [a for a in sys.argv[1:] if a != "--netns"] + ["--kernel"]
        return in_netns(argv)
    _ = (commands_module, controller_module)
    n = args.routes
    for _round in range(args.repeat):
        out = one(n, args.kernel, args.profile)
        if args.kernel:
            out["raw loop (wall)"] = raw_loop(n)[1]
        whole = out["whole request"]
        for label, seconds in out.items():
            share = f" ({seconds / whole:4.0%})" if "wall" not in label else ""
            print(f"{label:28} {seconds:7.3f} s  {seconds / n * 1e6:6.2f} µs a route{share}")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A batch text's fast path (usual IPv4 adds read as columns by batchscan.pieces, validated
together and planned as runs through Router.add_run) against the line-by-line path it falls
back to: the same answer bytes, model, kernel operations and state file for mixed batches,
errors and kernel failures included."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd import batchscan, controller
from mfcd import commands as commands_module
from mfcd.commands import Commands, Peer
from mfcd.controller import Controller
from mfcd.model import RUN_MIN, RUNS, Ports, RouteKey, Step
from mfcd.state import StateFile

from .conftest import FakeKernel, observable

PEER = Peer(pid=4242, uid=0, gid=0)
LINKS = ("r0", "r1", "r2", "r3")  # r9 never exists: its routes wait for it

n = st.integers(0, 3)
# The oifs of usual lines: one, or several in either spelling, in any order and mixed, some
# refused (r2 twice, r0 also the iif, a missing r9, a wildcard, more than a route takes).
oifs = st.sampled_from(
    [
        *("r2", "r3", "r9"),
        *("r2,r3", "r2 r3", "r3,r2", "r3 r2", "r2,r3 r9", "r2,r9"),
        *("r2,r2", "r2 r0", "r3,r+", ",".join(["r2", *(f"x{i}" for i in range(40))])),
    ]
)
usual = st.builds(
    "{}add --source 10.{}.0.{} --group 239.1.{}.{} --iif {} --oifs {}{}".format,
    st.sampled_from(["", "mfc "]),
    n,
    st.integers(1, 3),
    n,
    st.integers(0, 40),
    st.sampled_from(["r0", "r1"]),
    oifs,
    st.sampled_from(["", "", " --table 100", " --table 253", " --table 0"]),
)
others = st.sampled_from(
    [
        "",
        "# a comment",
        "del --source 10.1.0.1 --group 239.1.1.1",
        "del --source 10.0.0.2 --group 239.1.0.5 --table 100",
        "add --source 10.0.0.1 --group 239.1.0.1 --iif r0 --oifs r1,r2",
        "oif add --source 10.0.0.1 --group 239.1.0.1 --oifs r3",
        "add --source 2001:db8::1 --group ff3e::1 --iif r0 --oifs r1",
        "add --source 10.0.0.9 --group 239.2.0.0/16 --iif r0 --oifs r1",
        "add --group 239.3.0.0/16 --iif r1 --oifs r2",
        "add --source 10.0.0.3 --group 239.1.0.3 --iif r0 --oifs r0",  # iif also an oif
        "add --source 10.0.0.3 --group 224.0.0.3 --iif r0 --oifs r1",  # link-local group
        "add --source 10.0.0.3 --group 239.1.0.3 --iif r0 --oifs r+",  # a wildcard oif
        "add --source 0.1.0.3 --group 239.1.0.3 --iif r0 --oifs r1",
        "join --interface r1 --group 239.9.9.9",
    ]
)
lines = st.lists(st.one_of(usual, usual, usual, others), max_size=60)


@pytest.fixture(autouse=True)
def runs_of_any_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stretches of any length are runs here (a batch takes fewer than RUN_MIN lines as
    lines): the short random batches would otherwise compare lines with lines."""
    monkeypatch.setattr(commands_module, "RUN_MIN", 1)


def make(tmp_path: Path, name: str, fail_at: int | None = None) -> Commands:
    state = StateFile(str(tmp_path / f"{name}.journal"))
    state.load()
    kernel = FakeKernel()
    ctl = Controller(kernel, state)
    for ifindex, link in enumerate(LINKS, 1):
        ctl.link_up(link, ifindex)
    commands = Commands(ctl, (4, 6))
    # Routes there already: some lines replace them, delete them or add them again.
    before = "\n".join(
        f"add --source 10.0.0.{s} --group 239.1.0.{s} --iif r0 --oifs r2" for s in (1, 2, 3)
    )
    request(commands, before + "\ndel --source 10.0.0.3 --group 239.1.0.3")
    if fail_at is not None:  # the batch's fail_at-th kernel operation fails
        kernel.fail_at = kernel.calls + fail_at
    return commands


def request(commands: Commands, text: str, **args: Any) -> bytes:
    msg = {"v": 1, "id": 7, "cmd": "batch", "args": {"text": text, **args}}
    return commands.handle(json.dumps(msg).encode(), PEER)


@contextmanager
def line_by_line() -> Iterator[None]:
    """The path of every batch before the fast one: no line read as part of a column."""
    pieces = batchscan.pieces
    batchscan.pieces = batchscan.lines
    try:
        yield
    finally:
        batchscan.pieces = pieces


def seen(commands: Commands, tmp_path: Path, name: str) -> dict[str, Any]:
    """Everything a batch can change: model, kernel (its operations in order), journal."""
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    state = commands.controller.state
    assert isinstance(state, StateFile)
    state.close()
    return {
        "model": observable(commands.controller.router),
        "kernel": (copy.deepcopy(kernel.mfcs), dict(kernel.vifs)),
        "ops": list(kernel.applied),
        "journal": (tmp_path / f"{name}.journal").read_bytes(),
    }


def both(
    tmp_path: Path, text: str, fail_at: int | None = None, same_ops: bool = True, **args: Any
) -> bytes:
    """The fast path's answer, after checking the line-by-line path's is the same, and all it
    left. `same_ops`: the kernel operations in order too (a failure after some chunks
    went to the kernel undoes them at other places: only the result is the same)."""
    fast = make(tmp_path, "fast", fail_at)
    slow = make(tmp_path, "slow", fail_at)
    fast_answer = request(fast, text, **args)
    with line_by_line():
        slow_answer = request(slow, text, **args)
    assert fast_answer == slow_answer
    fast_seen, slow_seen = seen(fast, tmp_path, "fast"), seen(slow, tmp_path, "slow")
    if fail_at is not None or not same_ops:
        # (the undo of a run goes in its order, the routes' newest first)
        del fast_seen["ops"], slow_seen["ops"]
    assert fast_seen == slow_seen
    return fast_answer


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=lines, plan=st.booleans())
def test_a_mixed_batch_does_what_it_does_line_by_line(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], plan: bool
) -> None:
    tmp_path = tmp_path_factory.mktemp("batch")
    both(tmp_path, "\n".join(lines), plan=plan)


@settings(max_examples=60, deadline=None)
@given(lines=lines, fail_at=st.integers(1, 40))
def test_a_kernel_failure_in_a_batch_leaves_what_it_leaves_line_by_line(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], fail_at: int
) -> None:
    tmp_path = tmp_path_factory.mktemp("batch")
    both(tmp_path, "\n".join(lines), fail_at=fail_at)


def runs_taken(commands: Commands) -> list[int]:
    """The sizes of the runs the model will take in one step each (Router.add_run)."""
    router = commands.controller.router
    taken: list[int] = []
    add_run = router.add_run

    def counted(keys: Sequence[RouteKey], ports: Ports, steps: list[Step]) -> bool:
        if add_run(keys, ports, steps):
            taken.append(len(keys))
            return True
        return False

    router.add_run = counted  # type: ignore[method-assign]
    return taken


def test_a_large_batch_of_new_routes_takes_a_step_per_run(tmp_path: Path) -> None:
    """2,000 usual lines on two tables and two pairs of interfaces: four runs, each one
    step of the model (and one kernel operation per route), the one across the first
    chunk's end (line 1,024) cut there, same as line by line."""
    lines = [
        f"add --source 10.0.{i // 250}.{i % 250 + 1} --group 239.2.{i // 250}.{i % 250}"
        f" --iif {'r0' if i < 1000 else 'r1'} --oifs r2{' --table 100' if i % 1000 >= 500 else ''}"
        for i in range(2000)
    ]
    text = "\n".join(lines) + "\n"
    pieces = [p for p in batchscan.pieces(text) if isinstance(p, batchscan.Run)]
    assert sum(len(p.sources) for p in pieces) == 2000
    commands = make(tmp_path, "count")
    router = commands.controller.router
    taken = runs_taken(commands)
    response = json.loads(request(commands, text))
    assert response["ok"] and response["result"]["added"] == 2000
    assert response["result"]["kernel_operations"]["add_mfc"] == 2000
    assert len(router.routes) == 2000 + 2
    # Each run's first route needs a VIF (r1's and table 100's) or not (r0 and r2 in 253);
    # the third run (lines 1,001-1,500) is cut at 1,024: its first route, 23, then 476.
    assert taken == [500, 499, 23, 476, 499]
    both(tmp_path, text)


@pytest.mark.parametrize("last", ["", "del --source 10.9.9.9 --group 239.9.9.9"])
def test_a_batch_larger_than_a_chunk_in_small_parts_as_line_by_line(
    tmp_path: Path, last: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 lines read in parts of a few lines each (many runs, cut anywhere), with deletes
    and other interfaces between: the same as line by line; with a last line that fails
    (no such route), after chunks went to the kernel, nothing is left either way."""
    monkeypatch.setattr(batchscan, "PART_CHARS", 300)
    lines = []
    for i in range(3000):
        lines.append(
            f"add --source 10.1.{i // 200}.{i % 200 + 1} --group 239.4.{i // 200}.{i % 200}"
            f" --iif r{i // 700 % 2} --oifs r{2 + i // 1100 % 2}"
        )
        if i % 450 == 449:
            lines.append(
                f"del --source 10.1.{i // 200}.{i % 200 + 1} --group 239.4.{i // 200}.{i % 200}"
            )
    text = "\n".join([*lines, last])
    answer = json.loads(both(tmp_path, text, same_ops=not last))
    assert answer["ok"] == (not last)


def test_a_kernel_failure_in_a_run_is_the_answer_before_a_later_lines_mistake(
    tmp_path: Path,
) -> None:
    """1,100 usual adds, then a del of a route that does not exist, the kernel refusing the
    10th write: as line by line, the first chunk goes to the kernel before the del is
    planned, so the answer is the kernel's refusal, not the del's not_found."""
    lines = [
        f"add --source 10.5.{i // 250}.{i % 250 + 1} --group 239.5.{i // 250}.{i % 250}"
        " --iif r0 --oifs r2"
        for i in range(1100)
    ]
    text = "\n".join([*lines, "del --source 10.99.0.1 --group 239.99.0.1"])
    fast, slow = make(tmp_path, "fast", 10), make(tmp_path, "slow", 10)
    answer = json.loads(request(fast, text))
    with line_by_line():
        assert json.loads(request(slow, text)) == answer
    assert answer["error"]["code"] == "kernel_error"


def test_adds_on_alternating_interfaces_go_line_by_line_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each line on other interfaces than the one before (two upstreams taking turns): no
    run of one route each, and the kernel is written a chunk at a time, as line by line."""
    monkeypatch.setattr(commands_module, "RUN_MIN", RUN_MIN)
    text = "\n".join(
        f"add --source 10.3.{i // 250}.{i % 250 + 1} --group 239.3.{i // 250}.{i % 250}"
        f" --iif r{i % 2} --oifs r2"
        for i in range(5000)
    )
    commands = make(tmp_path, "alternating")
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    sizes: list[int] = []
    apply = kernel.apply

    def counted(ops: Any) -> None:
        sizes.append(sum(len(op.keys) if op.__class__ in RUNS else 1 for op in ops))
        apply(ops)

    kernel.apply = counted  # type: ignore[method-assign]
    before = len(kernel.mfcs)
    assert json.loads(request(commands, text))["ok"]
    assert kernel.runs == []
    assert max(sizes) <= controller.CHUNK + 1
    assert len(kernel.mfcs) == before + 5000


def usual_line(i: int, iif: str) -> str:
    address = f"--source 10.5.{i // 250}.{i % 250 + 1} --group 239.5.{i // 250}.{i % 250}"
    return f"add {address} --iif {iif} --oifs r2"


@pytest.mark.parametrize(
    ("run", "mistake", "fail_at"),
    [(600, 1100, 10), (1500, 1800, 1200), (1500, 1800, 1030), (1024, 1024, 1000)],
)
def test_a_batch_with_a_kernel_refusal_and_a_mistake_fails_as_line_by_line(
    tmp_path: Path, run: int, mistake: int, fail_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of `run` lines, then lines alternating between two iifs, a del of a route that
    does not exist at line `mistake` + 1, the kernel refusing its `fail_at`th write: the
    kernel takes the same chunks before a later line is planned, so the answer (the kernel's
    refusal or the del's not_found, and its line) is the one line by line gives."""
    monkeypatch.setattr(commands_module, "RUN_MIN", RUN_MIN)
    lines = [usual_line(i, "r0") for i in range(run)]
    lines += [usual_line(i, "r1" if i % 2 else "r0") for i in range(run, 2000)]
    lines.insert(mistake, "del --source 10.99.0.1 --group 239.99.0.1")
    text = "\n".join(lines)
    fast, slow = make(tmp_path, "fast", fail_at), make(tmp_path, "slow", fail_at)
    answer = request(fast, text)
    with line_by_line():
        assert request(slow, text) == answer
    assert not json.loads(answer)["ok"]


# --- generated files: every line of one shape (batchscan._uniform) ------------------------------

octet = st.sampled_from(["0", "1", "01", "9", "127", "223", "224", "239", "240", "255", "256"])
uniform_address = st.one_of(
    st.builds("10.{}.0.{}".format, n, st.integers(1, 3)),
    st.builds("239.1.{}.{}".format, n, st.integers(0, 40)),
    st.builds("{}.{}.0.{}".format, octet, octet, octet),  # near misses and other ranges
)
shape = st.builds(
    "{}add --source {{s}} --group {{g}} --iif {} --oifs {}{}".format,
    st.sampled_from(["", "mfc "]),
    st.sampled_from(["r0", "r1"]),
    oifs,
    st.sampled_from(["", " --table 100", " --table 253", " --table 0"]),
)


@st.composite
def uniform_batch(draw: st.DrawFn) -> str:
    """Lines of one shape, their addresses mostly valid (new routes, routes there already,
    the same route twice), a few near misses; now and then one other line."""
    line = draw(shape)
    pairs = draw(
        st.lists(
            st.one_of(
                st.builds(
                    "10.{}.0.{} 239.1.{}.{}".format, n, st.integers(1, 3), n, st.integers(0, 40)
                ),
                st.builds("{} {}".format, uniform_address, uniform_address),
            ),
            min_size=1,
            max_size=80,
        )
    )
    texts = [line.format(s=s, g=g) for s, g in (pair.split() for pair in pairs)]
    if draw(st.booleans()):
        texts.insert(draw(st.integers(0, len(texts))), draw(others))
    return "\n".join(texts) + draw(st.sampled_from(["\n", "", "\n\n"]))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=uniform_batch(), part_chars=st.sampled_from([100, 1_000, batchscan.PART_CHARS]))
def test_a_generated_batch_does_what_it_does_line_by_line(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    part_chars: int,
) -> None:
    """Batches of one shape, read in parts of PART_CHARS (some uniform, some with a near
    miss or another line): the same answer, model, kernel operations and journal as line by
    line."""
    monkeypatch.setattr(batchscan, "PART_CHARS", part_chars)
    tmp_path = tmp_path_factory.mktemp("batch")
    both(tmp_path, text)


@settings(max_examples=60, deadline=None)
@given(text=uniform_batch(), fail_at=st.integers(1, 40))
def test_a_kernel_failure_in_a_generated_batch_leaves_what_it_leaves_line_by_line(
    tmp_path_factory: pytest.TempPathFactory, text: str, fail_at: int
) -> None:
    tmp_path = tmp_path_factory.mktemp("batch")
    both(tmp_path, text, fail_at=fail_at)


def test_generated_batches_take_the_uniform_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests above reach batchscan._uniform: a batch of 300 routes in parts of 1,000
    characters is read part by part as runs by it, and does what it does line by line."""
    parts: list[tuple[str, bool]] = []  # each part _uniform was given, and whether it took it
    uniform = batchscan._uniform

    def counted(text: str, before: int) -> batchscan.Run | None:
        run = uniform(text, before)
        parts.append((text, run is not None))
        return run

    monkeypatch.setattr(batchscan, "_uniform", counted)
    monkeypatch.setattr(batchscan, "PART_CHARS", 1_000)
    text = "".join(
        f"mfc add --source 10.0.{k % 3}.1 --group 239.2.{k // 256}.{k % 256} --iif r1 --oifs r3\n"
        for k in range(300)
    )
    answer = json.loads(both(tmp_path, text))
    assert answer["result"]["added"] == 300
    # (whatever else the daemons were given before: `make` starts them with other batches)
    ours = [taken for part, taken in parts if part in text]
    assert "".join(part for part, _ in parts if part in text) == text
    assert len(ours) > 10 and all(ours)


def test_a_line_with_a_very_long_interface_name_is_refused_as_line_by_line(
    tmp_path: Path,
) -> None:
    """A usual line whose oif name is 2 MB (the server takes requests of up to 128 MiB) is
    refused as line by line, at about its cost: it was once read at the strings around its
    addresses, compiled into an expression of megabytes (1.3 s and 119 MiB a megabyte)."""
    text = "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs " + "a" * 2_000_000 + "\n"
    started = time.monotonic()
    answer = json.loads(both(tmp_path, text))
    assert time.monotonic() - started < 2  # (a bound for a hang: bench/ measures the cost)
    assert "not a valid interface name" in answer["error"]["message"]


# --- lines of several oifs ("--oifs r1,r2" or "--oifs r1 r2") -------------------------------------


def several_oifs_line(i: int, oifs: str, iif: str = "r0") -> str:
    address = f"--source 10.6.{i // 250}.{i % 250 + 1} --group 239.6.{i // 250}.{i % 250}"
    return f"mfc add {address} --iif {iif} --oifs {oifs}"


@pytest.mark.parametrize("spelling", [",", " "])
def test_lines_of_several_oifs_take_a_step_per_run(
    tmp_path: Path, spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,000 lines of two or three oifs (comma- or space-separated), their set changing at
    line 1,201: runs of the model (one step each, the first route of a set that needs a VIF
    alone), the same answer, model, kernel operations and journal as line by line, and the
    journal restores the same routes."""
    monkeypatch.setattr(commands_module, "RUN_MIN", RUN_MIN)
    lines = [
        several_oifs_line(i, spelling.join(["r1", "r2"] if i < 1200 else ["r3", "r1", "r2"]))
        for i in range(2000)
    ]
    text = "\n".join(lines) + "\n"
    pieces = list(batchscan.pieces(text))
    assert all(isinstance(p, batchscan.Run) for p in pieces)
    commands = make(tmp_path, "count")
    router = commands.controller.router
    taken = runs_taken(commands)
    response = json.loads(request(commands, text))
    assert response["ok"] and response["result"]["added"] == 2000, response
    # r1 has no VIF yet: the first route alone, the rest of the first chunk, then the rest
    # of the set's lines; the second set adds r3's VIF: its first route alone again.
    assert taken == [1023, 176, 799]
    assert router.routes[(4, "10.6.0.1", "239.6.0.0", 253)] == Ports("r0", ("r1", "r2"))
    assert router.routes[(4, "10.6.7.50", "239.6.7.49", 253)] == Ports("r0", ("r3", "r1", "r2"))
    answer = both(tmp_path, text)
    # The journal written by the runs restores every route as the batch left it.
    state = StateFile(str(tmp_path / "fast.journal"))
    restarted = Controller(FakeKernel(), state)
    restarted.restore(state.load(), dict(zip(LINKS, range(1, 5), strict=True)))
    fast = make(tmp_path, "again")
    request(fast, text)
    assert restarted.router.routes == fast.controller.router.routes
    assert json.loads(answer)["result"]["added"] == 2000


@pytest.mark.parametrize(
    ("oifs", "ok"),
    [
        ("r1,r1", False),  # twice
        ("r1 r0", False),  # the iif too
        (",".join(f"o{i}" for i in range(32)), False),  # more oifs than a route takes
        ("r1,r2,r9999999999999999", False),  # a name too long
        ("r1,,r2", False),  # near misses the expression leaves to batchfile
        ("r1,r2,", False),
        ("r1 -r2", False),
        ("r1, r2", True),  # (fine, read by batchfile)
        ("r1  r2", True),
        ("r1,r+", True),  # a wildcard: a pattern, followed by the general path
    ],
)
def test_a_line_of_several_oifs_out_of_runs_is_read_as_line_by_line(
    tmp_path: Path, oifs: str, ok: bool
) -> None:
    """1,500 lines of two oifs with another one at line 700: the same answer (a wrong line's
    message, code and line) as line by line, and the same model, kernel and journal."""
    lines = [several_oifs_line(i, "r1,r2") for i in range(1500)]
    lines[699] = several_oifs_line(699, oifs)
    answer = json.loads(both(tmp_path, "\n".join(lines)))
    assert answer["ok"] == ok, answer
    if not ok:
        assert answer["error"]["line"] == 700, answer


def test_both_spellings_of_one_set_are_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 lines of oifs r1 and r2, spelt "r1,r2" and "r1 r2" in turn: one run of the
    model (its first route alone: r1 needs a VIF), as line by line otherwise."""
    monkeypatch.setattr(commands_module, "RUN_MIN", RUN_MIN)
    text = "\n".join(several_oifs_line(i, "r1 r2" if i % 2 else "r1,r2") for i in range(1000))
    commands = make(tmp_path, "count")
    taken = runs_taken(commands)
    assert json.loads(request(commands, text))["result"]["added"] == 1000
    assert taken == [999]
    both(tmp_path, text)

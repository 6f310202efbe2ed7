"""Tests for the compaction's copy of the routes made a slice at a time between turns of the
event loop (Controller.persistent_in_slices), and for the copy freed by the writing thread."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mfcd.controller import Controller
from mfcd.model import AddRoute, DelRoute, Ports, RouteKey, SetThreshold
from mfcd.state import StateFile

from .conftest import FakeKernel, FakeState

PORTS = Ports("eth0", ("eth1",))


def key(n: int) -> RouteKey:
    return (4, "198.18.0.1", f"239.16.{n >> 8}.{n & 255}", 253)


def controller_with(n: int) -> Controller:
    ctl = Controller(FakeKernel(), FakeState())
    ctl.change([AddRoute(key(k), PORTS) for k in range(n)])
    ctl.change([SetThreshold("eth1", 5)])
    return ctl


Copy = tuple[dict[RouteKey, Ports], dict[str, int]]


def drive(
    ctl: Controller, size: int, between: Callable[[], None] | None = None
) -> tuple[Copy, int]:
    """Run the copier to its end, calling `between` at the first pause; (result, pauses)."""
    for pauses, got in enumerate(ctl.persistent_in_slices(size)):
        if got is not None:
            return got, pauses
        if pauses == 0 and between is not None:
            between()
    raise AssertionError("the copier ended without a copy")


def test_a_copy_in_slices_equals_the_whole_copy_and_pauses_between_slices() -> None:
    ctl = controller_with(10)
    got, pauses = drive(ctl, 3)
    assert got == ctl.persistent()
    assert pauses == 3  # 3 + 3 + 3, then the last route: four slices, three pauses
    routes, thresholds = got
    assert routes is not ctl.router.routes and thresholds == {"eth1": 5}


def test_a_table_smaller_than_a_slice_is_copied_without_a_pause() -> None:
    ctl = controller_with(10)
    got, pauses = drive(ctl, 50)
    assert (got, pauses) == (ctl.persistent(), 0)


def test_a_change_between_slices_gives_the_routes_of_the_last_moment() -> None:
    ctl = controller_with(10)

    def change() -> None:
        ctl.change([DelRoute(key(0)), AddRoute(key(99), PORTS)])  # key(0) is copied already

    got, _ = drive(ctl, 3, change)
    routes, _thresholds = got
    assert key(0) not in routes and key(99) in routes
    assert got == ctl.persistent()


def test_routes_of_other_origins_are_left_out_of_every_slice() -> None:
    ctl = controller_with(10)
    ctl.router.begin()
    for n in (1, 5, 8):
        ctl.router.set_origin(key(n), "learned")
    ctl.router.commit()
    got, _ = drive(ctl, 3)
    routes, _thresholds = got
    assert set(routes) == {key(n) for n in range(10)} - {key(1), key(5), key(8)}
    assert got == ctl.persistent()


def test_the_writing_thread_frees_the_copy_it_wrote(tmp_path: Path) -> None:
    sf = StateFile(str(tmp_path / "state.journal"))
    sf.load()
    copy = {key(n): PORTS for n in range(25_000)}
    job = sf.start_compaction(copy, {})
    job.write()
    assert job.error is None
    assert job.routes == {} and copy == {}  # emptied, a piece at a time, by the thread
    assert sf.finish_compaction(job)
    sf.close()
    loaded = StateFile(str(tmp_path / "state.journal")).load()
    assert set(loaded.routes) == {key(n) for n in range(25_000)}

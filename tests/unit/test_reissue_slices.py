"""An interface re-created under many routes: the VIF comes back at once, the routes' entries
are written again a slice at a time, and changes made between two slices stay."""

from __future__ import annotations

import pytest

from mfcd import controller as controller_module
from mfcd.controller import Controller
from mfcd.model import AddMfc, AddRoute, DelRoute, Route
from tests.unit.conftest import FakeKernel, FakeState, observable

B_AGAIN = 12  # b's ifindex once re-created


def route(i: int, iif: str, *oifs: str) -> Route:
    return Route(4, f"10.0.0.{i}", "239.1.1.1", iif, oifs, 253)


def with_b_recreated(sliced: bool) -> tuple[Controller, FakeKernel]:
    """Ten routes on b and one on c, b deleted (four more routes on it wait for it), then
    b is created again."""
    kernel = FakeKernel()
    ctl = Controller(kernel, FakeState())
    ctl.sliced = sliced
    for ifindex, name in enumerate(("a", "b", "c"), 1):
        ctl.link_up(name, ifindex)
    ctl.change([AddRoute.of(route(i, "a", "b")) for i in range(10)])
    ctl.change([AddRoute.of(route(20, "a", "c"))])
    kernel.device_gone(2)
    ctl.link_down("b")
    ctl.change([AddRoute.of(route(i, "a", "b", "c")) for i in range(10, 14)])
    ctl.link_up("b", B_AGAIN)
    return ctl, kernel


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "REISSUE_CHUNK", 3)


def written(kernel: FakeKernel, since: int) -> list[int]:
    """The routes (by number) whose entries were written since the `since`-th operation."""
    ops = kernel.applied[since:]
    return sorted(int(op.source.rsplit(".", 1)[1]) for op in ops if isinstance(op, AddMfc))


def test_the_vif_comes_back_at_once_and_the_entries_slice_by_slice() -> None:
    ctl, kernel = with_b_recreated(sliced=True)
    assert (4, 253, 1) in kernel.vifs  # b's VIF, at once
    assert list(ctl.reissues) == ["b"]
    before = len(kernel.applied)
    slices = list(ctl.reissue_slices())
    assert len(slices) > 3  # 15 routes, 3 at a time
    # Every route on b; those that waited for it were installed with it, and are written
    # once more (the same entry: harmless).
    assert written(kernel, before) == list(range(14))
    assert sum(slices) == 14
    assert not ctl.reissues

    whole, whole_kernel = with_b_recreated(sliced=False)
    assert kernel.view() == whole_kernel.view()
    assert observable(ctl.router) == observable(whole.router)


def test_a_route_deleted_between_two_slices_is_not_written_back() -> None:
    ctl, kernel = with_b_recreated(sliced=True)
    slices = ctl.reissue_slices()
    next(slices)  # the routes are listed
    next(slices)  # the first slice is written
    gone = route(13, "a").key
    ctl.change([DelRoute(gone)])
    ctl.change([AddRoute.of(route(11, "a", "c"))])  # another no longer uses b
    before = len(kernel.applied)
    list(slices)
    assert gone not in kernel.mfcs
    assert 11 not in written(kernel, before) and 13 not in written(kernel, before)
    assert {device for device, _ in kernel.forwarding(route(11, "a").key)[1]} == {3}


def test_an_interface_gone_again_stops_the_writing() -> None:
    ctl, kernel = with_b_recreated(sliced=True)
    slices = ctl.reissue_slices()
    next(slices)
    first = next(slices)
    kernel.device_gone(B_AGAIN)
    ctl.link_down("b")
    assert first == 3 and sum(slices) == 0

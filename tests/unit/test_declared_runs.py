"""The config's routes applied in runs (Controller.apply_declared at start, or a reload in
one transaction): stretches on one combination of interfaces go to the model and the kernel
as one step each, with the same result as route by route."""

from __future__ import annotations

from typing import Any

import pytest

from mfcd import controller as controller_module
from mfcd.controller import Controller
from mfcd.declarations import Declarations, diff
from mfcd.model import RUN_MIN, AddRoute, Route
from tests.unit.test_declarations import controller, parse
from tests.unit.test_declared_intents import kernel_of
from tests.unit.test_reload_slices import everything


def text(first: int, count: int, iif: str, oifs: str) -> str:
    return "".join(
        f'[[route]]\nsource = "198.18.{i // 250}.{i % 250}"\ngroup = "239.2.{i // 250}.1"\n'
        f'iif = "{iif}"\noifs = [{oifs}]\n'
        for i in range(first, first + count)
    )


def declarations() -> Declarations:
    """A stretch on a/b, alternating a and c, a short stretch (with an api route, which the
    config takes over), another long one."""
    parts = [text(0, 300, "a", '"b"')]
    parts += [text(300 + i, 1, "ac"[i % 2], '"b"') for i in range(40)]
    parts += [text(340, RUN_MIN - 1, "c", '"a"'), text(400, 200, "b", '"a", "c"')]
    found, problems = parse("".join(parts))
    assert problems == []
    return found


def started(runs: bool, monkeypatch: pytest.MonkeyPatch) -> Controller:
    if not runs:
        monkeypatch.setattr(controller_module, "_route_runs", lambda *args: [])
    ctl = controller()
    api = Route(4, "198.18.1.95", "239.2.1.1", "a", ("c",), 253)  # (route 345)
    ctl.change([AddRoute.of(api)])  # taken over by the config
    new = declarations()
    ctl.apply_declared(new, diff(Declarations(), new))
    return ctl


def test_the_configs_routes_in_runs_are_those_route_by_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with monkeypatch.context() as m:
        reference: dict[str, Any] = everything(started(False, m))
        assert kernel_of(started(False, m)).runs == []
    ctl = started(True, monkeypatch)
    got = everything(ctl)
    assert got == reference
    # The long stretches are runs; alternating and short ones go singly.
    assert kernel_of(ctl).runs == [300, 200]

"""The state file during a reload applied in slices: a snapshot written between two slices
(the file was replaced, or a change found it so) holds what the journal would, the state
before the reload, so that it matches memory whether the reload then ends or fails."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from mfcd.controller import Controller, Outcome
from mfcd.declarations import Declarations, InterfaceSetting, diff
from mfcd.errors import KernelError
from mfcd.groups import SetMrdisc
from mfcd.model import Ports, SetThreshold
from tests.unit.test_declared_intents import kernel_of, state_of
from tests.unit.test_reload_slices import key, next_config, running


def saved(ctl: Controller) -> tuple[dict[tuple[int, str, str, int], Ports], dict[str, int]]:
    """The routes and thresholds of the last snapshot (nothing was journaled after it)."""
    routes, thresholds = state_of(ctl).snapshots[-1]
    return {r.key: Ports(r.iif, r.oifs) for r in routes}, thresholds


def in_memory(ctl: Controller) -> tuple[dict[tuple[int, str, str, int], Ports], dict[str, int]]:
    routes, thresholds = ctl.persistent()
    return dict(routes), thresholds


def replaced_after_the_takeover(
    ctl: Controller, new: Declarations
) -> tuple[Iterator[int], dict[str, Any]]:
    """Run the reload's slices until the api route 100 is the config's, then have the state
    file replaced and written again (as Daemon._keep_state_file does every second); the
    slices left."""
    slices = ctl.declared_slices(new, diff(ctl.declared, new), Outcome())
    while ctl.router.origin(key(100)) != "config":
        next(slices)
    state_of(ctl).moved = "state.journal was replaced"
    records = len(state_of(ctl).records)
    extra = ctl.snapshot_extra()
    ctl.keep_state_file()
    assert len(state_of(ctl).snapshots) == 1 and len(state_of(ctl).records) == records
    return slices, extra


def test_a_reload_that_fails_after_the_file_was_replaced_leaves_the_file_as_memory() -> None:
    ctl = running()  # route 100 from the api, to c
    api_route = ctl.router.routes[key(100)]
    ctl.change([SetThreshold("b", 6), SetMrdisc("b", True)])
    new = next_config()  # takes route 100 over, and b's threshold and mrdisc
    new.interfaces["b"] = InterfaceSetting("b", 9, True, "f.conf:99")
    slices, extra = replaced_after_the_takeover(ctl, new)
    # The snapshot holds what the journal would: the reload has not ended.
    assert saved(ctl)[0][key(100)] == api_route
    assert saved(ctl)[1]["b"] == 6
    assert "b" in extra["mrdisc"]
    kernel = kernel_of(ctl)
    kernel.fail_at = kernel.calls + 1
    with pytest.raises(KernelError):
        list(slices)
    assert ctl.router.routes[key(100)] == api_route and ctl.router.origin(key(100)) == "api"
    assert saved(ctl) == in_memory(ctl)
    assert "b" in ctl.snapshot_extra()["mrdisc"]


def test_a_reload_that_ends_after_the_file_was_replaced_journals_its_takeover() -> None:
    ctl = running()
    new = next_config()
    slices, _ = replaced_after_the_takeover(ctl, new)
    records = len(state_of(ctl).records)
    list(slices)
    assert ctl.router.origin(key(100)) == "config"
    # After the snapshot (which still had route 100), the record that takes it over.
    assert [op[0] for op in state_of(ctl).records[records]] == ["del"]
    routes, _ = saved(ctl)
    del routes[key(100)]
    assert routes == in_memory(ctl)[0]

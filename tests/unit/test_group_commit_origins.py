"""Group commit against the other origins: learned entries, config declarations, and
requests that change nothing of their own (found by review of the merged branches)."""

from __future__ import annotations

import json

from mfcd.declarations import diff
from mfcd.groups import SetMrdisc
from mfcd.model import AddRoute, Route, SetThreshold
from tests.unit.conftest import FakeState
from tests.unit.test_declarations import controller, parse
from tests.unit.test_group_commit import PEER, add, make_commands
from tests.unit.test_templates import key, setup, star, upcall


def test_an_api_route_replacing_a_learned_entry_is_journaled_at_once_not_grouped() -> None:
    # Grouped, a failed sync would put the learned entry back as an api route: saved, never
    # expiring. Journaled on its own, its rollback restores the origin too.
    ctl, _, learner, _ = setup()
    ctl.change([star("239.1.1.1", "a", "b")])
    learner.on_upcalls([upcall(ctl, "198.18.0.9", "239.1.1.1", "a")])
    k = key("198.18.0.9")
    assert ctl.router.origin(k) == "learned"
    ctl.grouping = True
    route = Route(4, "198.18.0.9", "239.1.1.1", "a", ("c",), 253)
    ctl.state.fail = True  # type: ignore[attr-defined]
    try:
        ctl.change([AddRoute.of(route)])
    except Exception as e:
        assert "state file" in str(e)
    else:
        raise AssertionError("the change was not journaled at once")
    assert ctl.group is None
    assert ctl.router.origin(k) == "learned" and k in ctl.router.learned
    ctl.state.fail = False  # type: ignore[attr-defined]
    ctl.compact()
    assert ctl.state.snapshots[-1][0] == []  # type: ignore[attr-defined]


def test_a_snapshot_written_during_a_reload_leaves_out_what_the_files_now_declare() -> None:
    ctl = controller()
    ctl.change([SetThreshold("a", 5), SetMrdisc("b", True)])
    state = ctl.state
    assert isinstance(state, FakeState)
    state.moved = "the state file was replaced"  # the reload's record is written as a snapshot
    new, problems = parse(
        '[[interface]]\nname = "a"\nthreshold = 3\n[[interface]]\nname = "b"\nmrdisc = true\n'
    )
    assert not problems
    ctl.apply_declared(new, diff(ctl.declared, new))
    routes, thresholds = state.snapshots[-1]
    assert (routes, thresholds) == ([], {})  # not a=3 as an api threshold
    assert ctl.snapshot_extra()["mrdisc"] == []


def test_a_request_that_found_its_work_done_waits_for_the_groups_verdict() -> None:
    state = FakeState()
    commands = make_commands(state)
    first = commands.submit(add(1), PEER)
    same = commands.submit(add(2), PEER)  # the same route again: no change of its own
    assert first.group is same.group is not None
    state.fail = True
    commands.flush()
    for answer in (first, same):
        response = commands.settle(answer)
        assert isinstance(response, bytes)
        assert json.loads(response)["error"]["code"] == "state_error"
    assert not commands.controller.router.routes

"""Long work in time-budgeted slices (slices.py): flush and the deletion of a template with
many learned entries, through the fake kernel. Between two slices every entry is learned
(model and kernel) or gone from both; a slice the kernel refuses leaves its entries as
they were and the work goes on; a deletion that fails puts the entries back on their
template; the end result is that of the one-transaction path."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mfcd import learning, slices
from mfcd.commands import Commands, Deferred, Peer
from mfcd.controller import Controller
from mfcd.learning import Learner
from mfcd.model import DelMfc, DelTemplate, Step
from mfcd.slices import Budget, run_sliced
from tests.unit.conftest import FakeKernel, FakeState, observable
from tests.unit.test_templates import LINKS, star, tkey, upcall

ENTRIES = 3 * learning.STEP + 5  # learned from the narrow template: four steps
NARROW = ("239.9.0.0/16", "a", "b")  # the template deleted
WIDE = ("239.0.0.0/8", "a", "c")  # takes its entries over
LATE = (4, "198.20.0.9", "239.9.3.3", 253)  # a flow that comes during the deletion


class Ticks:
    """A clock that advances by `step` each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_loop_gets_a_turn_only_once_a_slice_has_used_its_time() -> None:
    async def main(step: float) -> tuple[int, int]:
        budget = Budget(0.01, Ticks(step))
        total = await run_sliced(iter([2] * 100), budget)
        return total, budget.turns

    total, turns = asyncio.run(main(0.001))
    assert total == 200  # the sum of what the work yielded
    assert 8 <= turns <= 12  # about one turn per 10 ms at 1 ms a step
    assert asyncio.run(main(0.02)) == (200, 100)  # every step over the budget: a turn each


def learned_lab(wide: bool = True) -> tuple[Controller, FakeKernel, Learner]:
    """ENTRIES flows learned from NARROW (and, with `wide`, two from WIDE only)."""
    kernel = FakeKernel()
    kernel.names = {ifindex: name for name, ifindex in LINKS.items()}
    ctl = Controller(kernel, FakeState())
    for name, ifindex in LINKS.items():
        ctl.link_up(name, ifindex)
    ctl.change([star(*NARROW)] + ([star(*WIDE)] if wide else []))
    learner = Learner(ctl, kernel)
    flows = [upcall(ctl, f"198.18.{i >> 8}.{i & 255}", "239.9.1.1", "a") for i in range(ENTRIES)]
    if wide:
        flows += [upcall(ctl, "198.19.0.1", f"239.1.0.{i}", "a") for i in (1, 2)]
    assert learner.on_upcalls(flows) == len(flows)
    return ctl, kernel, learner


def consistent(ctl: Controller, kernel: FakeKernel) -> None:
    """The kernel holds exactly the installed entries, each as the model says (learned
    ones included), and each learned entry points at a template that exists."""
    router = ctl.router
    assert set(kernel.mfcs) == set(router.installed)
    for key in router.installed:
        op = router.entry(key)
        assert kernel.mfcs[key].parent == op.parent
    for key, template in router.learned.items():
        assert key in router.installed and template in router.templates


def test_flush_removes_a_step_at_a_time_with_a_consistent_state_in_between() -> None:
    ctl, kernel, learner = learned_lab()
    total = len(ctl.router.learned)
    steps = learner.flushing()
    assert next(steps) == learning.STEP
    consistent(ctl, kernel)
    assert len(ctl.router.learned) == total - learning.STEP
    # A flow learned between two slices came after the flush: it stays.
    learner.on_upcalls([upcall(ctl, LATE[1], LATE[2], "a")])
    assert sum(steps) == total - learning.STEP
    assert list(ctl.router.learned) == [LATE]
    consistent(ctl, kernel)
    assert learner.since.keys() == ctl.router.learned.keys()


def test_a_flush_slice_the_kernel_refuses_keeps_its_entries_and_the_others_go() -> None:
    ctl, kernel, learner = learned_lab(wide=False)
    keys = list(ctl.router.learned)
    refused = keys[learning.STEP + 3]  # in the second step
    kernel.refuse = {DelMfc(4, refused[1], refused[2], 253)}
    assert sum(learner.flushing()) == ENTRIES - learning.STEP
    assert set(ctl.router.learned) == set(keys[learning.STEP : 2 * learning.STEP])
    consistent(ctl, kernel)


def test_a_template_deleted_a_slice_at_a_time_ends_as_in_one_transaction() -> None:
    whole, whole_kernel, whole_learner = learned_lab()
    whole.change([DelTemplate(tkey(*NARROW[:2]))])
    whole_learner.after_change()
    whole_learner.on_upcalls([upcall(whole, LATE[1], LATE[2], "a")])

    ctl, kernel, learner = learned_lab()
    template = tkey(*NARROW[:2])
    taken: list[Step] = []
    steps = learner.retiring(template, taken)
    assert next(steps) == learning.STEP
    consistent(ctl, kernel)
    # Between two slices the template is still there; a new flow it matches is not
    # learned from it, but from the next best template once it is gone.
    assert template in ctl.router.templates
    assert learner.on_upcalls([upcall(ctl, LATE[1], LATE[2], "a")]) == 0
    assert sum(steps) == ENTRIES - learning.STEP
    assert template not in learner.retired
    assert all(t != template for t in ctl.router.learned.values())
    ctl.change([DelTemplate(template)])
    assert learner.after_change() == 1
    assert ctl.router.learned[LATE] == tkey(*WIDE[:2])
    assert observable(ctl.router) == observable(whole.router)
    assert ctl.router.learned == whole.router.learned
    assert kernel.view() == whole_kernel.view()
    assert sum(step.action == "replace_mfc" for step in taken) == ENTRIES


def sliced_commands() -> Commands:
    ctl, _, learner = learned_lab()
    commands = Commands(ctl, (4,))
    commands.learner = learner
    commands.slicing = True
    return commands


def submit(commands: Commands, cmd: str, args: dict[str, Any]) -> Any:
    line = json.dumps({"v": 1, "id": 3, "cmd": cmd, "args": args}).encode()
    return commands.submit(line, Peer(1, 0, 0)).response


def run_with_others_served(commands: Commands, later: Any) -> tuple[dict[str, Any], set[int]]:
    """Run a deferred answer while another client asks `show` between its slices (each
    slice one step: a budget of 0); the answer decoded, and the learned counts shown."""
    assert isinstance(later, Deferred) and later.answer is not None
    answer = later.answer
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    shown: set[int] = set()

    async def main() -> bytes:
        task = asyncio.ensure_future(answer())
        while not task.done():
            routes = json.loads(submit(commands, "show", {}).join())["result"]["routes"]
            shown.add(sum(r["origin"] == "learned" for r in routes))
            consistent(commands.controller, kernel)
            await asyncio.sleep(0)
        return task.result()

    return json.loads(asyncio.run(main())), shown


@pytest.fixture
def every_step_a_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slices, "SLICE_SECONDS", 0.0)


@pytest.mark.usefixtures("every_step_a_slice")
def test_a_flush_request_is_answered_at_the_end_and_others_are_served_between_slices() -> None:
    commands = sliced_commands()
    total = len(commands.controller.router.learned)
    response, shown = run_with_others_served(commands, submit(commands, "flush", {}))
    assert response["result"] == {"dry_run": False, "flushed": total}
    assert commands.controller.router.learned == {}
    assert len(shown) >= 4  # shows came between the slices, each seeing fewer entries


@pytest.mark.usefixtures("every_step_a_slice")
def test_a_template_deletion_request_lets_its_entries_go_in_slices() -> None:
    commands = sliced_commands()
    args = {"group": NARROW[0], "iif": "a"}
    response, shown = run_with_others_served(commands, submit(commands, "mfc.del", args))
    result = response["result"]
    assert result["kernel_operations"]["replace_mfc"] == ENTRIES
    # The plan lists the last transaction's steps only (the VIFs it releases), after the
    # template's own line (no kernel step).
    template, *steps = result["plan"]
    assert template["action"] == "remove_template"
    assert len(steps) == sum(result["kernel_operations"].values()) - ENTRIES
    router = commands.controller.router
    assert tkey(*NARROW[:2]) not in router.templates
    assert set(router.learned.values()) == {tkey(*WIDE[:2])} and len(router.learned) == ENTRIES + 2
    assert len(shown) == 1  # re-pointed, not removed: every show saw all of them
    state = commands.controller.state
    assert isinstance(state, FakeState) and state.records[-1][0][0] == "untemplate"


@pytest.mark.usefixtures("every_step_a_slice")
def test_a_template_deletion_that_fails_puts_its_entries_back_on_it() -> None:
    commands = sliced_commands()
    router = commands.controller.router
    before = dict(router.learned)
    kernel = commands.controller.kernel
    assert isinstance(kernel, FakeKernel)
    entries = kernel.view()
    state = commands.controller.state
    assert isinstance(state, FakeState)
    state.fail = True  # the journal refuses the deletion, after the entries were re-pointed
    args = {"group": NARROW[0], "iif": "a"}
    response, _ = run_with_others_served(commands, submit(commands, "mfc.del", args))
    assert response["error"]["code"] == "state_error"
    assert tkey(*NARROW[:2]) in router.templates
    assert router.learned == before
    assert kernel.view() == entries

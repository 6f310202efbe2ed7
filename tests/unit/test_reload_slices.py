"""A reload applied a slice at a time (Controller.declared_slices): the same result as one
transaction, clients' changes between two slices, and all or nothing when a slice, or the
journal record at the end, fails."""

from __future__ import annotations

from typing import Any

import pytest

from mfcd import controller as controller_module
from mfcd.controller import Controller, Outcome
from mfcd.declarations import Declarations, diff
from mfcd.errors import DeclaredInConfig, KernelError, StateError
from mfcd.model import AddRoute, DelRoute, Ports, Route
from tests.unit.conftest import observable
from tests.unit.test_declarations import controller, parse
from tests.unit.test_declared_intents import kernel_of, state_of

CHUNK = 4  # routes a slice changes in these tests


@pytest.fixture(autouse=True)
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller_module, "RELOAD_CHUNK", CHUNK)


def config(count: int, oifs: str = '"b"', first: int = 0, threshold: int = 5) -> Declarations:
    text = "".join(
        f'[[route]]\nsource = "198.18.{i // 250}.{i % 250}"\ngroup = "239.1.1.1"\niif = "a"\n'
        f"oifs = [{oifs}]\n"
        for i in range(first, first + count)
    )
    text += f'[[interface]]\nname = "c"\nthreshold = {threshold}\n'
    found, problems = parse(text)
    assert problems == []
    return found


def key(i: int) -> tuple[int, str, str, int]:
    return (4, f"198.18.{i // 250}.{i % 250}", "239.1.1.1", 253)


def everything(ctl: Controller) -> dict[str, Any]:
    """What a reload may change, in the model and the kernel."""
    return {
        **observable(ctl.router),
        "origins": dict(ctl.router.origins),
        "kernel": kernel_of(ctl).view(),
        "declared": ctl.declared,
    }


def running(count: int = 10) -> Controller:
    """Routes 0..count-1 declared with oif b, and an api route (100) the next config takes over."""
    ctl = controller()
    ctl.apply_declared(config(count), diff(Declarations(), config(count)))
    ctl.change([AddRoute.of(Route(4, "198.18.0.100", "239.1.1.1", "a", ("c",), 253))])
    return ctl


def next_config() -> Declarations:
    """Routes 0..4 gone, 5..9 now to c, 10..14 and 100 (taken over from the api) new, and c's
    threshold (the last slice) 7."""
    new = config(5, '"c"', first=5, threshold=7)
    more = config(5, first=10)
    new.routes.update(more.routes)
    new.positions.update(more.positions)
    new.routes[key(100)] = Ports("a", ("b",))
    new.positions[key(100)] = new.positions[key(10)]
    return new


def test_a_sliced_reload_ends_as_one_transaction_does() -> None:
    one, sliced = running(), running()
    new = next_config()
    one.apply_declared(new, diff(one.declared, new))
    outcome = Outcome()
    slices = list(sliced.declared_slices(new, diff(sliced.declared, new), outcome))
    # The plan, 5 removed + 11 added or changed, what the reload no longer needs freed.
    assert slices == [0, 0, 4, 4, 4, 4, 0, 0]
    assert everything(sliced) == everything(one)
    assert state_of(sliced).records == state_of(one).records  # the api route taken over
    assert outcome.counts["del_mfc"] == 5 and not sliced.reloading


def test_between_two_slices_every_route_is_old_or_new_and_clients_change_others() -> None:
    ctl = running()
    new = next_config()
    slices = ctl.declared_slices(new, diff(ctl.declared, new), Outcome())
    for _ in range(4):  # the plan, then 5 removed and 3 added or changed so far
        next(slices)
    router, kernel = ctl.router, kernel_of(ctl)
    for i in (*range(15), 100):
        ports = router.routes.get(key(i))
        assert ports in (None, Ports("a", ("b",)), Ports("a", ("c",)))
        assert (key(i) in kernel.mfcs) == (key(i) in router.installed)
    # A route the reload changes (declared in the new files), or removes: refused.
    with pytest.raises(DeclaredInConfig, match=r"declared in f\.conf"):
        ctl.change([DelRoute(key(14))])
    with pytest.raises(DeclaredInConfig, match="reload under way"):
        ctl.change([DelRoute(key(0))])
    # Any other route: applied and journaled at once.
    other = Route(4, "198.18.0.200", "239.1.1.1", "a", ("b",), 253)
    ctl.change([AddRoute.of(other)])
    assert len(state_of(ctl).records) == 2  # the running() api route, then this one
    assert not ctl.compaction_due()
    list(slices)
    assert router.routes[other.key] == Ports("a", ("b",))
    assert router.routes[key(14)] == Ports("a", ("b",)) and not ctl.reloading


@pytest.mark.parametrize("failing", ["first", "middle", "last"])
def test_a_failing_kernel_step_puts_everything_back(failing: str) -> None:
    ctl = running()
    before = everything(ctl)
    records = list(state_of(ctl).records)
    new = next_config()
    kernel = kernel_of(ctl)
    slices = ctl.declared_slices(new, diff(ctl.declared, new), Outcome())
    steps = {"first": 2, "middle": 4, "last": 6}[failing]
    for _ in range(steps):
        next(slices)
    kernel.fail_at = kernel.calls + 2  # a step in the next slice
    with pytest.raises(KernelError):
        list(slices)
    assert everything(ctl) == before
    assert ctl.router.origins.get(key(100)) is None  # the api route is an api route again
    assert state_of(ctl).records == records  # nothing journaled
    assert not ctl.reloading


def test_a_failing_journal_record_puts_everything_back() -> None:
    ctl = running()
    before = everything(ctl)
    new = next_config()
    state_of(ctl).fail = True
    with pytest.raises(StateError):
        list(ctl.declared_slices(new, diff(ctl.declared, new), Outcome()))
    assert everything(ctl) == before


def test_a_client_change_between_slices_stays_when_the_reload_fails() -> None:
    ctl = running()
    new = next_config()
    slices = ctl.declared_slices(new, diff(ctl.declared, new), Outcome())
    for _ in range(3):  # the plan, then 4 removed
        next(slices)
    other = Route(4, "198.18.0.200", "239.1.1.1", "a", ("b",), 253)
    ctl.change([AddRoute.of(other)])
    kernel_of(ctl).fail_at = kernel_of(ctl).calls + 1
    with pytest.raises(KernelError):
        list(slices)
    assert ctl.router.routes[other.key] == Ports("a", ("b",))
    assert other.key in kernel_of(ctl).mfcs
    assert ctl.router.routes[key(0)] == Ports("a", ("b",))  # removed by slice 1, back


def test_one_route_changed_in_many_is_the_only_one_written() -> None:
    ctl = controller()
    ctl.apply_declared(config(1_000, '"b", "c"'), diff(Declarations(), config(1_000, '"b", "c"')))
    new = config(1_000, '"b", "c"')
    new.routes[key(500)] = Ports("a", ("b",))
    kernel = kernel_of(ctl)
    since = len(kernel.applied)
    outcome = Outcome()
    list(ctl.declared_slices(new, diff(ctl.declared, new), outcome))
    assert kernel.applied[since:] == [ctl.router.entry(key(500))]
    assert sum(outcome.counts.values()) == 1


def test_routes_stay_refused_to_the_api_until_a_failed_reload_has_put_them_back() -> None:
    """Between two slices of the put-back, an api change to a route the reload had removed
    would be overwritten by the put-back (the config route back): it is refused instead."""
    ctl = controller()
    ctl.apply_declared(config(6), diff(Declarations(), config(6)))
    new = config(6, first=20)  # removes 0..5, adds 20..25
    slices = ctl.declared_slices(new, diff(ctl.declared, new), Outcome())
    for _ in range(4):  # 0..3 removed, then 4, 5 and 20, 21
        next(slices)
    assert key(0) not in ctl.router.routes
    kernel = kernel_of(ctl)
    kernel.fail_at = kernel.calls + 1
    next(slices)  # the failing slice; the put-back's first slice
    assert key(0) in ctl.reloading
    with pytest.raises(DeclaredInConfig):
        ctl.change([AddRoute.of(Route(4, key(0)[1], "239.1.1.1", "a", ("c",), 253))])
    with pytest.raises(KernelError):
        list(slices)
    assert ctl.router.routes[key(0)] == Ports("a", ("b",))
    assert ctl.router.origin(key(0)) == "config"
    assert not ctl.reloading


TEMPLATE = '[[route]]\ngroup = "239.{}.0.0/16"\niif = "a"\noifs = ["{}"]\n'
WILD = '[[route]]\nsource = "198.18.9.9"\ngroup = "239.1.1.9"\niif = "a"\noifs = ["vlan*"]\n'


def test_interfaces_that_come_during_a_reload_are_followed_once_it_is_over() -> None:
    """A link event between two slices does not apply the new declarations outside the
    reload (a template the reload removes would be removed twice, and the reload fail):
    the wildcards are followed after it."""
    ctl = controller()
    old, problems = parse(TEMPLATE.format(2, "b") + TEMPLATE.format(3, "c"))
    assert problems == []
    ctl.apply_declared(old, diff(Declarations(), old))
    routes = "".join(
        f'[[route]]\nsource = "198.18.0.{i}"\ngroup = "239.1.1.1"\niif = "a"\noifs = ["b"]\n'
        for i in range(1, 11)
    )
    new, problems = parse(routes + TEMPLATE.format(2, "b") + WILD)
    assert problems == []
    slices = ctl.declared_slices(new, diff(ctl.declared, new), Outcome())
    for _ in range(3):
        next(slices)
    ctl.link_up("vlan2", 9)
    assert ctl.follow_wildcards() is None
    assert ctl.follow_due
    list(slices)  # the reload ends well: the 239.3/16 template removed once
    assert [k[2] for k in ctl.router.templates] == ["239.2.0.0/16"]
    ctl.follow_wildcards()  # what the daemon does once the reload is over
    assert ctl.router.routes[(4, "198.18.9.9", "239.1.1.9", 253)] == Ports("a", ("vlan1", "vlan2"))

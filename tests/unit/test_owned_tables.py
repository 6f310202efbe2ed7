"""Tests for intents in a table another multicast router owns (the kernel refuses MRT_INIT
with EADDRINUSE): kept pending with the kernel's reason, everything else applied, retried."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from mfcd import views
from mfcd.controller import Controller, Outcome, observe
from mfcd.dataplane import table_owned
from mfcd.declarations import diff
from mfcd.errors import KernelError
from mfcd.model import AddRoute, AddTemplate, KernelOp, Ports
from mfcd.state import Loaded
from tests.unit.conftest import FakeKernel, FakeState
from tests.unit.test_declarations import controller, parse
from tests.unit.test_declared_intents import kernel_of

OWNED = "another multicast router already owns IPv4 multicast routing table 100"
FILES = """
[[route]]
source = "198.18.0.2"
group = "239.1.1.1"
iif = "a"
oifs = ["b"]

[[route]]
group = "239.2.0.0/24"
iif = "a"
oifs = ["c"]

[[route]]
table = 100
source = "198.18.1.2"
group = "239.100.0.1"
iif = "a"
oifs = ["b"]

[[route]]
table = 100
group = "239.101.0.0/16"
iif = "a"
oifs = ["c"]

[[join]]
interface = "a"
group = "239.1.1.1"

[[interface]]
name = "c"
threshold = 4
"""
DEFAULT_ROUTE = (4, "198.18.0.2", "239.1.1.1", 253)
DEFAULT_TEMPLATE = (4, "*", "239.2.0.0/24", 253, "a")
OWNED_ROUTE = (4, "198.18.1.2", "239.100.0.1", 100)
OWNED_TEMPLATE = (4, "*", "239.101.0.0/16", 100, "a")


def owned_controller() -> Controller:
    ctl = controller()
    kernel_of(ctl).owned.add((4, 100))
    return ctl


def check_applied_but_table_100(ctl: Controller) -> None:
    router, kernel = ctl.router, kernel_of(ctl)
    assert router.status(DEFAULT_ROUTE).state == "installed"
    assert DEFAULT_ROUTE in kernel.mfcs
    assert router.status(DEFAULT_TEMPLATE).state == "installed"
    assert router.thresholds["c"] == 4
    assert ("a", "239.1.1.1", "*") in ctl.joins.wanted
    for key in (OWNED_ROUTE, OWNED_TEMPLATE):
        status = router.status(key)
        assert status.state == "pending"
        assert OWNED in status.reason and "mfcctl sync retries" in status.reason
        assert key in router.refused
    assert router.origin(OWNED_ROUTE) == "config"
    assert router.template_origin(OWNED_TEMPLATE) == "config"
    assert not any(key[3] == 100 for key in kernel.mfcs)
    assert router.unavailable == {}  # (only while intents are applied at once)


def check_installed_after_retry(ctl: Controller) -> None:
    router, kernel = ctl.router, kernel_of(ctl)
    assert router.status(OWNED_ROUTE).state == "installed"
    assert router.status(OWNED_TEMPLATE).state == "installed"
    assert OWNED_ROUTE in kernel.mfcs
    assert router.refused == {}


def test_a_start_applies_every_other_intent_and_keeps_the_owned_tables_pending() -> None:
    ctl = owned_controller()
    new, problems = parse(FILES)
    assert problems == []
    ctl.apply_declared(new, diff(ctl.declared, new))
    check_applied_but_table_100(ctl)
    assert ctl.declared is new  # applied: a reload of the same files changes nothing
    said = views.refused_text(ctl.router)  # (what a reload warns of)
    assert said.startswith("1 route and 1 template of the config files are pending: the")
    assert OWNED in said
    # The other router is gone: sync retries them.
    kernel_of(ctl).owned.clear()
    ctl.sync(observe(ctl.kernel, (4, 6)))
    check_installed_after_retry(ctl)


def test_a_sliced_reload_keeps_the_owned_tables_pending_and_a_retry_installs_them() -> None:
    ctl = owned_controller()
    new, _ = parse(FILES)
    outcome = Outcome()
    for _ in ctl.declared_slices(new, diff(ctl.declared, new), outcome):
        pass
    check_applied_but_table_100(ctl)
    # Still owned: a retry asks the kernel once more and keeps them pending.
    calls = kernel_of(ctl).calls
    ctl.retry_pending(list(ctl.router.refused))
    check_applied_but_table_100(ctl)
    assert kernel_of(ctl).calls == calls + 1  # the first refusal stands for its table
    kernel_of(ctl).owned.clear()
    ctl.retry_pending(list(ctl.router.refused))  # (what a reload does after applying)
    check_installed_after_retry(ctl)


def test_an_api_change_in_an_owned_table_is_still_refused_with_the_kernels_reason() -> None:
    ctl = owned_controller()
    new, _ = parse(FILES)
    ctl.apply_declared(new, diff(ctl.declared, new))
    key = (4, "198.18.1.2", "239.100.0.9", 100)
    with pytest.raises(KernelError, match=OWNED):
        ctl.change([AddRoute(key, Ports("a", ("b",)))])
    assert key not in ctl.router.routes


def test_a_template_refused_for_its_table_says_why_and_sync_or_the_same_add_retries() -> None:
    ctl = controller()
    kernel = kernel_of(ctl)
    kernel.owned.add((4, 100))
    template = (4, "*", "239.51.0.0/16", 100, "d")
    ctl.change([AddTemplate(template, Ports("d", ("b",)))])  # pending: d does not exist yet
    ctl.link_up("d", 9)  # the template's turn: the kernel refuses its table
    status = ctl.router.status(template)
    assert status.state == "pending" and OWNED in status.reason  # not "no free VIF"
    kernel.owned.clear()
    ctl.change([AddTemplate(template, Ports("d", ("b",)))])  # the same add retries
    assert ctl.router.status(template).state == "installed"
    assert (4, 100, 0) in kernel.vifs
    # Sync retries one too (a fresh table: this one is mfcd's now).
    other = (4, "*", "239.52.0.0/16", 200, "e")
    kernel.owned.add((4, 200))
    ctl.change([AddTemplate(other, Ports("e", ("b",)))])
    ctl.link_up("e", 10)
    assert "table 200" in ctl.router.status(other).reason
    ctl.sync(observe(ctl.kernel, (4, 6)))  # still owned: still pending, same reason
    assert "table 200" in ctl.router.status(other).reason
    kernel.owned.clear()
    ctl.sync(observe(ctl.kernel, (4, 6)))
    assert ctl.router.status(other).state == "installed"


def test_a_restore_keeps_the_owned_tables_routes_and_templates_pending_with_the_reason() -> None:
    """The saved routes and templates of a table another router owns at start: pending with
    the kernel's reason (a template no longer says "no free VIF"), the others installed;
    sync installs them once the table is free."""
    kernel = FakeKernel()
    kernel.owned.add((4, 100))
    ctl = Controller(kernel, FakeState())
    saved = Loaded(
        routes={
            DEFAULT_ROUTE: Ports("a", ("b",)),
            OWNED_ROUTE: Ports("a", ("b",)),
            (4, "198.18.1.2", "239.100.0.2", 100): Ports("a", ("c",)),
        },
        templates={OWNED_TEMPLATE: Ports("a", ("c",))},
    )
    ctl.restore(saved, {"a": 1, "b": 2, "c": 3})
    router = ctl.router
    assert router.status(DEFAULT_ROUTE).state == "installed"
    for key in (OWNED_ROUTE, OWNED_TEMPLATE):
        status = router.status(key)
        assert status.state == "pending" and OWNED in status.reason
    assert router.unavailable == {}
    kernel.owned.clear()
    ctl.sync(observe(ctl.kernel, (4, 6)))
    assert router.status(OWNED_TEMPLATE).state == "installed"
    assert router.status(OWNED_ROUTE).state == "installed"
    assert router.refused == {}


@pytest.mark.parametrize("sliced", [False, True])
def test_many_routes_of_an_owned_table_are_pending_and_the_others_go_in_as_runs(
    sliced: bool,
) -> None:
    """300 routes on one pair of interfaces in each table (runs, several reload slices): the
    default table's are installed, table 100's pending; after the owner is gone a retry
    installs them all."""
    ctl = owned_controller()
    text = "".join(
        f'[[route]]\ntable = {table}\nsource = "198.18.0.2"\ngroup = "239.{n}.0.{i}"\n'
        'iif = "a"\noifs = ["b"]\n'
        for n, table in ((7, 253), (8, 100))
        for i in range(1, 151)
    )
    new, problems = parse(text)
    assert problems == []
    if sliced:
        for _ in ctl.declared_slices(new, diff(ctl.declared, new), Outcome()):
            pass
    else:
        ctl.apply_declared(new, diff(ctl.declared, new))
    router, kernel = ctl.router, kernel_of(ctl)
    assert sum(1 for k in kernel.mfcs if k[3] == 253) == 150
    assert len(router.refused) == 150 and all(k[3] == 100 for k in router.refused)
    assert router.installed_count() == 150
    kernel.owned.clear()
    ctl.retry_refused()
    assert router.installed_count() == 300 and router.refused == {}
    assert sum(1 for k in kernel.mfcs if k[3] == 100) == 150


WILD = """
[[route]]
source = "198.18.0.2"
group = "239.1.1.1"
iif = "a"
oifs = ["b", "v+"]

[[route]]
table = 100
source = "198.18.1.2"
group = "239.100.0.1"
iif = "a"
oifs = ["b", "v+"]
"""


def test_wildcards_follow_interfaces_in_every_other_table_while_one_is_owned() -> None:
    """An interface that a config wildcard matches appears: the routes of the tables mfcd
    has follow it, the owned table's stays pending (before, the follow's kernel refusal in
    the owned table rolled back every table's, at each interface event)."""
    ctl = owned_controller()
    new, problems = parse(WILD)
    assert problems == []
    ctl.apply_declared(new, diff(ctl.declared, new))
    ctl.link_up("v1", 41)
    ctl.follow_wildcards()
    router, kernel = ctl.router, kernel_of(ctl)
    assert "v1" in router.routes[DEFAULT_ROUTE].oifs
    assert router.status(DEFAULT_ROUTE).state == "installed"
    assert len(kernel.mfcs[DEFAULT_ROUTE].ttls) == len(router.routes[DEFAULT_ROUTE].oifs)
    status = router.status(OWNED_ROUTE)
    assert status.state == "pending" and OWNED in status.reason
    assert router.unavailable == {}


def count_owned_refusals(kernel: FakeKernel) -> list[int]:
    """How many applies the kernel refused because another router owns a table (a one-item
    list, counted from now on)."""
    refusals = [0]
    apply = kernel.apply

    def counting(ops: Sequence[KernelOp]) -> None:
        try:
            apply(ops)
        except KernelError as e:
            refusals[0] += table_owned(e) is not None
            raise

    kernel.apply = counting  # type: ignore[method-assign]
    return refusals


def test_interface_events_cost_no_refused_transaction_in_a_table_known_to_be_owned() -> None:
    """Once the data plane has found table 100 owned, an interface event that the config's
    wildcards follow keeps its routes pending without asking the kernel (before, each event
    failed a transaction on it and replayed the whole change)."""
    ctl = owned_controller()
    new, _ = parse(WILD)
    ctl.apply_declared(new, diff(ctl.declared, new))
    kernel = kernel_of(ctl)
    assert set(kernel.owned_tables()) == {(4, 100)}
    refusals = count_owned_refusals(kernel)
    for n in range(1, 4):
        ctl.link_up(f"v{n}", 40 + n)
        ctl.follow_wildcards()
    assert refusals == [0]
    assert ctl.router.status(DEFAULT_ROUTE).state == "installed"
    status = ctl.router.status(OWNED_ROUTE)
    assert status.state == "pending" and OWNED in status.reason
    assert ctl.router.unavailable == {}


def test_a_reload_into_a_table_known_to_be_owned_asks_the_kernel_only_in_the_retry() -> None:
    """A reload adds a route to table 100, already found owned: kept pending without a
    refused transaction; the retry that follows a reload asks the kernel once more, and
    the record is cleared once the other router is gone."""
    ctl = owned_controller()
    new, _ = parse(FILES)
    ctl.apply_declared(new, diff(ctl.declared, new))
    kernel = kernel_of(ctl)
    refusals = count_owned_refusals(kernel)
    more = FILES + (
        '[[route]]\ntable = 100\nsource = "198.18.1.2"\ngroup = "239.100.0.2"\n'
        'iif = "a"\noifs = ["b"]\n'
    )
    newer, _ = parse(more)
    for _ in ctl.declared_slices(newer, diff(ctl.declared, newer), Outcome()):
        pass
    added = (4, "198.18.1.2", "239.100.0.2", 100)
    assert refusals == [0]
    assert OWNED in ctl.router.status(added).reason
    ctl.retry_refused()  # (what a reload does after applying)
    assert refusals == [1]
    assert set(kernel.owned_tables()) == {(4, 100)}
    kernel.owned.clear()  # the other router is gone
    ctl.retry_refused()
    assert kernel.owned_tables() == {}
    assert ctl.router.status(added).state == "installed"
    check_installed_after_retry(ctl)


def test_the_data_plane_keeps_the_record_and_sync_clears_it() -> None:
    ctl = owned_controller()
    new, _ = parse(FILES)
    ctl.apply_declared(new, diff(ctl.declared, new))
    kernel = kernel_of(ctl)
    record = kernel.owned_tables()
    assert set(record) == {(4, 100)} and OWNED in str(record[(4, 100)])
    assert ctl.router.unavailable == {}  # (the model's copy lives for one batch)
    ctl.sync(observe(ctl.kernel, (4, 6)))  # still owned: still recorded
    assert set(kernel.owned_tables()) == {(4, 100)}
    kernel.owned.clear()
    ctl.sync(observe(ctl.kernel, (4, 6)))
    assert kernel.owned_tables() == {}
    check_installed_after_retry(ctl)


def owned_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    """The levels and messages of what was logged about table 100 (then forgotten)."""
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "table 100" in r.getMessage()]
    caplog.clear()
    return said


def test_an_owned_table_is_warned_of_once_and_its_release_is_an_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The WARNING when the table is found owned, nothing louder than a DEBUG at each
    interface event while it stays owned (a flapping link), or at a sync that finds it
    still owned, and an INFO when a sync finds it free."""
    caplog.set_level(logging.DEBUG, logger="mfcd")
    ctl = owned_controller()
    new, _ = parse(WILD)
    ctl.apply_declared(new, diff(ctl.declared, new))
    said = owned_logs(caplog)
    assert [level for level, _ in said] == [logging.WARNING]
    assert OWNED in said[0][1] and "1 route and 0 templates there stay pending" in said[0][1]
    for n in range(1, 6):
        ctl.link_up(f"v{n}", 40 + n)
        ctl.follow_wildcards()
        said = owned_logs(caplog)
        assert all(level == logging.DEBUG for level, _ in said) and len(said) <= 1
    ctl.sync(observe(ctl.kernel, (4, 6)))  # still owned
    assert all(level == logging.DEBUG for level, _ in owned_logs(caplog))
    kernel_of(ctl).owned.clear()
    ctl.sync(observe(ctl.kernel, (4, 6)))
    said = owned_logs(caplog)
    assert [level for level, _ in said] == [logging.INFO], said
    assert "no other multicast router owns it any more" in said[0][1]
    assert ctl.router.status(OWNED_ROUTE).state == "installed"
    ctl.link_up("v9", 49)
    ctl.follow_wildcards()
    assert owned_logs(caplog) == []


def test_a_client_change_that_finds_an_owned_table_free_tells_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="mfcd")
    ctl = owned_controller()
    new, _ = parse(FILES)
    ctl.apply_declared(new, diff(ctl.declared, new))
    assert [level for level, _ in owned_logs(caplog)] == [logging.WARNING]
    assert OWNED_ROUTE in ctl.router.refused and OWNED_TEMPLATE in ctl.router.refused
    kernel_of(ctl).owned.clear()
    ctl.change([AddRoute((4, "198.18.1.2", "239.100.0.9", 100), Ports("a", ("b",)))])
    ctl.tell_owned()  # (the daemon's after every change)
    assert [level for level, _ in owned_logs(caplog)] == [logging.INFO]
    # The table's other intents went in with it, not at the next sync or reload.
    assert not ctl.router.refused and OWNED_ROUTE in ctl.router.installed
    ctl.tell_owned()
    assert owned_logs(caplog) == []


def test_a_retry_asks_an_owned_table_once_and_leaves_its_other_intents_as_they_are(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctl = owned_controller()
    more = "".join(
        f'[[route]]\ntable = 100\nsource = "198.18.1.2"\ngroup = "239.100.1.{i}"\n'
        'iif = "a"\noifs = ["b"]\n\n'
        for i in range(50)
    )
    new, _ = parse(FILES + more)
    ctl.apply_declared(new, diff(ctl.declared, new))
    assert len([k for k in ctl.router.refused if k[3] == 100]) == 52
    asked: list[object] = []
    install = ctl._install_or_park

    def counted(key: object, what: str) -> list[object]:
        asked.append(key)
        return install(key, what)  # type: ignore[arg-type, return-value]

    monkeypatch.setattr(ctl, "_install_or_park", counted)
    ctl.retry_refused()
    assert len(asked) == 1  # the first asks the kernel; the other 51 need no transaction
    assert len([k for k in ctl.router.refused if k[3] == 100]) == 52
    kernel_of(ctl).owned.clear()  # the other router is gone: a retry installs them all
    ctl.retry_refused()
    assert not ctl.router.refused

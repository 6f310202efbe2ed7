"""A single `mfc add`/`mfc del` request's own lane (Commands._one_route, its response formatted
by views.route_response) and the model's cache of VIFs and entries kept across transactions
(Router._direct) are the general path in fewer steps: over random sequences of request lines
(ids of every kind, IPv4 and IPv6, other tables, bad arguments, templates, dry runs),
thresholds set (also written into the model directly, as start-up does), interfaces going
and coming back with another ifindex, kernel refusals and failed syncs, three daemons give
the same response bytes, model, kernel entries and operations, journal and log lines: one
with the lane and the kept cache, one with neither (the general path: mfc_add or mfc_del,
change_result, encode_response, the cache cleared at every transaction's start), and one
without the one-route transaction either."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd import protocol, views
from mfcd.commands import Peer
from mfcd.model import AddMfc, AddVif, DelMfc, Router, Step
from tests.unit import test_one_route as one_route

# test_one_route's interfaces: "d" comes and goes (here with another ifindex too); no "e".

V4 = (["10.0.0.1", "10.0.0.2"], ["239.1.1.1", "239.1.1.2", "239.1.1.3"])
V6 = (["2001:db8::1", "2001:DB8:0::2"], ["ff3e::1", "FF3E:0::2"])
ODD_SOURCES = ["127.0.0.1", "10.0.0.1/32", "x", 5, "*", None]
ODD_GROUPS = ["224.0.0.5", "239.1.1.0/24", "*", "ff3e::1", []]
good_names = st.sampled_from(["a", "b", "c", "d", "d", "e"])  # "e" never exists
good_tables = st.sampled_from([None, None, None, 100, "100"])
ODD_TABLES = [253, 254, "default", "main", -1, "x", 2**32]
good_ids = st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.text(max_size=8))
ODD_IDS = [None, True, 1.5, [1], 'é"\\\n\u2028', "\ud800"]


def _odd(draw: st.DrawFn, good: Any, odd: list[Any]) -> Any:
    """Mostly a value drawn from `good`, now and then one of `odd`."""
    return draw(st.sampled_from(odd)) if draw(st.integers(0, 9)) == 9 else draw(good)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """A request line for mfc.add or mfc.del, mostly well formed."""
    cmd = draw(st.sampled_from(["mfc.add", "mfc.del"]))
    family_sources, family_groups = draw(st.sampled_from([V4, V4, V4, V6]))
    args: dict[str, Any] = {
        "source": _odd(draw, st.sampled_from(family_sources), ODD_SOURCES),
        "group": _odd(draw, st.sampled_from(family_groups), ODD_GROUPS),
    }
    if cmd == "mfc.add":
        args["iif"] = _odd(draw, good_names, ["-x", "a*", "", 3])
        oifs = draw(st.lists(good_names, min_size=1, max_size=3, unique=True))
        args["oifs"] = _odd(draw, st.just(oifs), [[], ["a*"], ["b", "b"], "b", [3]])
    table = _odd(draw, good_tables, ODD_TABLES)
    if table is not None:
        args["table"] = table
    odd = draw(
        st.sampled_from(["" for _ in range(12)] + ["extra", "missing", "dry", "not_dry", "no_id"])
    )
    if odd == "extra":
        args["ttl"] = 3
    elif odd == "missing":
        del args["group"]
    msg: dict[str, Any] = {"v": 1, "id": _odd(draw, good_ids, ODD_IDS), "cmd": cmd, "args": args}
    if odd == "dry":
        msg["dry_run"] = True
    elif odd == "not_dry":
        msg["dry_run"] = False
    elif odd == "no_id":
        del msg["id"]
    return json.dumps(msg).encode() + b"\n"


steps = st.one_of(
    st.tuples(st.just("line"), lines()),
    st.tuples(st.just("line"), lines()),
    st.tuples(st.just("line"), lines()),
    st.tuples(st.just("ttl"), st.sampled_from(["a", "b", "c", "d"]), st.sampled_from([1, 5])),
    st.tuples(st.just("set_threshold"), st.sampled_from(["b", "c"]), st.sampled_from([1, 9])),
    st.tuples(st.just("flush")),
    st.tuples(st.just("fail_sync")),
    st.tuples(st.just("fail_kernel")),
    st.tuples(st.just("link"), st.sampled_from([None, 4, 14])),
)


class Daemon(one_route.Daemon):
    """test_one_route's daemon (`one`: with the one-route transaction) and, with `lane`,
    Commands._one_route and the model's cache kept across transactions; else the general
    path (mfc_add or mfc_del, encode_response, the cache forgotten at each begin)."""

    def __init__(self, lane: bool, one: bool = True) -> None:
        super().__init__(one)
        self.lane = 0  # requests the lane answered with a response of its own format
        self.logged: list[str] = []
        commands, router = self.commands, self.controller.router
        if lane:
            real = views.route_response

            def counted(*args: Any) -> bytes | None:
                response = real(*args)
                self.lane += response is not None
                return response

            self.route_response = counted
        else:

            def general(request_id: Any, cmd: str, args: dict[str, Any], peer: Peer) -> bytes:
                result = commands.table[cmd](args, False, peer)
                response = protocol.encode_response(request_id, result)
                assert isinstance(response, bytes)
                return response

            commands._one_route = general  # type: ignore[method-assign]
            begin = router.begin

            def forgetting(undo: bool = True) -> None:  # (the cache as it was: per transaction)
                begin(undo)
                router._forget_direct()

            router.begin = forgetting  # type: ignore[method-assign]
        # Routes that hold a VIF on every interface, in both families (most adds then write
        # an entry alone); one of them on "d", which comes and goes.
        self.step(_add(0, "239.9.9.9", ("b", "c", "d")), 0)
        self.step(
            _line(
                1, "mfc.add", source="2001:db8::9", group="ff3e::9", iif="a", oifs=["b", "c", "d"]
            ),
            1,
        )
        self.flush()

    def step(self, step: tuple[Any, ...], n: int) -> None:  # type: ignore[override]
        kind = step[0]
        if kind == "line":
            self.submit(step[1])
        elif kind == "set_threshold":  # written directly, as start-up does (no _set)
            self.flush()
            self.controller.router.thresholds[step[1]] = step[2]
        elif kind == "link":  # (None: down, else up with that ifindex)
            self.flush()
            if step[1] is None:
                self.controller.link_down("d")
            else:
                self.controller.link_up("d", step[1])
        else:
            super().step(n, step)

    def seen(self) -> dict[str, Any]:
        return {**super().seen(), "logged": self.logged}


def _line(n: int, cmd: str, **args: Any) -> tuple[str, bytes]:
    """The step that sends a request line."""
    return ("line", json.dumps({"v": 1, "id": n, "cmd": cmd, "args": args}).encode() + b"\n")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = _SECONDS.sub("in N s", record.getMessage())  # (how long it took: not compared)
        self.lines.append(f"{record.levelname} {message}")


_SECONDS = re.compile(r"in \d+\.\d+ s")


def _run(daemons: list[Daemon], sequence: list[tuple[Any, ...]]) -> None:
    handler = _Lines()
    logger = logging.getLogger("mfcd")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        for n, step in enumerate([*sequence, ("flush",)]):
            for daemon in daemons:
                daemon.step(step, n)
                daemon.logged += handler.lines
                handler.lines = []
            first = daemons[0].seen()
            for daemon in daemons[1:]:
                assert daemon.seen() == first, step
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=40))
def test_the_lane_is_the_general_path(sequence: list[tuple[Any, ...]]) -> None:
    _run([Daemon(lane=False), Daemon(lane=True), Daemon(lane=False, one=False)], sequence)


def test_the_lane_formats_single_adds_and_deletes_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a test that passes without it: adds of routes installed, replaced and the same
    again, and deletes, are answered by the lane's own format (VIF steps and a route left
    pending are not); the bytes are the general path's."""
    lane, general = Daemon(lane=True), Daemon(lane=False)
    for daemon in (lane, general):  # the VIFs' own routes gone: the first add takes VIFs again
        daemon.step(_line(0, "mfc.del", source="10.0.0.1", group="239.9.9.9"), 0)
        daemon.step(_line(1, "mfc.del", source="2001:db8::9", group="ff3e::9"), 1)
        daemon.flush()
    monkeypatch.setattr(views, "route_response", lane.route_response)
    sequence = [
        _line(1, "mfc.add", source="10.0.0.1", group="239.1.1.1", iif="a", oifs=["b"]),  # VIFs
        _line(2, "mfc.add", source="10.0.0.1", group="239.1.1.2", iif="a", oifs=["b"]),
        _line(3, "mfc.add", source="10.0.0.1", group="239.1.1.2", iif="a", oifs=["b"]),  # again
        _line(4, "mfc.add", source="10.0.0.1", group="239.1.1.2", iif="b", oifs=["a"]),  # replaced
        _line(5, "mfc.add", source="10.0.0.1", group="239.1.1.3", iif="a", oifs=["e"]),  # pending
        _line(6, "mfc.del", source="10.0.0.1", group="239.1.1.2"),
        ("flush",),
    ]
    _run([general, lane], sequence)
    assert lane.lane == 4
    assert b'"add_vif"' in lane.responses[-6]  # (the first add: VIFs again)
    assert general.lane == 0


def test_route_response_is_encode_response_of_change_result() -> None:
    """The format itself, for each kind of id and of MFC step, against the general encoding."""
    add = AddMfc(4, "10.0.0.1", "239.1.1.1", 0, ((1, 1), (3, 5)), 253)
    delete = DelMfc(6, "2001:db8::1", "ff3e::1", 100)
    elsewhere = AddMfc(6, "2001:db8::1", "ff3e::1", 1, ((0, 1), (2, 1)), 100)
    router = Router()  # (VIF 2 of table 253 is no one's, nor table 100's VIF 2: named "?")
    router.slots[(4, 253)] = ["a", "b", None, "c", *[None] * 28]
    router.slots[(6, 100)] = ["x.100", "y@1", *[None] * 30]
    cases: list[tuple[list[Step], dict[str, int], bool]] = [
        ([Step(add, delete, "add_mfc")], {"add_mfc": 1}, True),
        ([Step(add, add, "replace_mfc")], {"replace_mfc": 1}, True),
        ([Step(delete, add, "del_mfc")], {"del_mfc": 1}, False),
        ([], {}, True),
        ([Step(add._replace(oifs=()), delete, "add_mfc")], {"add_mfc": 1}, False),
        ([Step(add._replace(oifs=((2, 1),)), delete, "add_mfc")], {"add_mfc": 1}, True),
        ([Step(elsewhere, delete, "add_mfc")], {"add_mfc": 1}, True),
    ]
    for request_id in (None, 0, -5, 2**80, "", 'a"b\\c\n\x00é\u2028\U0001f600', "\udfff"):
        for steps, counts, installed in cases:
            counter = Counter(counts)
            result = views.change_result(
                router,
                changes=1,
                counts=counter,
                steps=steps,
                dry_run=False,
            )
            if installed:
                result["state"] = "installed"
            expected = protocol.encode_response(request_id, result)
            response = views.route_response(request_id, counter, steps, installed, router.slots)
            assert response == expected
    named = json.loads(views.route_response(1, Counter(), cases[0][0], True, router.slots) or "")
    assert named["result"]["plan"][0]["oif_names"] == ["b", "c"]
    vif = AddVif(4, 0, "a", 1, 1, 253)
    steps = [Step(vif, vif, "add_vif")]
    assert views.route_response(1, Counter({"add_vif": 1}), steps, True, router.slots) is None


def _add(n: int, group: str, oifs: tuple[str, ...] = ("b",)) -> tuple[str, bytes]:
    return _line(n, "mfc.add", source="10.0.0.1", group=group, iif="a", oifs=list(oifs))


def test_the_kept_cache_sees_every_change_of_a_vif_or_threshold() -> None:
    """The model's cache of a Ports' VIFs and entry, kept across transactions, is dropped by
    each change that could make it wrong: a threshold set (also written directly into the
    model, as start-up does), an interface gone, back with another ifindex, a kernel refusal
    rolled back: the entries written after each are those of the general path."""
    sequence: list[tuple[Any, ...]] = [_add(1, "239.2.0.1"), ("flush",)]
    changes: list[tuple[Any, ...]] = [
        ("set_threshold", "b", 9),
        ("set_threshold", "b", 1),
        ("ttl", "b", 5),
        ("link", None),
        ("link", 14),
        ("link", None),
        ("link", 4),
        ("fail_kernel",),
    ]
    for n, change in enumerate(changes):
        oifs = ("b", "d") if change[0] == "link" else ("b",)
        sequence += [
            _add(10 * n + 2, f"239.2.{n}.2", oifs=oifs),
            change,
            _add(10 * n + 3, f"239.2.{n}.3", oifs=oifs),
            _add(10 * n + 4, f"239.2.{n}.4", oifs=oifs),
            ("flush",),
        ]
    lane = Daemon(lane=True)
    _run([Daemon(lane=False), lane], sequence)
    written = [op for op in lane.kernel.applied if op.__class__ is AddMfc]
    assert AddMfc(4, "10.0.0.1", "239.2.0.3", 0, ((1, 9),), 253) in written

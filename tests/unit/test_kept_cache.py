"""Tests for the model's cache of VIFs and entries kept across transactions (Router._direct)
and the dict that counts its changes (model._Counting): a rollback that puts back no VIF,
threshold or Vif field (a dry run, the same route again) keeps the cache, and a router
that keeps it plans every change as one whose cache is cold."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mfcd.errors import MfcdError
from mfcd.model import DEFAULT_TABLE, Ports, RouteKey, Router, Step, _Counting

NAMES = ("a", "b", "c", "d")
PORTS = (("a", ("b",)), ("a", ("b", "c")), ("b", ("a", "c")), ("a", ("d",)), ("d", ("b",)))


def key(i: int, family: int = 4) -> RouteKey:
    if family == 6:
        return (6, f"2001:db8::{i + 1}", "ff3e::1", DEFAULT_TABLE[6])
    return (4, f"198.18.0.{i + 1}", "239.1.1.1", DEFAULT_TABLE[4])


def router(cold: bool = False) -> Router:
    """A router with NAMES up; `cold`: its cache forgotten at each transaction's start."""
    r = Router()
    if cold:
        begin = r.begin

        def forgetting(undo: bool = True) -> None:
            begin(undo)
            r._forget_direct()

        r.begin = forgetting  # type: ignore[method-assign]
    r.begin()
    for ifindex, name in enumerate(NAMES, 1):
        r.link_up(name, ifindex)
    r.commit()
    return r


def test_a_rollback_of_no_vif_or_threshold_keeps_the_cache() -> None:
    """A dry run and the same route again roll back without touching a VIF: the cache
    stays (it was cleared at every rollback). A rollback that puts a VIF's ifindex back
    clears it, even when the transaction filled it again since."""
    r = router()
    ports = r.ports("a", ("b", "c"))
    r.begin()
    r.add(key(0), ports)  # (takes the VIFs)
    r.commit()
    steps: list[Step] = []
    r.begin()
    assert r.add_direct(key(1), ports, steps)
    r.commit()
    kept = r._direct[(4, DEFAULT_TABLE[4])][ports]
    r.begin()
    assert r.add(key(2), ports)  # a dry run of a new route
    r.rollback()
    assert r._direct[(4, DEFAULT_TABLE[4])][ports] is kept
    r.begin()
    assert r.add(key(0), ports) == []  # the same route again
    r.rollback()
    assert r._direct[(4, DEFAULT_TABLE[4])][ports] is kept
    on_d = r.ports("d", ("a",))  # ("d" the iif: a route cannot be added while it is down)
    r.begin()
    r.add(key(3), on_d)  # (a VIF on "d")
    r.commit()
    r.begin()
    r.link_down("d")
    r.commit()
    r.begin()
    r.link_up("d", 99)  # (the VIF's ifindex written)
    assert r.add_direct(key(4), on_d, steps)  # (the cache filled again: "d" is up)
    r.rollback()
    assert not r._direct  # ("d" is down again: a route from it cannot be added directly)
    r.begin()
    assert not r.add_direct(key(4), on_d, steps)
    r.rollback()


def snapshot(r: Router) -> dict[str, Any]:
    return {
        "routes": dict(r.routes),
        "installed": dict(r.installed),
        "vifs": {k: (v.vifi, v.ifindex, v.refs) for k, v in r.vifs.items()},
        "slots": {k: list(v) for k, v in r.slots.items()},
        "thresholds": dict(r.thresholds),
        "links": dict(r.links),
        "waiting": {k: set(v) for k, v in r.waiting.items()},
    }


changes = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5), st.sampled_from((4, 6)), st.sampled_from(PORTS)),
    st.tuples(st.just("del"), st.integers(0, 5), st.sampled_from((4, 6))),
    st.tuples(st.just("threshold"), st.sampled_from(NAMES), st.integers(1, 3)),
    st.tuples(st.just("down"), st.sampled_from(NAMES)),
    st.tuples(st.just("up"), st.sampled_from(NAMES), st.integers(1, 6)),
)


def apply(r: Router, batch: list[tuple[Any, ...]], keep: bool) -> list[Any]:
    """Changes in one transaction, committed (`keep`) or rolled back (a dry run, a
    refusal, an error): their steps, and the error that rolled them back if any."""
    r.begin()
    done: list[Any] = []
    for change in batch:
        kind = change[0]
        try:
            if kind == "add":
                done.append(r.add(key(change[1], change[2]), r.share(Ports(*change[3]))))
            elif kind == "del":
                done.append(r.del_route(key(change[1], change[2])))
            elif kind == "threshold":
                done.append(r.set_threshold(change[1], change[2]))
            elif kind == "down":
                done.append(r.link_down(change[1]))
            else:
                done.append(r.link_up(change[1], change[2]))
        except MfcdError as e:
            r.rollback()
            return [*done, str(e)]
    if keep:
        r.commit()
    else:
        r.rollback()
    return done


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(changes, min_size=1, max_size=3), st.booleans()), max_size=30))
@example(  # a VIF's interface back in a transaction that fills the cache, then rolled back
    [
        ([("add", 0, 4, ("a", ("d",)))], True),
        ([("down", "d")], True),
        ([("up", "d", 5), ("add", 1, 4, ("a", ("d",)))], False),
        ([("add", 1, 4, ("a", ("d",)))], True),
    ]
)
def test_a_kept_cache_plans_as_a_cold_one(
    sequence: list[tuple[list[tuple[Any, ...]], bool]],
) -> None:
    """Over random transactions of changes (routes, thresholds, interfaces going and
    coming back with another ifindex), each committed or rolled back, a router that keeps
    its cache across transactions gives the same steps, errors and model as one whose
    cache is cold."""
    kept, cold = router(), router(cold=True)
    for batch, keep in sequence:
        assert apply(kept, batch, keep) == apply(cold, batch, keep), batch
        assert snapshot(kept) == snapshot(cold)


MUTATORS = ("__setitem__", "__delitem__", "pop", "popitem", "setdefault", "update", "clear",
            "__ior__")  # fmt: skip

calls = st.one_of(
    st.tuples(st.just("__setitem__"), st.integers(0, 4), st.integers(0, 2)),
    st.tuples(st.just("__delitem__"), st.integers(0, 4)),
    st.tuples(st.just("pop"), st.integers(0, 4), st.integers(0, 2)),
    st.tuples(st.just("popitem")),
    st.tuples(st.just("setdefault"), st.integers(0, 4), st.integers(0, 2)),
    st.tuples(st.just("update"), st.dictionaries(st.integers(0, 4), st.integers(0, 2))),
    st.tuples(st.just("clear")),
    st.tuples(st.just("__ior__"), st.dictionaries(st.integers(0, 4), st.integers(0, 2))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(calls, max_size=30))
def test_counting_counts_every_change_and_a_setdefault_that_reads(
    sequence: list[tuple[Any, ...]],
) -> None:
    """_Counting is a dict whose count moves at every call that changes it (the cache
    holds only while it stands still), and not at a setdefault of a key it holds (which
    only reads it: it was counted as a change)."""
    counting: _Counting[int, int] = _Counting()
    plain: dict[int, int] = {}
    for name, *args in sequence:
        before, count = dict(plain), counting.changes
        results = []
        for d in (counting, plain):
            try:
                results.append(getattr(d, name)(*args))
            except KeyError as e:
                results.append(repr(e))
        assert results[0] == results[1] or name == "__ior__"
        assert dict(counting) == plain
        if plain != before:
            assert counting.changes > count
        if name == "setdefault" and args[0] in before:
            assert counting.changes == count
    assert all(name in _Counting.__dict__ for name in MUTATORS)  # (no dict method uncounted)

"""The pieces of a change's log line made faster are what they were: `_summary` of the usual
mfc.add and mfc.del against the general loop, and a Peer's text made once."""

from __future__ import annotations

import random
from typing import Any

from mfcd.commands import Peer, _summary, _summary_of_any


class _Sub(list[Any]):
    """A list that is not `list` itself (the fast format must leave it to the loop)."""


class _Text(str):
    """A string that is not `str` itself."""

    def __format__(self, spec: str) -> str:
        return "formatted:" + str.__format__(self, spec)


def _value(rng: random.Random) -> Any:
    kind = rng.randrange(12)
    if kind < 5:
        return rng.choice(["10.0.0.1", "239.1.2.3", "ff3e::1", "eth0", "", "a b", "é", "*"])
    if kind == 5:
        return [rng.choice(["b", "c", "eth1", ""]) for _ in range(rng.randrange(4))]
    if kind == 6:
        return _Sub(["x", "y"])
    if kind == 7:
        return _Text("t")
    return rng.choice([None, 0, 7, -1, True, 2.5, {"k": "v"}, ("p", "q")])


def _args(rng: random.Random) -> dict[str, Any]:
    """Arguments near the usual shapes: the usual fields (in order, in another order, one
    missing or one more) with usual values, or any value."""
    fields = rng.choice(
        [
            ["source", "group", "iif", "oifs"],
            ["source", "group"],
            ["group", "source", "iif", "oifs"],
            ["source", "group", "oifs", "iif"],
            ["group", "source"],
            ["source", "group", "iif", "oifs", "table"],
            ["source", "group", "table"],
            ["source", "iif", "oifs", "table"],
            ["source"],
            [],
        ]
    )
    args: dict[str, Any] = {}
    for name in fields:
        if rng.random() < 0.7:
            usual: Any = ["b", "c"][: rng.randrange(1, 3)] if name == "oifs" else "a"
            if name in ("source", "group"):
                usual = rng.choice(["10.0.0.1", "239.1.2.3", "2001:db8::1", "ff3e::5"])
            args[name] = usual
        else:
            args[name] = _value(rng)
    return args


def test_the_usual_summaries_are_the_general_loops() -> None:
    rng = random.Random(12)
    fast = 0
    for _ in range(20_000):
        args = _args(rng)
        try:
            expected: Any = _summary_of_any(args)
        except TypeError as e:  # (a list of something else than strings)
            expected = type(e)
        try:
            got: Any = _summary(args)
        except TypeError as e:
            got = type(e)
        assert got == expected, args
        fast += tuple(args) in (("source", "group", "iif", "oifs"), ("source", "group"))
    assert fast > 3_000  # (the fast shapes were tried, often)


def test_the_fast_summaries_of_mfc_add_and_del() -> None:
    add = {"source": "10.0.0.1", "group": "239.1.2.3", "iif": "a", "oifs": ["b", "c"]}
    assert _summary(add) == "source=10.0.0.1 group=239.1.2.3 iif=a oifs=b,c"
    assert _summary({"source": "::", "group": "ff3e::1"}) == "source=:: group=ff3e::1"
    sub = {**add, "oifs": _Sub(["b"])}
    assert _summary(sub) == _summary_of_any(sub) == "source=10.0.0.1 group=239.1.2.3 iif=a oifs=b"
    text = {**add, "iif": _Text("a")}
    assert _summary(text) == _summary_of_any(text)
    assert "iif=formatted:a" in _summary(text)


def test_a_peers_text_is_made_once_and_changes_nothing_else() -> None:
    peer = Peer(1234, 0, 5)
    assert str(peer) == f"{peer}" == peer.text == "uid=0 pid=1234"
    assert repr(peer) == "Peer(pid=1234, uid=0, gid=5)"
    assert peer == Peer(1234, 0, 5) and hash(peer) == hash(Peer(1234, 0, 5))
    assert peer != Peer(1234, 0, 6)

"""Tests for mfcd.address_sharing: routes that share a source or a group share its string,
whether they come from a batch line, a request or the state file, within a bounded cache."""

from __future__ import annotations

import contextlib
from pathlib import Path

from mfcd import address_sharing, batchfile, validate
from mfcd.commands import Commands, Peer
from mfcd.controller import Controller
from mfcd.model import AddRoute, Route
from mfcd.state import StateFile

from .conftest import FakeKernel, FakeState


def fresh(text: str) -> str:
    """An equal string that is a new object (literals and short joins may be shared)."""
    copy = "".join(list(text))
    assert copy == text
    return copy


def test_keys_of_one_source_share_its_string_and_keep_their_value() -> None:
    source = "198.18.7.9"
    a = validate.route_key_of(fresh(source), fresh("239.8.0.1"))
    b = validate.route_key_of(fresh(source), fresh("239.8.0.2"))
    assert a[1] is b[1]
    assert (a, b) == ((4, source, "239.8.0.1", 253), (4, source, "239.8.0.2", 253))


def test_groups_are_shared_too_and_ipv6_by_its_canonical_text() -> None:
    a = validate.route_key_of(fresh("2001:db8::7"), fresh("ff3e::1:2"))
    b = validate.route_key_of(fresh("2001:DB8:0::7"), fresh("ff3e:0::1:2"))
    assert a == b == (6, "2001:db8::7", "ff3e::1:2", 254)
    assert a[1] is b[1] and a[2] is b[2]


def test_a_batch_text_of_one_source_holds_it_once() -> None:
    text = "".join(
        f"mfc add --source 198.18.1.1 --group 239.9.{n >> 8}.{n & 255} --iif a0 --oifs a1\n"
        for n in range(3000)
    )
    keys = [validate.add_change(s, g, i, o, t).key for _, _, s, g, i, o, t in batchfile.lines(text)]
    assert len({id(key[1]) for key in keys}) == 1
    assert len({id(key[2]) for key in keys}) == 3000


def test_the_daemon_batch_path_shares_the_source_in_the_model() -> None:
    ctl = Controller(FakeKernel(), FakeState())
    text = "".join(
        f"mfc add --source 198.18.2.2 --group 239.10.0.{n} --iif eth0 --oifs eth1\n"
        for n in range(1, 200)
    )
    Commands(ctl, (4, 6)).batch({"text": text}, False, Peer(1, 0, 0))
    assert len(ctl.router.routes) == 199
    assert len({id(key[1]) for key in ctl.router.routes}) == 1


def test_routes_loaded_from_the_state_file_share_their_source(tmp_path: Path) -> None:
    path = str(tmp_path / "state.journal")
    sf = StateFile(path)
    sf.load()
    routes = [Route(4, "198.18.3.3", f"239.11.0.{n}", "eth0", ("eth1",), 253) for n in range(1, 50)]
    sf.write_snapshot(routes[:20], {})
    sf.append([AddRoute.of(r) for r in routes[20:]])
    sf.close()
    loaded = StateFile(path).load()
    assert set(loaded.routes) == {r.key for r in routes}
    # The snapshot's records and the journal's ops went through the same parser.
    assert len({id(key[1]) for key in loaded.routes}) == 1


def test_the_cache_is_bounded_and_a_string_not_remembered_is_still_correct() -> None:
    first = address_sharing.group(fresh("239.12.0.0"))
    for n in range(address_sharing.LIMIT + 10):
        address_sharing.group(f"239.13.{n >> 8 & 255}.{n & 255}")
        assert len(address_sharing._groups) <= address_sharing.LIMIT
    again = address_sharing.group(fresh("239.12.0.0"))
    assert again == first  # emptied when full: perhaps another object, always equal text
    assert address_sharing.group(again) is again


def cycling_routes(n: int, sources: int) -> list[Route]:
    """n routes of distinct groups whose `sources` sources come back in turn: each source is
    seen again only after all the others (more than LIMIT of them here)."""
    addresses = ((k % sources, f"239.14.{k >> 8 & 255}.{k & 255}") for k in range(n))
    return [
        Route(4, f"198.18.{s >> 8}.{s & 255}", group, "eth0", ("eth1",), 253)
        for s, group in addresses
    ]


def test_a_restart_shares_sources_that_come_back_after_more_than_limit_others(
    tmp_path: Path,
) -> None:
    sources = address_sharing.LIMIT + 3_000
    routes = cycling_routes(2 * sources + 500, sources)
    for write in ("snapshot", "journal"):  # the snapshot's chunks and one journal record
        path = str(tmp_path / f"{write}.journal")
        sf = StateFile(path)
        sf.load()
        if write == "snapshot":
            sf.write_snapshot(routes, {})
        else:
            sf.write_snapshot([], {})
            sf.append([AddRoute.of(r) for r in routes])
        sf.close()
        loaded = StateFile(path).load()
        assert list(loaded.routes) == [r.key for r in routes]
        assert len({id(key[1]) for key in loaded.routes}) == sources
        # Once loaded, the cache is back within its bound.
        assert len(address_sharing._sources) <= address_sharing.LIMIT


def test_bulk_raises_the_source_bound_for_its_block_only() -> None:
    texts = [f"198.19.{n >> 8 & 255}.{n & 255}" for n in range(address_sharing.LIMIT + 100)]
    with address_sharing.bulk():
        first = address_sharing.sources([fresh(t) for t in texts])
        again = address_sharing.sources([fresh(t) for t in texts])
        assert all(a is b for a, b in zip(first, again, strict=True))
        assert address_sharing.source(fresh(texts[0])) is first[0]
        assert len(address_sharing._sources) == len(texts)
    assert len(address_sharing._sources) <= address_sharing.LIMIT
    # Outside it, the bound holds again: a cache emptied when full (equal text, always).
    for t in texts:
        assert address_sharing.source(fresh(t)) == t
        assert len(address_sharing._sources) <= address_sharing.LIMIT
    # A block left by an exception restores the bound too.
    with contextlib.suppress(RuntimeError), address_sharing.bulk():
        address_sharing.sources([fresh(t) for t in texts])
        raise RuntimeError
    assert len(address_sharing._sources) <= address_sharing.LIMIT
    assert address_sharing._source_limit == [address_sharing.LIMIT]


def test_a_large_bulk_stays_within_its_own_bound() -> None:
    n = address_sharing.BULK_LIMIT + 2 * address_sharing.LIMIT
    with address_sharing.bulk():
        out = address_sharing.sources(
            [f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}" for k in range(n)]
        )
        assert len(address_sharing._sources) <= address_sharing.BULK_LIMIT + address_sharing.LIMIT
    assert out == [f"10.{k >> 16 & 255}.{k >> 8 & 255}.{k & 255}" for k in range(n)]


def test_a_batch_shares_sources_that_come_back_after_more_than_limit_others() -> None:
    sources = address_sharing.LIMIT + 2_000
    routes = cycling_routes(2 * sources + 300, sources)
    text = "".join(
        f"mfc add --source {r.source} --group {r.group} --iif eth0 --oifs eth1\n" for r in routes
    )
    ops = [
        {"op": "add", "source": r.source, "group": r.group, "iif": "eth0", "oifs": ["eth1"]}
        for r in routes
    ]
    for args in ({"text": text}, {"ops": ops}):
        ctl = Controller(FakeKernel(), FakeState())
        Commands(ctl, (4, 6)).batch(args, False, Peer(1, 0, 0))
        assert list(ctl.router.routes) == [r.key for r in routes]
        assert len({id(key[1]) for key in ctl.router.routes}) == sources
        assert len(address_sharing._sources) <= address_sharing.LIMIT

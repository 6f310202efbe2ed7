"""Tests for the model's memory layout under bulk loads: a direct install is logged as its
route key alone (no object per route beside the key), and rolling such a log back, mixed
with other kinds of entries, restores everything."""

from __future__ import annotations

from mfcd.model import Ports, RouteKey

from .conftest import observable, router_with_links, run


def key(n: int) -> RouteKey:
    return (4, "198.18.0.1", f"239.15.0.{n}", 253)


def test_a_direct_install_logs_the_key_object_itself() -> None:
    router = router_with_links("eth0", "eth1")
    ports = router.ports("eth0", ("eth1",))
    run(router, router.add, key(1), ports)  # makes the VIFs: later adds take the direct path
    router.begin()
    k = key(2)
    assert router.add(k, ports)
    assert router._log is not None
    assert router._log.entries == [k]
    assert router._log.entries[0] is k
    router.commit()


def test_rollback_of_direct_installs_mixed_with_other_entries_restores_all() -> None:
    router = router_with_links("eth0", "eth1", "eth2")
    ports = router.ports("eth0", ("eth1",))
    run(router, router.add, key(1), ports)
    before = observable(router)
    router.begin()
    for n in range(2, 40):
        router.add(key(n), ports)  # direct
    # not direct: a new VIF (dict, slot and refs entries), then direct ones again
    router.add(key(40), router.ports("eth0", ("eth1", "eth2")))
    router.add(key(41), router.ports("eth0", ("eth1", "eth2")))
    router.del_route(key(3))
    router.add(key(3), Ports("eth0", ("eth2",)))
    assert any(entry.__class__ is tuple and entry[0] == 4 for entry in router._log.entries)  # type: ignore[union-attr]
    router.rollback()
    assert observable(router) == before
    assert [v.refs for v in router.iter_vifs()] == [1, 1]

"""Learning the entry of the one other interface whose templates match an unmatched packet
(two routers on one LAN forwarding the same source: smcroute's issue #143)."""

from __future__ import annotations

from tests.unit.test_templates import LINKS, key, setup, star, upcall


def test_a_packet_on_another_interface_learns_the_entry_of_the_one_template_it_matches() -> None:
    ctl, kernel, learner, _ = setup()
    ctl.change([star("239.1.1.1", "b", "a")])  # from b only; a is its oif
    # The router's own copy, sent by its neighbour, arrives on a first.
    assert learner.on_upcalls([upcall(ctl, "198.18.0.9", "239.1.1.1", "a")]) == 1
    # The entry is b's: the flow is forwarded when it comes from b, the copies on a dropped.
    route = ctl.router.routes[key("198.18.0.9")]
    assert (route.iif, tuple(route.oifs)) == ("b", ("a",))
    assert kernel.forwarding(key("198.18.0.9")) == (LINKS["b"], frozenset({(LINKS["a"], 1)}))
    assert learner.counts["unmatched"] == 1 and not learner.recent


def test_no_entry_when_the_arrival_interface_is_not_an_oif_of_that_template() -> None:
    ctl, kernel, learner, _ = setup()
    ctl.change([star("239.1.1.1", "b", "c"), star("239.9.9.9", "a", "c")])  # a: a VIF
    assert learner.on_upcalls([upcall(ctl, "198.18.0.9", "239.1.1.1", "a")]) == 0
    assert kernel.mfcs == {} and learner.counts["unmatched"] == 1


def test_no_entry_when_templates_of_two_interfaces_or_of_the_arrival_one_match() -> None:
    ctl, kernel, learner, _ = setup()
    ctl.change([star("239.1.1.1", "b", "a"), star("239.1.1.1", "c", "a")])
    assert learner.on_upcalls([upcall(ctl, "198.18.0.9", "239.1.1.1", "a")]) == 0
    assert kernel.mfcs == {} and learner.counts["unmatched"] == 1
    # A template of the arrival interface wins, degraded (its oif is missing) as it is: the
    # entry learned from it forwards nowhere until that oif exists.
    ctl.change([star("239.1.1.2", "b", "a"), star("239.1.1.2", "a", "missing0")])
    assert learner.on_upcalls([upcall(ctl, "198.18.0.9", "239.1.1.2", "a")]) == 1
    assert kernel.forwarding(key("198.18.0.9", "239.1.1.2")) == (LINKS["a"], frozenset())

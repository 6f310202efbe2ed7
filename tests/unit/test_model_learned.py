"""The model's indexes of learned entries and templates (Router._learned_of, _learned_at and
template_index) against a recomputation from scratch, through random changes and rollbacks."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd import templates as tpl
from mfcd.errors import MfcdError
from mfcd.model import Ports, RouteKey, Router, Step
from mfcd.templates import TemplateKey
from tests.unit.conftest import run

NAMES = ("a", "b", "c", "d")
TABLE = 253
# Group prefixes of every kind: an address, a prefix with more addresses than the groups
# learned (each learned group tested) and one with fewer (each of its addresses looked up).
GROUPS = ("239.1.1.1", "239.1.1.0/30", "239.1.1.0/24", "239.1.0.0/16", "239.0.0.0/8")
TEMPLATE_SOURCES = ("*", "198.18.0.0/16", "198.18.0.1")
FLOW_GROUPS = ("239.1.1.1", "239.1.1.2", "239.1.1.3", "239.1.1.5", "239.1.2.1", "239.2.0.1")
FLOW_SOURCES = ("198.18.0.1", "198.18.0.2", "198.19.0.1")


class Oracle(Router):
    """A Router that finds the learned entries a template change touches by a scan of every
    learned entry (as the model did before it had indexes) and indexes nothing it reads."""

    def _rematch(self, key: TemplateKey, deleted: bool = False) -> list[Step]:
        family, _, _, table, iif = key
        keys = [
            k
            for k, t in self.learned.items()
            if k[0] == family and k[3] == table and (not deleted or t == key)
        ]
        return self.rematch_entries(sorted(k for k in keys if self.routes[k].iif == iif))

    def learned_from(self, template: TemplateKey) -> list[RouteKey]:
        return sorted(k for k, t in self.learned.items() if t == template)

    def learned_count(self, template: TemplateKey) -> int:
        return len(self.learned_from(template))


def from_scratch(learned: dict[RouteKey, TemplateKey]) -> tuple[Any, Any]:
    """What the indexes of `learned` should be."""
    of: dict[TemplateKey, set[RouteKey]] = {}
    at: dict[tuple[int, int, str], dict[str, Any]] = {}
    for key, template in learned.items():
        of.setdefault(template, set()).add(key)
        where = (template[0], template[3], template[4])
        at.setdefault(where, {}).setdefault(key[2], set()).add(key)
    for groups in at.values():  # (a group's only entry is held as itself)
        for group, keys in groups.items():
            if len(keys) == 1:
                groups[group] = next(iter(keys))
    return of, at


def indexes(router: Router) -> tuple[Any, Any]:
    return copy.deepcopy((router._learned_of, router._learned_at))


def check(router: Router, oracle: Router) -> None:
    assert indexes(router) == from_scratch(router.learned)
    if router._index is not None:  # (kept up to date as templates come and go)
        assert router._index.levels == tpl.Index(router.templates).levels
    for template in router.templates:
        assert router.learned_from(template) == oracle.learned_from(template)
        # Exactly the entries of its interface that it contains: no more (which would cost
        # time, not change the steps), no fewer.
        family, _, _, table, iif = template
        contained = [
            k
            for k in oracle.learned
            if (k[0], k[3]) == (family, table)
            and oracle.routes[k].iif == iif
            and tpl.matches(template, k[1], k[2])
        ]
        assert router._touched(template) == sorted(contained)
        assert router.learned_count(template) == oracle.learned_count(template)
    # A learned entry arrives on its template's iif: the index of _learned_at relies on it.
    for key, template in router.learned.items():
        assert router.routes[key].iif == template[4]
    assert (router.routes, router.learned, router.origins) == (
        oracle.routes,
        oracle.learned,
        oracle.origins,
    )


Action = tuple[Any, ...]
flows = st.tuples(
    st.sampled_from(FLOW_SOURCES), st.sampled_from(FLOW_GROUPS), st.sampled_from(NAMES)
)
actions = st.one_of(
    st.tuples(
        st.just("template"),
        st.sampled_from(TEMPLATE_SOURCES),
        st.sampled_from(GROUPS),
        st.sampled_from(NAMES[:3]),
        st.sets(st.sampled_from(NAMES), min_size=1, max_size=2),
    ),
    st.tuples(st.just("untemplate"), st.integers(0, 30)),
    st.tuples(st.just("learn"), flows),
    st.tuples(st.just("learn"), flows),
    st.tuples(st.just("learn"), flows),
    st.tuples(st.just("learn"), flows),
    st.tuples(st.just("repoint"), flows),
    st.tuples(st.just("unlearn"), st.integers(0, 30)),
    st.tuples(st.just("route"), flows, st.sampled_from(NAMES)),
    st.tuples(st.just("down"), st.sampled_from(NAMES)),
    st.tuples(st.just("up"), st.sampled_from(NAMES)),
)


def with_links(router: Router) -> Router:
    """The router with every interface up and templates that learn on a, b and c (so that
    random actions learn often, several sources of a group too; they may be deleted)."""
    for name in NAMES:
        run(router, router.link_up, name, NAMES.index(name) + 1)
    for iif, oif in (("a", "b"), ("b", "a"), ("c", "d")):
        run(router, router.add_template, (4, "*", "239.0.0.0/8", TABLE, iif), Ports(iif, (oif,)))
    return router


def perform(router: Router, action: Action) -> list[Step]:
    """One change of the model; the same action on two routers with the same history does
    the same to both."""
    match action:
        case ("template", source, group, iif, oifs):
            outs = tuple(sorted(set(oifs) - {iif}))
            key = (4, source, group, TABLE, iif)
            return router.add_template(key, Ports(iif, outs)) if outs else []
        case ("untemplate", int(n)):
            keys = sorted(router.templates)
            return router.del_template(keys[n % len(keys)]) if keys else []
        case ("learn" | "repoint" as kind, (source, group, arrived)):
            vif = router.vif_of(4, arrived)
            if vif is None:
                return []
            if kind == "learn":
                return router.learn(4, TABLE, source, group, vif.vifi)[1]
            return router.repoint(4, TABLE, source, group, vif.vifi)
        case ("unlearn", int(n)):
            entries = sorted(router.learned)
            return router.unlearn(entries[n % len(entries)]) if entries else []
        case ("route", (source, group, iif), oif):
            return router.add((4, source, group, TABLE), Ports(iif, (oif,))) if oif != iif else []
        case ("down", name):
            return router.link_down(name)
        case ("up", name):
            return router.link_up(name, NAMES.index(name) + 1)
    raise AssertionError(f"unknown action {action}")


def both(router: Router, oracle: Router, action: Action) -> bool:
    """Perform `action` on both routers, which must agree; False if the model refused it."""
    outcomes = []
    for each in (router, oracle):
        try:
            outcomes.append(perform(each, action))
        except MfcdError as e:
            outcomes.append(type(e))  # type: ignore[arg-type]
    assert outcomes[0] == outcomes[1], action
    return isinstance(outcomes[0], list)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(actions, min_size=1, max_size=6), st.booleans()), max_size=12))
def test_template_changes_touch_what_a_scan_of_every_learned_entry_finds(
    transactions: list[tuple[list[Action], bool]],
) -> None:
    """Random template adds and deletes, learning, re-pointing, unlearning, exact routes and
    link events, each transaction committed or rolled back: the same steps as the oracle's,
    and indexes equal to those made from scratch, and after a rollback to what they were."""
    router, oracle = with_links(Router()), with_links(Oracle())
    for todo, commit in transactions:
        before = indexes(router)
        router.begin()
        oracle.begin()
        refused = False
        for action in todo:
            if not both(router, oracle, action):
                refused = True
                break
            check(router, oracle)
        if commit and not refused:
            router.commit()
            oracle.commit()
        else:
            router.rollback()
            oracle.rollback()
            assert indexes(router) == before
        check(router, oracle)

"""A change's runs of adds (state.RunOfAdds) are journaled from their columns: the same bytes
as the change journaled op by op, over random batches mixing runs with other changes, other
tables and families, and records cut into parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfcd import state
from mfcd.controller import RouteRun
from mfcd.groups import Join, Leave
from mfcd.model import AddRoute, Change, DelRoute, Ports, RouteKey, SetThreshold
from mfcd.state import StateFile, change_op, encode_parts, encode_record

from .conftest import check_runs

PORTS = [
    Ports("r0", ("r1",)),
    Ports("r1", ("r2", "r3")),
    Ports("eth0.100", ("vlan@x", "br-lan")),
    Ports("r2", ()),
    Ports('we"ird\\', ("n\u00e9t",)),  # (JSON escapes: made once per Ports, as before)
]
TABLES = {4: [253, 253, 100, 2**32 - 1], 6: [254, 254, 7]}


@st.composite
def a_run(draw: Any, start: int) -> RouteRun:
    """A run of new routes on one family, table and Ports, with or without its columns."""
    family = draw(st.sampled_from([4, 4, 6]))
    table = draw(st.sampled_from(TABLES[family]))
    count = draw(st.integers(0, 40))
    first = draw(st.integers(0, 10_000))
    if family == 4:
        pairs = [
            (f"10.{i >> 8 & 255}.{i & 255}.1", f"239.1.{i >> 8 & 255}.{i & 255}")
            for i in range(first, first + count)
        ]
    else:
        pairs = [(f"2001:db8::{i:x}", f"ff3e::{i:x}") for i in range(first, first + count)]
    keys: list[RouteKey] = [(family, source, group, table) for source, group in pairs]
    ports = draw(st.sampled_from(PORTS))
    if draw(st.booleans()):
        return RouteRun(start, keys, ports, [k[1] for k in keys], [k[2] for k in keys])
    return RouteRun(start, keys, ports)


others = st.one_of(
    st.builds(
        lambda i, ports, table: AddRoute((4, "10.9.0.1", f"239.9.0.{i}", table), ports),
        st.integers(0, 255),
        st.sampled_from(PORTS),
        st.sampled_from(TABLES[4]),
    ),
    st.builds(
        lambda table: DelRoute((4, "10.0.0.1", "239.1.0.1", table)), st.sampled_from(TABLES[4])
    ),
    st.just(DelRoute((6, "2001:db8::1", "ff3e::1:2", 254))),
    st.builds(SetThreshold, st.sampled_from(["r0", "r1"]), st.integers(1, 255)),
    st.just(Join(("r1", "239.9.9.9", "*"))),
    st.just(Leave(("r1", "239.9.9.9", "*"))),
)


@st.composite
def batches(draw: Any) -> tuple[list[Change], list[RouteRun]]:
    """Changes in which runs and other changes alternate at random."""
    changes: list[Change] = []
    runs: list[RouteRun] = []
    for _ in range(draw(st.integers(0, 6))):
        changes += draw(st.lists(others, max_size=4))
        run = draw(a_run(len(changes)))
        runs.append(run)
        changes += [AddRoute(key, run.ports) for key in run.keys]
    changes += draw(st.lists(others, max_size=3))
    check_runs(changes, runs)  # (what the journal takes on trust)
    return changes, runs


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches(),
    st.integers(1, 2**53),
    st.sampled_from([1, 2, 5, 7, 30, 20_000]),
    st.sampled_from([1, 2, 3, state.SMALL_RUN]),
)
def test_runs_are_journaled_as_the_same_bytes_as_their_changes_op_by_op(
    monkeypatch: pytest.MonkeyPatch,
    batch: tuple[list[Change], list[RouteRun]],
    seq: int,
    ops: int,
    small: int,
) -> None:
    changes, runs = batch
    monkeypatch.setattr(state, "RECORD_OPS", ops)  # records of `ops` ops: runs cut anywhere
    monkeypatch.setattr(state, "SMALL_RUN", small)  # (and written from columns however short)
    with_runs = list(encode_parts(changes, seq, runs))
    assert with_runs == list(encode_parts(changes, seq))
    if len(changes) <= ops:  # one record: as json.dumps spells it
        assert with_runs == [encode_record({"seq": seq, "ops": [change_op(c) for c in changes]})]


def test_a_run_in_the_state_file_loads_back_and_the_bytes_are_as_without_it(tmp_path: Path) -> None:
    keys: list[RouteKey] = [(4, f"10.0.{i >> 8}.{i & 255}", "239.1.1.1", 100) for i in range(3000)]
    ports = Ports("r0", ("r1",))
    changes: list[Change] = [DelRoute((4, "10.9.9.9", "239.9.9.9", 253))]
    changes += [AddRoute(key, ports) for key in keys]
    changes.append(SetThreshold("r0", 3))
    files = []
    for name, runs in (
        ("with", [RouteRun(1, keys, ports, [k[1] for k in keys], ["239.1.1.1"] * 3000)]),
        ("without", []),
    ):
        sf = StateFile(str(tmp_path / f"{name}.journal"))
        sf.load()
        sf.append(changes, runs)
        sf.close()
        files.append((tmp_path / f"{name}.journal").read_bytes())
    assert files[0] == files[1]
    loaded = StateFile(str(tmp_path / "with.journal")).load()
    assert loaded.routes == dict.fromkeys(keys, ports)
    assert loaded.thresholds == {"r0": 3}

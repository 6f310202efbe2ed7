"""A restart whose routes go to the kernel while the state file is still read
(controller.RestoreStream), against the real kernel: journal records after the streamed
routes that delete and replace leave the kernel as the file says, with real packets
forwarded by the replaced route; a line found corrupt after routes went in
stops mfcd with the usual error and leaves neither a route nor a writer process."""

from __future__ import annotations

import re
from pathlib import Path

from lab.netns import Lab
from mfcd.kernel import WRITER_MIN
from mfcd.model import AddRoute, DelRoute, Ports
from mfcd.state import StateFile
from tests.netns import kernel_tables
from tests.netns.conftest import Mfcd
from tests.netns.test_bulk_runs import mroute_cache, routes_of


def test_a_streamed_restart_ends_as_the_file_says_after_deletes_and_replaces(
    lab: Lab, tmp_path: Path
) -> None:
    """WRITER_MIN + 2,000 routes of each family in the snapshot (streamed while the file is
    read, through the writer), then records that delete one of each family and move one to
    r3 only: the kernel holds every other route on r1 and r2, the deleted ones nowhere,
    the moved one forwards to r3 only."""
    n = WRITER_MIN + 2000
    v4, v6 = routes_of(4, n, ("r1", "r2")), routes_of(6, n, ("r1", "r2"))
    daemon = Mfcd(lab, tmp_path)
    state = StateFile(daemon.state_file)
    state.load()
    state.write_snapshot(v4 + v6, {})
    state.append([DelRoute(v4[10].key), DelRoute(v6[10].key)])
    state.append([AddRoute(v4[20].key, Ports("r0", ("r3",)))])
    state.close()
    daemon.start(wait=False)
    try:
        daemon.wait_ready(timeout=60)
        kernel4, kernel6 = kernel_tables.mfc(lab, 4), kernel_tables.mfc(lab, 6)
        assert len(kernel4) == n - 1 and len(kernel6) == n - 1
        assert (v4[10].source, v4[10].group) not in kernel4
        assert (v6[10].source, v6[10].group) not in kernel6
        names = {name: vif for vif, name in kernel_tables.vifs(lab, 4).items()}
        assert kernel4[(v4[20].source, v4[20].group)] == (names["r0"], frozenset({names["r3"]}))
        assert kernel4[(v4[-1].source, v4[-1].group)] == (
            names["r0"],
            frozenset({names["r1"], names["r2"]}),
        )
        counts = lab.probe(v4[20].group)
        assert [counts[ns] for ns in lab.rx] == [0, 0, 5]
        counts = lab.probe(v6[-1].group)
        assert [counts[ns] for ns in lab.rx] == [5, 5, 0]
        states = [route["state"] for route in daemon.show()["routes"]]
        assert len(states) == 2 * n - 2 and set(states) == {"installed"}
    finally:
        if daemon.proc is not None:
            daemon.stop()
    assert re.search(r"kernel writer \(pid \d+\): \d+ routes written", daemon.log)
    assert re.search(
        r"restore: \d+ routes were handed over while the state file was read; the file's"
        r" later records are applied now",
        daemon.log,
    )
    assert "restoring all routes at once failed" not in daemon.log


def test_a_line_found_corrupt_after_routes_went_in_stops_mfcd_and_leaves_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    """The last record of a file whose first WRITER_MIN + 2,000 routes were streamed is
    damaged: mfcd refuses to start with the corrupt line's number, as it does without
    streaming, undoes what went in without a rollback error, and leaves no entry, VIF or
    writer process behind."""
    n = WRITER_MIN + 2000
    daemon = Mfcd(lab, tmp_path)
    state = StateFile(daemon.state_file)
    state.load()
    routes = routes_of(4, n, ("r1", "r2"))
    state.write_snapshot(routes, {})
    state.append([DelRoute(routes[5].key)])  # (a threshold op would stop the streaming)
    state.close()
    data = Path(daemon.state_file).read_bytes()
    last = data.rindex(b'"del",4')
    Path(daemon.state_file).write_bytes(data[:last] + b'"del",6' + data[last + 7 :])
    lines = data[:last].count(b"\n") + 1  # (the damaged line's number)
    daemon.start(wait=False)
    assert daemon.proc is not None
    daemon.proc.wait(timeout=60)
    code, err = daemon.stop()
    assert code != 0
    assert f"line {lines} is corrupt (checksum mismatch)" in err
    assert "rollback incomplete" not in err
    assert mroute_cache(lab, 4) == [] and kernel_tables.vifs(lab, 4) == {}
    pids = [int(p) for p in re.findall(r"kernel writer \(pid (\d+)\)", err)]
    assert pids  # (the routes went in through it before the corrupt line was read)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "kernel_writer" not in Path(
            f"/proc/{pid}/cmdline"
        ).read_text(errors="replace")

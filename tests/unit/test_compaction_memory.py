"""Tests for the compaction's copy of the routes: the thread that writes it also frees it,
a piece at a time, so that the event loop never spends the tens of ms of freeing it whole."""

from __future__ import annotations

from pathlib import Path

from mfcd.model import Ports, RouteKey
from mfcd.state import StateFile

PORTS = Ports("eth0", ("eth1",))


def key(n: int) -> RouteKey:
    return (4, "198.18.0.1", f"239.16.{n >> 8}.{n & 255}", 253)


def test_the_writing_thread_frees_the_copy_it_wrote(tmp_path: Path) -> None:
    sf = StateFile(str(tmp_path / "state.journal"))
    sf.load()
    copy = {key(n): PORTS for n in range(25_000)}
    job = sf.start_compaction(copy, {})
    job.write()
    assert job.error is None
    assert job.routes == {} and copy == {}  # emptied, a piece at a time, by the thread
    assert sf.finish_compaction(job)
    sf.close()
    loaded = StateFile(str(tmp_path / "state.journal")).load()
    assert set(loaded.routes) == {key(n) for n in range(25_000)}

"""End to end: the state file has one owner, survives being deleted or renamed under a running
mfcd, refuses damage, and follows no planted symbolic link."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.netns import Lab
from mfcd import state
from mfcd.state import HEADER, HEADER_V1, encode_record
from tests.netns.conftest import BIN, Mfcd, route_args


def group(i: int) -> str:
    return f"239.3.0.{i}"


def add_routes(mfcd: Mfcd, numbers: range) -> None:
    for i in numbers:
        mfcd.ok(*route_args("198.18.0.2", group(i), "r0", "r1"))


def journal_ops(path: str) -> int:
    """Ops journaled since the state file's snapshot."""
    return state.parse(Path(path).read_bytes(), path).ops_since_snapshot


def groups(mfcd: Mfcd) -> set[str]:
    return {r["group"] for r in mfcd.show()["routes"]}


def spawn_other(lab: Lab, tmp_path: Path, state_file: str) -> subprocess.Popen[str]:
    """A second mfcd in another namespace, with a socket of its own and the given state file."""
    config = tmp_path / "other.conf"
    config.write_text(
        f'socket_path = "{tmp_path / "other.sock"}"\nstate_file = "{state_file}"\n'
        'socket_group = ""\n'
    )
    return lab.spawn(lab.sender, str(BIN / "mfcd"), "--config", str(config))


def test_a_second_mfcd_on_the_same_state_file_refuses_and_names_the_holder(
    lab: Lab, mfcd: Mfcd, tmp_path: Path
) -> None:
    add_routes(mfcd, range(1, 4))
    data = Path(mfcd.state_file).read_bytes()
    assert mfcd.proc is not None
    holder = mfcd.proc.pid
    other = spawn_other(lab, tmp_path, mfcd.state_file)
    assert other.wait(timeout=15) == 1
    _, _, err = lab.stop(other)
    assert (
        f"{mfcd.state_file} is in use by another mfcd (pid {holder}, which holds"
        f" {mfcd.state_file}.lock); stop that one, or give this one its own state_file"
    ) in err
    assert Path(mfcd.state_file).read_bytes() == data
    assert not (tmp_path / "other.sock").exists()
    assert groups(mfcd) == {group(i) for i in range(1, 4)}  # the first one is unharmed
    # A lock file deleted under the holder is locked again within a second or so.
    lock = Path(f"{mfcd.state_file}.lock")
    lock.unlink()
    deadline = time.monotonic() + 10
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lock.read_text() == f"{holder}\n"
    other = spawn_other(lab, tmp_path, mfcd.state_file)
    assert other.wait(timeout=15) == 1
    assert f"is in use by another mfcd (pid {holder}," in lab.stop(other)[2]
    # The kernel drops the lock with its holder, even one killed outright.
    _, log = mfcd.stop(signal.SIGKILL)
    assert f"WARNING: {lock} was deleted or replaced while mfcd was running; locked it again" in log
    other = spawn_other(lab, tmp_path, mfcd.state_file)
    try:
        deadline = time.monotonic() + 15
        # The lock is taken before the socket is bound (tests/netns/test_lock_order.py).
        holder_line = f"{other.pid}\n"
        while time.monotonic() < deadline and not (
            (tmp_path / "other.sock").exists()
            and Path(f"{mfcd.state_file}.lock").read_text() == holder_line
        ):
            assert other.poll() is None, lab.stop(other)[2]
            time.sleep(0.05)
        assert Path(f"{mfcd.state_file}.lock").read_text() == holder_line
    finally:
        code, _, err = lab.stop(other)
    assert code == 0, err


def delete(path: Path) -> None:
    path.unlink()


def rename(path: Path) -> None:
    path.rename(path.with_name("state.journal.old"))


@pytest.mark.parametrize("meddle", [delete, rename])
def test_a_state_file_removed_while_running_is_written_back(
    lab: Lab, mfcd: Mfcd, meddle: Callable[[Path], None]
) -> None:
    state_file = Path(mfcd.state_file)
    add_routes(mfcd, range(1, 4))
    meddle(state_file)
    add_routes(mfcd, range(4, 7))  # the first of these writes every route back
    assert state_file.exists()
    meddle(state_file)
    # With no change coming, the daemon notices within a second or so by itself.
    deadline = time.monotonic() + 10
    while not state_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state_file.exists()
    _, log = mfcd.stop(signal.SIGKILL)  # a crash: only what is on disk counts
    warning = f"WARNING: {state_file} was deleted or renamed while mfcd was running;"
    assert log.count(warning) == 2, log
    # Normally the first add finds the file gone and writes its own route too (4); under
    # heavy load the check once a second may get there first (3).
    assert re.search(r"writing all [34] routes there again", log), log
    assert "writing all 6 routes there again" in log
    mfcd.start()
    assert groups(mfcd) == {group(i) for i in range(1, 7)}


def truncated(data: bytes) -> bytes:
    return b""


def header_only(data: bytes) -> bytes:
    return data.splitlines(keepends=True)[0]


def middle_record_deleted(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join(lines[:3] + lines[4:])


def old_add_after_its_del(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)
    return b"".join([*lines, lines[2]])


DAMAGE = {
    truncated: "the state file is empty (0 bytes)",
    header_only: "line 2 is corrupt (the file ends after its header, without a snapshot)",
    middle_record_deleted: "line 4 is corrupt (sequence number 4 after 2: 1 record missing)",
    old_add_after_its_del: "line 7 is corrupt (sequence number 2 after 5: a record repeated",
}


def test_a_damaged_state_file_stops_mfcd_with_one_line_and_is_left_untouched(
    lab: Lab, mfcd: Mfcd
) -> None:
    add_routes(mfcd, range(1, 4))  # lines: header, snapshot, 3 adds, then a del
    mfcd.ok("mfc", "del", "--source", "198.18.0.2", "--group", group(1))
    mfcd.stop()
    good = Path(mfcd.state_file).read_bytes()
    assert good.count(b"\n") == 6
    for damage, reason in DAMAGE.items():
        data = damage(good)
        Path(mfcd.state_file).write_bytes(data)
        mfcd.start(wait=False)
        assert mfcd.proc is not None
        code = mfcd.proc.wait(timeout=15)
        _, err = mfcd.stop()
        errors = [line for line in err.splitlines() if " ERROR: " in line]
        assert code == 1, err
        assert len(errors) == 1, err
        assert f"ERROR: {mfcd.state_file}: " in errors[0] and reason in errors[0], damage
        assert errors[0].endswith("repair or move it away, then start mfcd again")
        assert Path(mfcd.state_file).read_bytes() == data, damage
        assert not os.path.exists(mfcd.socket)
    Path(mfcd.state_file).write_bytes(good)
    mfcd.start()
    assert groups(mfcd) == {group(2), group(3)}


def test_a_planted_temporary_link_is_not_followed(lab: Lab, mfcd: Mfcd, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    state_file = Path(mfcd.state_file)
    tmp = Path(f"{state_file}.tmp")
    add_routes(mfcd, range(1, 3))
    # While running: the next snapshot (here, writing back a deleted file) goes through tmp.
    tmp.symlink_to(victim)
    state_file.unlink()
    add_routes(mfcd, range(3, 4))
    assert victim.read_bytes() == b"precious\n"
    assert not tmp.is_symlink() and not state_file.is_symlink()
    # At start: with no state file yet, mfcd writes an empty one through tmp.
    mfcd.stop()
    state_file.unlink()
    tmp.symlink_to(victim)
    mfcd.start()
    assert victim.read_bytes() == b"precious\n"
    assert not tmp.is_symlink() and not state_file.is_symlink()
    assert groups(mfcd) == set()
    # A state file that is itself a link is refused, and its target left alone.
    mfcd.stop()
    state_file.unlink()
    state_file.symlink_to(victim)
    mfcd.start(wait=False)
    assert mfcd.proc is not None
    code = mfcd.proc.wait(timeout=15)
    _, err = mfcd.stop()
    assert code == 1
    assert f"{state_file}: cannot read the state file: it is a symbolic link" in err
    assert victim.read_bytes() == b"precious\n"


def test_a_version_1_file_loads_and_is_rewritten_in_version_2(lab: Lab, mfcd: Mfcd) -> None:
    mfcd.stop()
    routes = [[4, "198.18.0.2", group(i), "r0", ["r1"]] for i in range(1, 4)]
    v1 = (
        HEADER_V1
        + encode_record({"snapshot": {"routes": routes[:2], "thresholds": {"r1": 3}}})
        + encode_record({"ops": [["add", *routes[2]]]})
    )
    Path(mfcd.state_file).write_bytes(v1)
    mfcd.start()
    assert groups(mfcd) == {group(i) for i in range(1, 4)}
    data = Path(mfcd.state_file).read_bytes()
    assert data.startswith(HEADER) and data.count(b"\n") == 2  # one snapshot, numbered
    add_routes(mfcd, range(4, 5))
    code, log = mfcd.stop()
    assert code == 0
    assert f"{mfcd.state_file}: format version 1; rewriting it" in log
    mfcd.start()
    assert groups(mfcd) == {group(i) for i in range(1, 5)}


def test_changes_made_while_a_compaction_is_written_survive_it(lab: Lab, mfcd: Mfcd) -> None:
    """A batch large enough to make compaction due, then more changes at once, while the
    snapshot is written in a thread; after a kill -9, every change is back."""
    count = 30_000
    text = "".join(
        f"mfc add --source 198.18.0.2 --group 239.{4 + i // 65536}.{i // 256 % 256}.{i % 256}"
        " --iif r0 --oifs r1\n"
        for i in range(count)
    )
    mfcd.ok("batch", "-", stdin=text)
    # Straight after the answer the snapshot is being written: these land in its tail.
    mfcd.ok("mfc", "del", "--source", "198.18.0.2", "--group", "239.4.0.0")
    add_routes(mfcd, range(1, 21))
    compacted = Path(f"{mfcd.state_file}.compact")
    deadline = time.monotonic() + 60
    while compacted.exists() or journal_ops(mfcd.state_file) > 21:
        assert time.monotonic() < deadline, "the journal was not compacted"
        time.sleep(0.1)
    mfcd.stop(signal.SIGKILL)
    mfcd.start()
    found = groups(mfcd)
    assert len(found) == count - 1 + 20
    assert "239.4.0.0" not in found
    assert {group(i) for i in range(1, 21)} <= found
    assert "compacted the state file: 30000 routes" in mfcd.log
    assert "ERROR" not in mfcd.log

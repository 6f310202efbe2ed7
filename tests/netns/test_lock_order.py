"""End to end: a second mfcd on a state file in use refuses before it touches its socket."""

from __future__ import annotations

from pathlib import Path

from lab.netns import Lab
from tests.netns.conftest import Mfcd
from tests.netns.test_state_file import spawn_other


def test_a_second_mfcd_refuses_on_the_lock_before_it_looks_at_its_socket(
    lab: Lab, mfcd: Mfcd, tmp_path: Path
) -> None:
    # Its socket path holds a plain file: were the socket bound first, the second mfcd
    # would refuse because of that file; it names the state file's holder instead.
    planted = tmp_path / "other.sock"
    planted.write_text("not a socket\n")
    assert mfcd.proc is not None
    other = spawn_other(lab, tmp_path, mfcd.state_file)
    assert other.wait(timeout=15) == 1
    _, _, err = lab.stop(other)
    assert f"is in use by another mfcd (pid {mfcd.proc.pid}," in err
    assert "is not a socket" not in err
    assert planted.read_text() == "not a socket\n"

"""Tests for mfcd.daemon's start: one that fails releases the table sockets systemd passed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mfcd import daemon, notify
from tests.unit.test_kernel import RecordingKeeper


def test_a_start_that_fails_on_its_config_releases_the_passed_tables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Under Restart=on-failure a crash loop on a bad config would otherwise leave the
    # previous mfcd's tables forwarding from the fd store for as long as it lasts.
    ours, peer = socket.socketpair()
    keeper = RecordingKeeper()
    monkeypatch.setattr(notify, "take_listen_fds", lambda: [(ours.detach(), "mrt4-253")])
    monkeypatch.setattr(notify, "FdStore", lambda: keeper)
    bad = tmp_path / "mfcd.conf"
    bad.write_text("no_such_setting = 1\n")
    assert daemon.main(["--config", str(bad)]) == 1
    assert keeper.dropped == ["mrt4-253"]
    with peer:
        assert peer.recv(1) == b""  # the store's copy aside, ours is closed

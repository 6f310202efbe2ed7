"""Tests for directory_trust: the rule over one directory, and the walk over real directories."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mfcd import directory_trust
from mfcd.directory_trust import reason, walk
from mfcd.errors import ConfigError

DIR = stat.S_IFDIR
TRUSTED = frozenset({0, 991})
ME = frozenset({0, os.geteuid()})


@pytest.mark.parametrize(
    ("mode", "uid", "final", "expected"),
    [
        (DIR | 0o755, 0, True, None),
        (DIR | 0o700, 991, True, None),
        (DIR | 0o750, 991, False, None),
        (DIR | 0o1777, 0, False, None),  # /tmp above our own directory
        (DIR | 0o1770, 0, False, None),  # sticky and group-writable, above ours
        (DIR | 0o777, 0, False, "writable by others (mode 0777)"),
        (DIR | 0o775, 0, False, "writable by its group (mode 0775)"),
        (DIR | 0o1777, 0, True, "writable by others (mode 1777)"),  # we create files in it
        (DIR | 0o770, 991, True, "writable by its group (mode 0770)"),
        (DIR | 0o755, 1000, True, "owned by uid 1000, not by root or the user mfcd runs as"),
        (DIR | 0o700, 1000, False, "owned by uid 1000"),
        (stat.S_IFLNK | 0o777, 0, False, None),  # a symlink's mode means nothing
        (stat.S_IFLNK | 0o777, 1000, False, "owned by uid 1000"),  # its owner can re-point it
        (stat.S_IFREG | 0o644, 0, True, "is not a directory"),
    ],
)
def test_the_rule_for_one_directory(mode: int, uid: int, final: bool, expected: str | None) -> None:
    found = reason("/d", mode, uid, TRUSTED, final)
    if expected is None:
        assert found is None
    else:
        assert found is not None and found.startswith("/d ") and expected in found


def test_a_private_directory_under_a_sticky_one_is_safe(tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (sticky / "mfcd").mkdir(mode=0o700)
    assert walk(str(sticky / "mfcd"), ME) is None
    assert "writable by others (mode 1777)" in str(walk(str(sticky), ME))


def test_a_loose_directory_or_parent_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    (loose / "mfcd").mkdir(parents=True)
    loose.chmod(0o777)
    assert walk(str(loose / "mfcd"), ME) == f"{loose} is writable by others (mode 0777)"
    loose.chmod(0o775)
    assert walk(str(loose / "mfcd"), ME) == f"{loose} is writable by its group (mode 0775)"
    loose.chmod(0o755)
    assert walk(str(loose / "mfcd"), ME) is None


def test_symlinks_are_followed_and_their_targets_checked(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (tmp_path / "link").symlink_to("loose")
    assert walk(str(tmp_path / "link"), ME) == f"{loose} is writable by others (mode 0777)"
    (tmp_path / "ok").mkdir()
    (tmp_path / "abs").symlink_to(tmp_path / "ok")
    assert walk(str(tmp_path / "abs"), ME) is None
    assert walk(str(tmp_path / "ok" / ".." / "loose"), ME) is not None  # `..` of a real dir
    (tmp_path / "loop").symlink_to("loop")
    assert "too many levels of symbolic links" in str(walk(str(tmp_path / "loop"), ME))


def test_a_missing_directory_or_a_file_is_reported(tmp_path: Path) -> None:
    assert walk(str(tmp_path / "none"), ME) == f"cannot check {tmp_path / 'none'}: " + (
        "No such file or directory"
    )
    (tmp_path / "file").write_text("")
    assert walk(str(tmp_path / "file"), ME) == f"{tmp_path / 'file'} is not a directory"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_a_directory_or_symlink_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, 65534, 65534)
    assert walk(str(theirs), ME) == f"{theirs} is owned by uid 65534, not by root or the user" + (
        " mfcd runs as"
    )
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (tmp_path / "ours").mkdir()
    link = sticky / "link"
    link.symlink_to(tmp_path / "ours")
    assert walk(str(link), ME) is None
    os.chown(link, 65534, 65534, follow_symlinks=False)  # its owner could re-point it
    assert walk(str(link), ME) == f"{link} is owned by uid 65534, not by root or the user" + (
        " mfcd runs as"
    )


def test_prepare_creates_the_directory_then_checks_it(tmp_path: Path) -> None:
    directory_trust.prepare(str(tmp_path / "a" / "b"), "state directory")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "a").chmod(0o777)
    with pytest.raises(ConfigError, match=r"^refusing the state directory .*/a/b: .*/a is wri"):
        directory_trust.prepare(str(tmp_path / "a" / "b"), "state directory")
    (tmp_path / "file").write_text("")
    with pytest.raises(
        ConfigError, match=r"socket directory .*/file/x, or one above it, is a file"
    ):
        directory_trust.prepare(str(tmp_path / "file" / "x"), "socket directory")


def test_check_says_what_the_start_would_refuse_and_creates_nothing(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    for directory in (loose, loose / "mfcd" / "run", sticky):
        with pytest.raises(ConfigError) as e:
            directory_trust.prepare(str(directory), "state directory")
        assert directory_trust.check(str(directory), "state directory", ME) == str(e.value)
    # Missing: judged as the start would create it, under a sticky or a private directory.
    for directory in (sticky / "mfcd" / "run", tmp_path / "ok" / "mfcd"):
        assert directory_trust.check(str(directory), "socket directory", ME) is None
        assert not directory.exists()
        directory_trust.prepare(str(directory), "socket directory")


def test_check_config_refuses_the_directories_the_start_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mfcd.daemon import check_config  # noqa: PLC0415 (the daemon's entry point)

    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    conf = tmp_path / "mfcd.conf"
    conf.write_text(f'socket_path = "{sticky}/mfcd.sock"\nstate_file = "{sticky}/state.journal"\n')
    assert check_config(str(conf)) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{conf}: refusing the {what} directory {sticky}: {sticky} is writable by others (mode"
        " 1777); only root and the user mfcd runs as may write to it and to the directories"
        " above it (chmod go-w, chown)"
        for what in ("state", "socket")
    ]
    overrides: dict[str, str | None] = {
        "socket_path": f"{sticky}/mfcd/mfcd.sock",
        "state_file": f"{sticky}/mfcd/state.journal",
    }
    assert check_config(str(conf), overrides) == 0  # (as `mfcd --socket ... --state-file ...`)
    assert capsys.readouterr().out.startswith(f"{conf}: valid (1 file, 0 routes")
    assert not (sticky / "mfcd").exists()

"""Tests for mfcd.rt_tables: the iproute2 table-name files, as parsed and as read again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mfcd import rt_tables, validate
from mfcd.errors import InvalidArgument
from mfcd.rt_tables import Entry, Parsed


def names_of(text: str) -> dict[str, int]:
    return rt_tables.resolve(rt_tables.parse(text).entries)


# --- the format -----------------------------------------------------------------------------------


def test_numbers_and_names_are_read_with_comments_and_blank_lines_skipped() -> None:
    text = (
        "#\n# reserved values\n#\n255\tlocal\n254\tmain\n253\tdefault\n0\tunspec\n\n"
        "   \t\n  # indented comment\n100 studio  # a comment\n0x10 hex\n0xfF upper\n"
        "  7\tindented\n200 crlf\r\n+5 plus\n010 ten\n"
    )
    assert rt_tables.parse(text) == Parsed(
        (
            Entry(255, "local"),
            Entry(254, "main"),
            Entry(253, "default"),
            Entry(0, "unspec"),
            Entry(100, "studio"),
            Entry(16, "hex"),
            Entry(255, "upper"),
            Entry(7, "indented"),
            Entry(200, "crlf"),
            Entry(5, "plus"),
            Entry(10, "ten"),  # (decimal, as sscanf's %d reads it: not octal)
        )
    )


def test_the_name_is_the_word_after_the_number_as_sscanf_reads_it() -> None:
    # "%d %s": the name runs to the next white space, a "#" in it included; a word after
    # the name is ignored; the number and the name need no space between them.
    text = "100 a#b\n101 c extra words\n102d\n"
    assert names_of(text) == {"a#b": 100, "c": 101, "d": 102}


def test_a_line_of_another_shape_ends_the_file_as_in_iproute2() -> None:
    text = "100 before\nnonsense line\n101 after\n"
    assert rt_tables.parse(text) == Parsed((Entry(100, "before"),), stopped_at=2)
    for bad in ("7", "100", "studio 100", "\r", "x"):  # (a number alone, a name first, CR)
        parsed = rt_tables.parse(f"1 one\n{bad}\n2 two\n")
        assert parsed == Parsed((Entry(1, "one"),), stopped_at=2), bad


def test_numbers_that_are_negative_or_beyond_a_c_int_are_skipped() -> None:
    # iproute2 reads the number into an int and skips it if negative; a larger one wraps
    # into another table there, which mfcd does not follow.
    text = "-1 negative\n0x-1 hexnegative\n2147483647 largest\n2147483648 large\n0xffffffff x\n"
    text += "4294967396 wraps\n1 last\n"
    assert names_of(text) == {"largest": 2**31 - 1, "last": 1}


def test_a_name_given_twice_is_the_one_iproute2_finds_first() -> None:
    # rtnl_rttable_a2n searches buckets number % 256 from 0 up, each newest entry first.
    assert names_of("300 x\n100 x\n") == {"x": 300}  # 300 % 256 is 44, before 100
    assert names_of("100 x\n300 x\n") == {"x": 300}
    assert names_of("100 y\n356 y\n") == {"y": 356}  # the same bucket: the last read
    assert names_of("356 y\n100 y\n") == {"y": 100}
    entries = (*rt_tables.BUILTIN, Entry(100, "main"), Entry(510, "local"), Entry(511, "default"))
    # A built-in name is overridden by a file's in a lower or the same bucket only.
    assert rt_tables.resolve(entries) == {"default": 253, "main": 100, "local": 510}


def test_drop_ins_are_x_conf_usr_ones_unless_etc_has_the_name_then_etc_ones() -> None:
    usr = ["b.conf", "a.conf", "c.conf", "README", ".hidden.conf", "d.conf.bak"]
    etc = ["c.conf", "z.conf", ".conf", "a.conf.disabled", "conf", "y.conf"]
    assert rt_tables.dropin_paths("/u", usr, "/e", etc) == [
        "/u/a.conf",
        "/u/b.conf",
        "/e/c.conf",
        "/e/y.conf",
        "/e/z.conf",
    ]


# --- reading the files ----------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An empty etc and usr directory of iproute2 (neither holding rt_tables yet)."""
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    etc.mkdir()
    usr.mkdir()
    return etc, usr


def read(dirs: tuple[Path, Path]) -> rt_tables.Tables:
    return rt_tables.read(str(dirs[0]), str(dirs[1]))


def test_without_files_the_built_in_names_are_known(dirs: tuple[Path, Path]) -> None:
    assert read(dirs).names == {"default": 253, "main": 254, "local": 255}


def test_the_usr_file_is_read_only_when_the_etc_file_does_not_exist(
    dirs: tuple[Path, Path],
) -> None:
    etc, usr = dirs
    (usr / "rt_tables").write_text("100 usr\n")
    assert read(dirs).names["usr"] == 100
    (etc / "rt_tables").write_text("")  # (empty, yet there: usr's is not read)
    assert "usr" not in read(dirs).names


def test_drop_ins_of_both_directories_are_read_after_the_main_file(
    dirs: tuple[Path, Path],
) -> None:
    etc, usr = dirs
    (etc / "rt_tables").write_text("100 main_file\n356 shared\n")
    (etc / "rt_tables.d").mkdir()
    (usr / "rt_tables.d").mkdir()
    (usr / "rt_tables.d" / "vendor.conf").write_text("200 vendor\n")
    (usr / "rt_tables.d" / "site.conf").write_text("300 hidden_by_etc\n")
    (etc / "rt_tables.d" / "site.conf").write_text("301 site\n100 shared\n")
    (etc / "rt_tables.d" / "notes.txt").write_text("400 not_read\n")
    (etc / "rt_tables.d" / "dir.conf").mkdir()  # (unreadable as a file: passed over)
    tables = read(dirs)
    assert tables.names == {
        "default": 253,
        "main": 254,
        "local": 255,
        "main_file": 100,
        "shared": 100,  # the drop-in's, read after the main file's 356 (the same bucket)
        "vendor": 200,
        "site": 301,
    }
    assert tables.problems == ()


def test_the_line_where_reading_stopped_is_told(dirs: tuple[Path, Path]) -> None:
    etc, _usr = dirs
    (etc / "rt_tables").write_text("100 before\n\nbroken\n101 after\n")
    tables = read(dirs)
    assert tables.names["before"] == 100 and "after" not in tables.names
    assert tables.problems == (f"{etc}/rt_tables line 3",)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def names(dirs: tuple[Path, Path], clock: Clock) -> rt_tables.Names:
    return rt_tables.Names(str(dirs[0]), str(dirs[1]), interval=1.0, clock=clock)


def studio(dirs: tuple[Path, Path]) -> tuple[Path, Clock, rt_tables.Names]:
    """etc/rt_tables naming table 100 studio; a clock standing still; the Names of the files."""
    etc, _usr = dirs
    (etc / "rt_tables").write_text("100 studio\n")
    clock = Clock()
    return etc / "rt_tables", clock, names(dirs, clock)


def counted(monkeypatch: pytest.MonkeyPatch, function: str) -> list[None]:
    """A list that grows by one at each call of rt_tables.`function`."""
    calls: list[None] = []
    original = getattr(rt_tables, function)

    def count(*args: Any) -> Any:
        calls.append(None)
        return original(*args)

    monkeypatch.setattr(rt_tables, function, count)
    return calls


def test_a_name_added_is_known_at_once(dirs: tuple[Path, Path]) -> None:
    file, _clock, known = studio(dirs)  # (the clock stands still: only a miss looks again)
    assert known.get("studio") == 100
    assert known.get("later") is None
    etc = file.parent
    with file.open("a") as f:
        f.write("500 later\n")
    assert known.get("later") == 500
    (etc / "rt_tables.d").mkdir()
    (etc / "rt_tables.d" / "more.conf").write_text("600 more\n")
    assert known.get("more") == 600


def test_a_name_changed_or_removed_is_seen_within_the_interval(dirs: tuple[Path, Path]) -> None:
    etc, _usr = dirs
    (etc / "rt_tables.d").mkdir()
    dropin = etc / "rt_tables.d" / "site.conf"
    dropin.write_text("100 studio\n")
    clock = Clock()
    known = names(dirs, clock)
    assert known.get("studio") == 100
    dropin.write_text("200 studio\n")  # (in place: the directory does not change)
    assert known.get("studio") == 100  # not looked at again yet
    clock.now += 1.0
    assert known.get("studio") == 200
    dropin.unlink()
    clock.now += 1.0
    assert known.get("studio") is None


def test_found_names_cost_no_stat_within_the_interval(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _file, clock, known = studio(dirs)
    checks = counted(monkeypatch, "stamp")
    for _ in range(100_000):  # a batch naming its table on every line
        assert known.get("studio") == 100
    assert len(checks) == 1
    clock.now += 1.0
    assert known.get("studio") == 100
    assert len(checks) == 2  # unchanged: not read again


def test_files_unchanged_are_not_read_again(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _file, _clock, known = studio(dirs)
    reads = counted(monkeypatch, "read")
    for _ in range(3):
        assert known.get("nosuch") is None
    assert len(reads) == 1  # (the first lookup)


# --- validation -----------------------------------------------------------------------------------


def test_validation_resolves_default_per_family_and_names_from_the_files() -> None:
    given = {"studio": 100, "unspec": 0}
    assert validate.table_of(None, 4, given) == 253
    assert validate.table_of("default", 6, given) == 254
    assert validate.table_of("studio", 6, given) == 100
    assert validate.table_of("42", 4, given) == 42
    for bad in ("unspec", "nosuch"):
        with pytest.raises(InvalidArgument, match="is not a table name"):
            validate.table_of(bad, 4, given)


def test_validation_follows_the_files_as_they_change(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    file, clock, known = studio(dirs)
    monkeypatch.setattr(validate, "_table_names", known)
    assert validate.route_key_of("10.0.0.1", "239.1.1.1", "studio")[3] == 100
    with pytest.raises(InvalidArgument, match="'later' is not a table name"):
        validate.route_key_of("10.0.0.1", "239.1.1.1", "later")
    file.write_text("100 studio\n500 later\n")
    assert validate.route_key_of("10.0.0.1", "239.1.1.1", "later")[3] == 500
    assert validate.template_key_of(None, "239.1.0.0/16", "eth0", "later")[3] == 500
    file.write_text("101 studio\n500 later\n")
    clock.now += 1.0
    assert validate.table_of("studio", 6) == 101


def test_a_refusal_tells_where_reading_a_file_stopped(
    dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    etc, _usr = dirs
    (etc / "rt_tables").write_text("100 studio\n100\n500 later\n")
    monkeypatch.setattr(validate, "_table_names", names(dirs, Clock()))
    with pytest.raises(InvalidArgument) as refused:
        validate.table_of("later", 4)
    assert str(refused.value).endswith(
        "no line after one that is not NUMBER NAME is read: " + f"{etc}/rt_tables line 2"
    )


def test_a_route_key_takes_a_table_given_as_text_each_time_the_same() -> None:
    # (the IPv4 path remembers "100" -> 100 for the lines of a batch; refusals stay refusals)
    for _ in range(2):
        assert validate.route_key_of("10.0.0.1", "239.1.1.1", "100")[3] == 100
        assert validate.route_key_of("10.0.0.1", "239.1.1.1", 7)[3] == 7
        assert validate.route_key_of("10.0.0.1", "239.1.1.1", "default")[3] == 253
        for bad in ("0", "4294967296", True, "-1"):
            with pytest.raises(InvalidArgument):
                validate.route_key_of("10.0.0.1", "239.1.1.1", bad)

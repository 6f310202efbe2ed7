"""Tests for mfcd.batchscan: a batch text's usual lines read by one regular expression give
exactly what batchfile.lines gives, every other line is batchfile.lines' own."""

from __future__ import annotations

import random
import re
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfcd import batchfile, batchscan, validate
from mfcd.errors import InvalidArgument

USUAL = "add --source 10.0.0.{n} --group 239.1.1.{n} --iif r0 --oifs r1"
# Lines around and between usual ones: each is either another shape or a near miss of the
# usual one that the expression must leave to the general parser.
OTHERS = [
    "",
    "# a comment",
    "mfc add --source 10.0.0.7 --group 239.1.1.7 --iif r0 --oifs r1",  # usual, with mfc
    "add --source 10.0.0.8 --group 239.1.1.8 --iif r0 --oifs r1,r2",
    "add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r1 r2",
    "mfc add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r1,r2,r3 --table 7",
    "add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r3 r1,r2",  # mixed spellings
    "add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r1, r2",  # comma and space
    "add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r1  r2",  # two spaces
    "add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r1 r2 ",  # trailing space
    "add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r1,r1",  # refused later
    "add  --source 10.0.0.10 --group 239.1.1.10 --iif r0 --oifs r1",  # two spaces
    "add --source 10.0.0.11 --group 239.1.1.11 --iif r0 --oifs r1 ",  # trailing space
    "add --source 10.0.0.12 --group 239.1.1.12 --iif r0 --oifs r1  # note",
    "add --source 10.0.0.13 --group 239.1.1.13 --iif 'r0' --oifs r1",
    "add --source * --group 239.1.1.14 --iif r0 --oifs r1",
    "add --source 10.0.0.0/8 --group 239.1.2.0/24 --iif r0 --oifs r1",
    "add --source 2001:db8::1 --group ff3e::1 --iif r0 --oifs r1",  # usual, IPv6
    "add --source 10.0.0.16 --group 239.1.1.16 --iif r0 --oifs eth+",  # usual, a wildcard
    "add --source 10.0.0.17 --group 239.1.1.17 --iif r0 --oifs r1 --table 100",
    "del --source 10.0.0.18 --group 239.1.1.18",
    "join --interface r0 --group 239.1.1.19",
]
WRONG = [  # near misses that batchfile refuses
    "add --source 'x",
    "add --source 10.0.0.20 --group 239.1.1.20 --iif -r0 --oifs r1",
    "madd --source 10.0.0.21 --group 239.1.1.21 --iif r0 --oifs r1",
    "add --source 10.0.0.22 --group 239.1.1.22 --iif r0 --oifs r1,,r2",
    "add --source 10.0.0.23 --group 239.1.1.23 --iif r0 --oifs r1,r2,",
    "add --source 10.0.0.24 --group 239.1.1.24 --iif r0 --oifs ,r1",
    "add --source 10.0.0.25 --group 239.1.1.25 --iif r0 --oifs r1 -r2",
]


def text_of(lines: list[str], end: str = "") -> str:
    return "\n".join(lines) + end


@pytest.mark.parametrize("end", ["", "\n"])
def test_every_line_as_batchfile_reads_it_with_the_same_numbers(end: str) -> None:
    lines = []
    for n, other in enumerate(OTHERS):
        lines += [USUAL.format(n=n), other, other, USUAL.format(n=n + 100)]
    text = text_of(lines, end)
    assert list(batchscan.lines(text)) == list(batchfile.lines(text))
    only_usual = text_of([USUAL.format(n=n) for n in range(50)], end)
    assert list(batchscan.lines(only_usual)) == list(batchfile.lines(only_usual))
    assert list(batchscan.lines(text_of(OTHERS, end))) == list(batchfile.lines(text_of(OTHERS)))


def test_other_line_ends_go_to_batchfile() -> None:
    text = USUAL.format(n=1) + "\r\n" + USUAL.format(n=2) + "\r\n"
    assert list(batchscan.lines(text)) == list(batchfile.lines(text))
    assert [change[0] for change in batchscan.lines(text)] == [1, 2]


@pytest.mark.parametrize("wrong", WRONG)
def test_a_syntax_problem_names_its_line_in_the_whole_text(wrong: str) -> None:
    text = text_of([USUAL.format(n=1), USUAL.format(n=2), wrong, USUAL.format(n=3)])
    with pytest.raises(batchfile.SyntaxProblem) as scanned:
        list(batchscan.lines(text))
    with pytest.raises(batchfile.SyntaxProblem) as general:
        list(batchfile.lines(text))
    assert scanned.value.line == general.value.line == 3
    assert str(scanned.value) == str(general.value)


# --- pieces: runs of usual IPv4 adds as columns ---------------------------------------------------


def expanded(text: str) -> list[batchfile.Change]:
    """batchscan.pieces(text) with each Run spelt out as the lines batchfile.lines gives."""
    out: list[batchfile.Change] = []
    for piece in batchscan.pieces(text):
        if isinstance(piece, batchscan.Run):
            columns = zip(*piece[1:], strict=True)
            for i, (source, group, iif, oifs, table) in enumerate(columns):
                names = batchscan.oif_names(oifs)
                out.append((piece.line + i, "add", source, group, iif, names, table))
        else:
            out.append(piece)
    return out


NEAR_VALID = [  # usual lines whose addresses or table the columns must leave to validation
    "add --source 127.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
    "add --source 10.0.0.1 --group 224.0.0.5 --iif r0 --oifs r1",
    "add --source 010.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
    "add --source 10.0.0.1 --group 239.1.1.256 --iif r0 --oifs r1",
    "add --source 239.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
    "add --source 10.0.0.1 --group 240.1.1.1 --iif r0 --oifs r1",
    "add --source 0.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
    "add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table default",
    "add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table 100",
    "mfc add --source 10.0.0.1 --group 224.1.0.0 --iif r0 --oifs r1 --table 7",
]


@pytest.mark.parametrize("end", ["", "\n"])
@pytest.mark.parametrize("part_chars", [batchscan.PART_CHARS, 1, 40, 200])
def test_pieces_are_the_lines_of_batchfile_with_runs_as_columns(
    end: str, part_chars: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the parts the text is split into (PART_CHARS), the runs spelt out line by
    line and the other lines between them are what batchfile.lines reads, numbered alike."""
    monkeypatch.setattr(batchscan, "PART_CHARS", part_chars)
    lines = []
    for n, other in enumerate(OTHERS + NEAR_VALID):
        lines += [USUAL.format(n=n), other, other, USUAL.format(n=n + 100)]
    for text in (
        text_of(lines, end),
        text_of([USUAL.format(n=n) for n in range(50)], end),
        text_of(OTHERS + NEAR_VALID, end),
        "\n\n" + text_of(lines, end),
        "",
    ):
        assert expanded(text) == list(batchfile.lines(text))
    runs = [p for p in batchscan.pieces(text_of(lines, end)) if isinstance(p, batchscan.Run)]
    assert runs, "the usual lines came as runs"


@pytest.mark.parametrize("wrong", WRONG)
def test_pieces_name_a_syntax_problem_in_the_whole_text(wrong: str) -> None:
    text = text_of([USUAL.format(n=1), USUAL.format(n=2), wrong, USUAL.format(n=3)])
    with pytest.raises(batchfile.SyntaxProblem) as scanned:
        list(batchscan.pieces(text))
    with pytest.raises(batchfile.SyntaxProblem) as general:
        list(batchfile.lines(text))
    assert scanned.value.line == general.value.line == 3
    assert str(scanned.value) == str(general.value)


SEVERAL = [  # usual lines of several oifs, as written, and the names batchfile reads
    ("r1,r2", ["r1", "r2"]),
    ("r1 r2", ["r1", "r2"]),
    ("r3,r1,r2", ["r3", "r1", "r2"]),
    ("r3 r1,r2", ["r3", "r1", "r2"]),
    ("eth0.5 br-x@y", ["eth0.5", "br-x@y"]),
    (",".join(f"o{i}" for i in range(40)), [f"o{i}" for i in range(40)]),  # (refused later)
]


@pytest.mark.parametrize("table", ["", " --table 100"])
def test_lines_of_several_oifs_come_as_runs(table: str) -> None:
    """Lines of several oifs, comma- or space-separated, one set or different sets on
    consecutive lines: one Run, each line's oifs as written, which oif_names reads into
    the names batchfile reads."""
    lines = [
        f"add --source 10.0.0.{n + 1} --group 239.1.1.{n} --iif r0 --oifs {oifs}{table}"
        for n, (oifs, _) in enumerate(SEVERAL * 3)
    ]
    text = text_of(lines, "\n")
    (run,) = batchscan.pieces(text)
    assert isinstance(run, batchscan.Run)
    assert run.oifs == [oifs for oifs, _ in SEVERAL * 3]
    assert [batchscan.oif_names(oifs) for oifs in run.oifs] == [n for _, n in SEVERAL * 3]
    assert expanded(text) == list(batchfile.lines(text)) == list(batchscan.lines(text))
    # One set on every line (a generated file): the same Run, read around the addresses.
    same = text_of([line.replace("--oifs r1,r2", "--oifs r2 r1") for line in lines[::6]], "\n")
    (uniform,) = batchscan.pieces(same)
    assert isinstance(uniform, batchscan.Run)
    assert uniform == batchscan._uniform(same, 0)
    assert uniform.oifs == ["r2 r1"] * 3


OCTETS = ["0", "1", "00", "01", "9", "10", "99", "100", "126", "127", "128", "199", "200"]
OCTETS += ["223", "224", "225", "239", "240", "249", "250", "255", "256", "300", "1000"]


def test_a_run_takes_exactly_the_addresses_route_key_of_takes_as_they_are() -> None:
    """Every IPv4 source and group a Run holds is valid and canonical (route_key_of gives
    them back unchanged), and every such pair is taken into a Run but for sources in 0/8
    (valid, and rare: left to the line-by-line path)."""
    quads = [f"{a}.{b}.{c}.1" for a in OCTETS for b in ("0", "1", "01") for c in ("0", "255")]
    quads += [f"{a}.1.1.{d}" for a in ("10", "224") for d in OCTETS]
    for source in quads[::3]:
        for group in quads:
            line = f"add --source {source} --group {group} --iif r0 --oifs r1"
            taken = any(isinstance(p, batchscan.Run) for p in batchscan.pieces(line))
            try:
                valid = validate.route_key_of(source, group) == (4, source, group, 253)
            except InvalidArgument:
                valid = False
            assert taken == (valid and not source.startswith("0.")), (source, group)


# --- uniform parts: a generated file's lines read at the strings around their addresses -----------

SHAPES = [  # lines the expression takes, around their addresses
    "add --source {s} --group {g} --iif r0 --oifs r1",
    "mfc add --source {s} --group {g} --iif eth0.5 --oifs br-x@y",
    "add --source {s} --group {g} --iif r0 --oifs r1 --table 100",
    "mfc add --source {s} --group {g} --iif r1 --oifs r0 --table 0",
    "add --source {s} --group {g} --iif r0 --oifs r1,r2,r3",
    "mfc add --source {s} --group {g} --iif r0 --oifs r1 r2 --table 100",
]
ADDRESSES = [f"{a}.{b}.1.{d}" for a in OCTETS for b in ("0", "01") for d in ("0", "255", "00")]
# A line changed so that the text is no longer uniform, or its address not valid.
MUTATIONS: list[Callable[[str], str]] = [
    lambda line: line.replace("--iif r0", "--iif r2"),
    lambda line: line.replace("--oifs", "--oifs  "),
    lambda line: line.replace("--oifs ", "--oifs r7,"),
    lambda line: line.replace("--oifs ", "--oifs r7 "),
    lambda line: line.replace("mfc add", "add") if line.startswith("mfc") else "mfc " + line,
    lambda line: line + " ",
    lambda line: line + " --table 7",
    lambda line: line.replace("--group ", "--group 1"),
    lambda line: line.replace("--source ", "--source 0"),
    lambda line: line.replace(" --group ", " --group 239.1.1.1 --group "),
    lambda line: line.replace(" --group ", "\n"),
    lambda line: line + "\n",
    lambda line: "",
    lambda line: "# " + line,
    lambda line: line.replace("add", "del"),
]


def uniform_text(rng: random.Random, count: int) -> str:
    shape = rng.choice(SHAPES)
    sources = [f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 256)}"]
    sources += [f"198.18.0.{n}" for n in range(1, 4)]
    lines = []
    for _ in range(count):
        source = rng.choice(sources)
        octets = rng.randrange(224, 240), *(rng.randrange(256) for _ in range(3))
        group = ".".join(map(str, octets))
        if rng.random() < 0.05:
            source = rng.choice(ADDRESSES)
        if rng.random() < 0.05:
            group = rng.choice(ADDRESSES)
        lines.append(shape.format(s=source, g=group))
    if rng.random() < 0.5:
        at = rng.randrange(count)
        lines[at] = rng.choice(MUTATIONS)(lines[at])
    return "\n".join(lines) + ("\n" if rng.random() < 0.9 else "")


def test_a_uniform_part_is_read_as_the_split_reads_it() -> None:
    """Over 1,500 random parts of one shape, some with a line changed (another interface,
    spacing, prefix or table, an extra word, a near-miss address anywhere in it, a comment,
    a blank line, no last newline), the uniform reading gives exactly the one Run the split
    by _VALID gives, or nothing (and the split reads the part as before); it reads every
    part the split reads as one Run whose lines differ only in their addresses and end in
    a newline."""
    rng = random.Random(12)
    taken = 0
    for _ in range(1_500):
        text = uniform_text(rng, rng.choice([1, 2, 3, 17, 200]))
        before = rng.randrange(10_000)
        run = batchscan._uniform(text, before)
        try:
            split = list(batchscan._split_pieces(text, before))
        except batchfile.SyntaxProblem:
            assert run is None, text
            continue
        one_run = len(split) == 1 and isinstance(split[0], batchscan.Run)
        # (a last line without its newline is left to the split: one part at most)
        shapes = {re.sub(r"--source \S+ --group \S+", "", line) for line in text.split("\n")[:-1]}
        same = len(shapes) == 1 and text.endswith("\n")
        assert (run is not None) == (one_run and same), text
        if run is not None:
            assert [run] == split
            taken += 1
        assert list(batchscan._part_pieces(text, before)) == split
    assert 250 < taken < 1_500


def test_a_large_uniform_text_is_read_as_the_split_reads_it() -> None:
    """A text of many parts (PART_CHARS each), all of one shape, comes as one Run a part,
    equal to what the split by _VALID gives, with the whole text's line numbers."""
    lines = [
        f"mfc add --source 10.1.{n // 250 % 250}.{n % 250 + 1} --group 232.{n >> 16 & 255}"
        f".{n >> 8 & 255}.{n & 255} --iif r0 --oifs r1"
        for n in range(60_000)
    ]
    text = "\n".join(lines) + "\n"
    pieces = list(batchscan.pieces(text))
    assert len(pieces) > 2 and all(isinstance(piece, batchscan.Run) for piece in pieces)
    assert expanded(text) == list(batchfile.lines(text))


# --- interface names too long to be valid: read as the split reads them, at its cost ----------

long_shape = st.builds(
    "{}add --source {{s}} --group {{g}} --iif {} --oifs {}{}".format,
    st.sampled_from(["", "mfc "]),
    st.sampled_from(["r0", "i" * 15, "i" * 16, "eth0." + "9" * 40]),
    st.sampled_from(["r1", "o" * 15, "o" * 16, "br-" + "x" * 300]),
    st.sampled_from(["", " --table 100"]),
)


@settings(max_examples=200, deadline=None)
@given(
    shape=long_shape,
    pairs=st.lists(
        st.tuples(
            st.sampled_from([*ADDRESSES[:8], "10.0.0.1", "198.18.0.2"]),
            st.sampled_from(["239.1.1.1", "224.0.0.5", "224.0.1.5", "239.01.1.1"]),
        ),
        min_size=1,
        max_size=30,
    ),
    end=st.sampled_from(["\n", ""]),
)
def test_long_interface_names_are_read_as_the_split_reads_them(
    shape: str, pairs: list[tuple[str, str]], end: str
) -> None:
    """Lines of one shape whose interface names may be longer than IFNAMSIZ - 1 (refused
    later): pieces() gives what the split by _VALID gives, and the uniform reading leaves
    every text with such a name to it."""
    text = "\n".join(shape.format(s=s, g=g) for s, g in pairs) + end
    try:
        split = list(batchscan._split_pieces(text, 0))
    except batchfile.SyntaxProblem as e:
        with pytest.raises(batchfile.SyntaxProblem) as raised:
            list(batchscan.pieces(text))
        assert (raised.value.line, str(raised.value)) == (e.line, str(e))
        return
    assert list(batchscan.pieces(text)) == split
    names = re.search(r"--iif (\S+) --oifs (\S+)", text)
    assert names is not None
    if max(map(len, names.groups())) > validate.IFNAMSIZ - 1:
        assert batchscan._uniform(text, 0) is None


@pytest.mark.parametrize("names_checked", [True, False])
def test_a_long_line_costs_memory_in_proportion_to_it(
    monkeypatch: pytest.MonkeyPatch, names_checked: bool
) -> None:
    """A uniform part whose oif name is 2 MB is read with a few times its size in memory,
    and nothing is kept: neither when the name's length sends it to the split, nor when
    the uniform reading takes it (as it would a name of any length, IFNAMSIZ aside). No
    expression is made of the text (one of 2 MB cost 240 MiB, and was kept in a cache)."""
    monkeypatch.setattr(batchscan, "PART_CHARS", 1 << 23)  # (one part)
    if not names_checked:
        monkeypatch.setattr(batchscan, "IFNAMSIZ", 1 << 30, raising=False)
    line = "mfc add --source 10.0.0.{} --group 239.1.1.1 --iif r0 --oifs " + "a" * 2_000_000
    text = "".join(line.format(n) + "\n" for n in (1, 2))
    compiled = re._cache.copy()  # type: ignore[attr-defined]
    tracemalloc.start()
    try:
        pieces = list(batchscan.pieces(text))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(pieces) == 1 and isinstance(pieces[0], batchscan.Run)
    assert peak < 6 * len(text)
    assert re._cache.keys() <= compiled.keys()  # type: ignore[attr-defined]


def test_groups_and_sources_are_checked_in_bulk_as_the_expression_checks_them() -> None:
    """_valid_groups and _valid_sources say of random lists what _GROUP4 and _SOURCE4 say
    of each address: 224.0.0.0/24 found in the packed bytes, not where a 224 and two 0
    stand elsewhere (239.224.0.0, 224.1.0.0, 0.224.0.0)."""
    rng = random.Random(7)
    near = ["224.0.0.0", "224.0.0.255", "224.0.1.0", "224.1.0.0", "239.224.0.0", "225.0.0.1"]
    near += ["0.224.0.0", "10.224.0.0", "127.0.0.1", "223.0.0.1", "224.00.0.1", "239.1.1.1"]
    near += ADDRESSES
    group4 = re.compile(batchscan._GROUP4)
    source4 = re.compile(batchscan._SOURCE4)
    for _ in range(3_000):
        addresses = rng.choices(near, k=rng.choice([1, 2, 5, 40]))
        if rng.random() < 0.5:  # mostly valid, one near miss at most
            addresses = ["239.2.2.2"] * 30 + addresses[:1]
        expected = all(group4.fullmatch(a) for a in addresses)
        assert batchscan._valid_groups(addresses) == expected, addresses
        expected = all(source4.fullmatch(a) for a in addresses)
        assert batchscan._valid_sources(addresses) == expected, addresses


@pytest.mark.parametrize(
    ("oifs", "uniform"),
    [
        (",".join(f"o{i}" for i in range(validate.MAX_OIFS)), True),
        (",".join(f"o{i}" for i in range(validate.MAX_OIFS + 1)), False),  # too many
        (" ".join(f"o{i}" for i in range(validate.MAX_OIFS + 1)), False),
        ("r1," + "o" * 15, True),
        ("r1," + "o" * 16, False),  # a name too long
        ("o" * 16 + " r1", False),
    ],
)
def test_a_uniform_tail_is_short_or_left_to_the_split(oifs: str, uniform: bool) -> None:
    """A generated file's oifs are read at the strings around the addresses only when they
    could be valid (at most MAX_OIFS names of at most IFNAMSIZ - 1 characters): the tail
    to look for stays short. Either way the pieces are those of the split."""
    text = "".join(
        f"add --source 10.0.0.{n} --group 239.1.1.1 --iif r0 --oifs {oifs}\n" for n in (1, 2, 3)
    )
    assert (batchscan._uniform(text, 0) is not None) == uniform
    assert list(batchscan.pieces(text)) == list(batchscan._split_pieces(text, 0))
    assert expanded(text) == list(batchfile.lines(text))

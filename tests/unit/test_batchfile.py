"""Tests for mfcd.batchfile: the `mfc add|del` line syntax of batch texts."""

from __future__ import annotations

import pytest

from mfcd import batchfile


def ops(*lines: str) -> list[batchfile.Change]:
    return list(batchfile.lines("\n".join(lines)))


def test_comments_and_blank_lines_are_skipped_and_lines_keep_their_numbers() -> None:
    assert ops(
        "# routes for the lab",
        "",
        "   ",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1,r2  # two oifs",
        "add --source 10.0.0.2 --group 239.1.1.1 --iif r0 --oifs r1 r2",
        "mfc del --source 10.0.0.3 --group 239.1.1.1",
        "\tdel   --group ff0e::1 --source 2001:db8::1",
    ) == [
        (4, "add", "10.0.0.1", "239.1.1.1", "r0", ["r1", "r2"], None),
        (5, "add", "10.0.0.2", "239.1.1.1", "r0", ["r1", "r2"], None),
        (6, "del", "10.0.0.3", "239.1.1.1", "", None, None),
        (7, "del", "2001:db8::1", "ff0e::1", "", None, None),
    ]


def test_the_generated_shape_and_the_general_parser_agree() -> None:
    fast = "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1,r2"
    # The same words in another order take the general path.
    slow = "mfc add --group 239.1.1.1 --source 10.0.0.1 --oifs r1,r2 --iif r0"
    assert ops(fast) == ops(slow)
    with pytest.raises(batchfile.SyntaxProblem, match="empty interface name"):
        ops(fast + ",,")  # an empty name between commas is refused on both paths
    with pytest.raises(batchfile.SyntaxProblem, match="empty interface name"):
        ops(slow.replace("r1,r2", "r1,,r2"))
    # One oif takes the shortest path of all; it agrees with the general one too.
    assert ops(fast.replace(",r2", "")) == ops(slow.replace(",r2", ""))
    assert ops(fast.replace(",r2", "")) == [(1, "add", "10.0.0.1", "239.1.1.1", "r0", ["r1"], None)]


def test_oif_lines_add_or_remove_oifs_of_a_route() -> None:
    assert ops(
        "mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs r3",
        "oif del --group 239.1.1.1 --source 10.0.0.1 --oifs r1,r2  # two",
        "mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs r4 r5",
    ) == [
        (1, "oif_add", "10.0.0.1", "239.1.1.1", "", ["r3"], None),
        (2, "oif_del", "10.0.0.1", "239.1.1.1", "", ["r1", "r2"], None),
        (3, "oif_add", "10.0.0.1", "239.1.1.1", "", ["r4", "r5"], None),
    ]
    words = ["mfc", "oif", "del", "--source", "s", "--group", "g", "--oifs=r1"]
    assert batchfile.line_op(words) == {
        "op": "oif_del",
        "source": "s",
        "group": "g",
        "oifs": ["r1"],
    }


def general(line: str) -> list[batchfile.Change] | str:
    """What the general parser (line_op) makes of one line, or its error message."""
    try:
        op = batchfile.line_op(line.split())
    except ValueError as e:
        return str(e)
    return [
        (1, op["op"], op["source"], op["group"], op.get("iif", ""), op.get("oifs"), op.get("table"))
    ]


@pytest.mark.parametrize(
    "line",
    [
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
        "add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1,r2",
        "add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 r2 r3",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1, ,r2",
        "mfc del --source 10.0.0.1 --group 239.1.1.1",
        "del --source 10.0.0.1 --group 239.1.1.1",
        # Near misses: each must give the general parser's answer or error.
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs ,",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --oifs r2",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 -v",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif -r0 --oifs r1",
        "mfc add --source -x --group 239.1.1.1 --iif r0 --oifs r1",
        "mfc del --source 10.0.0.1 --group 239.1.1.1 --iif r0",
        "mfc del --source 10.0.0.1 --group --oifs",
        "del --source 10.0.0.1 --group 239.1.1.1 extra",
        "mfc mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
        "mfc show --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1",
        # A table at the end (the shape of a batch into another table), and near misses.
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table 100",
        "add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1,r2 --table studio",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 r2 --table default",
        "mfc del --source 10.0.0.1 --group 239.1.1.1 --table 100",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs --table 100",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table -1",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table 1 --table 2",
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs --table --table 2",
        "mfc del --source 10.0.0.1 --group 239.1.1.1 --table 1 --table 2",
        "mfc del --source 10.0.0.1 --group 239.1.1.1 --iif r0 --table 1",
        "mfc del --source 10.0.0.1 --group --table 1",
        "del --source 10.0.0.1 --group 239.1.1.1 extra --table 1",
    ],
)
def test_every_fast_line_shape_agrees_with_the_general_parser(line: str) -> None:
    try:
        got: list[batchfile.Change] | str = ops(line)
    except batchfile.SyntaxProblem as e:
        got = str(e)
    assert got == general(line)


def test_equals_and_quotes_work_like_on_the_command_line() -> None:
    assert ops(
        'mfc add --source="10.0.0.1" --group 239.1.1.1 --iif r0 --oifs r1 r2  # two oifs',
        "mfc del --source '10.0.0.2' --group=239.1.1.2",
    ) == [
        (1, "add", "10.0.0.1", "239.1.1.1", "r0", ["r1", "r2"], None),
        (2, "del", "10.0.0.2", "239.1.1.2", "", None, None),
    ]


def test_a_text_without_a_final_newline_and_with_crlf_line_ends() -> None:
    text = "mfc del --source 10.0.0.1 --group 239.1.1.1\r\nmfc del --source 10.0.0.2 --group g"
    assert [(n, source) for n, _, source, *_ in batchfile.lines(text)] == [
        (1, "10.0.0.1"),
        (2, "10.0.0.2"),
    ]
    assert list(batchfile.lines("")) == []


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("mfc show", "expected `mfc add ...`, `mfc del ...`, `mfc oif add|del ...`, `join ...`"),
        ("mfc oif show --source s --group g --oifs r1", "expected `mfc oif add|del ...`"),
        ("oif", "expected `mfc oif add|del ...`"),
        ("mfc oif add --source s --group g --iif r0 --oifs r1", "`mfc oif add` takes no --iif"),
        ("mfc oif del --source s --group g", "`mfc oif del` needs --oifs"),
        ("mfc oif del --source s --group g --oifs ,", "--oifs has an empty interface name"),
        ("mfc oif add --source s --group g --oifs r1,,r2", "--oifs has an empty interface name"),
        ("mfc", "expected `mfc add ...`"),
        ("vif set r1 --threshold 3", "expected `mfc add ...`"),
        ("mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0", "needs --oifs"),
        ("mfc add --source 10.0.0.1 --group 239.1.1.1 --oifs r1", "needs --iif"),
        ("mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs ,", "an empty interface"),
        ("mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1,,r2", "an empty"),
        ("mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1,", "an empty"),
        ("mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 ,, r2", "an empty"),
        ("mfc oif add --group 239.1.1.1 --oifs r1", "needs --source"),
        ("mfc del --source 10.0.0.1 --group 239.1.1.1 --oifs r0", "takes no --oifs"),
        ("mfc del --source 10.0.0.1 10.0.0.2 --group 239.1.1.1", "--source takes one value"),
        ("mfc del --source 10.0.0.1 --source 10.0.0.2 --group g", "--source given twice"),
        ("mfc add --source s --group g --iif r0 --oifs r1 -o json", "unexpected option -o"),
        ("mfc add --source s --group g --iif -x --oifs r1", "unexpected option -x"),
        ("mfc del --src 10.0.0.1 --group 239.1.1.1", "unexpected option --src"),
        ("mfc del 10.0.0.1 239.1.1.1", "unexpected word '10.0.0.1'"),
        ("mfc del --source 'unclosed --group g", "quotation"),
    ],
)
def test_a_bad_line_is_named_by_its_number(line: str, words: str) -> None:
    good = "mfc del --source 10.0.0.9 --group 239.1.1.1"
    with pytest.raises(batchfile.SyntaxProblem) as info:
        ops("# header", good, "", line, good)
    assert info.value.line == 4
    assert words in str(info.value) and not str(info.value).startswith("line ")


@pytest.mark.parametrize("end", ["\r", "\r\n", "\v", "\f", "\x1c", "\x85", "\u2028", "\u2029"])
def test_every_line_end_of_splitlines_ends_a_line_and_its_comment(end: str) -> None:
    # str.split() takes these for spaces: a "#" comment must not swallow the lines after it.
    text = end.join(
        [
            "# studio routes",
            "mfc del --source 10.0.0.1 --group 239.1.1.1",
            "mfc add --source 10.0.0.2 --group 239.1.1.1 --iif r0 --oifs r1  # one oif",
            "",
        ]
    )
    assert list(batchfile.lines(text)) == [
        (2, "del", "10.0.0.1", "239.1.1.1", "", None, None),
        (3, "add", "10.0.0.2", "239.1.1.1", "r0", ["r1"], None),
    ]


def test_a_line_may_name_its_table() -> None:
    assert ops(
        "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table 100",
        "mfc del --table=default --source 10.0.0.2 --group 239.1.1.1",
        "mfc oif add --source 10.0.0.1 --group 239.1.1.1 --oifs r2 --table studio",
    ) == [
        (1, "add", "10.0.0.1", "239.1.1.1", "r0", ["r1"], "100"),
        (2, "del", "10.0.0.2", "239.1.1.1", "", None, "default"),
        (3, "oif_add", "10.0.0.1", "239.1.1.1", "", ["r2"], "studio"),
    ]
    with pytest.raises(batchfile.SyntaxProblem, match="--table takes one value"):
        ops("mfc del --source 10.0.0.2 --group 239.1.1.1 --table 1 2")


def test_a_generated_line_ending_in_its_table_takes_the_direct_path() -> None:
    # (a batch into a second table parsed as fast as one into the default table: issue 12)
    line = "mfc add --source 10.0.0.1 --group 239.1.1.1 --iif r0 --oifs r1 --table 100"
    assert batchfile._generated(7, line.split()) == (
        7, "add", "10.0.0.1", "239.1.1.1", "r0", ["r1"], "100"
    )  # fmt: skip
    line = "del --source 10.0.0.1 --group 239.1.1.1 --table studio"
    assert batchfile._generated(7, line.split()) == (
        7, "del", "10.0.0.1", "239.1.1.1", "", None, "studio"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("words", "names"),
    [
        (["r1"], ["r1"]),
        (["r1,r2"], ["r1", "r2"]),
        (["r1", "r2"], ["r1", "r2"]),
        (["r1,", "r2"], ["r1", "r2"]),
        (["r1", ",r2"], ["r1", "r2"]),
        (["r1", ",", "r2"], ["r1", "r2"]),
        (["r1,,r2"], None),
        ([","], None),
        (["r1,"], None),
        ([",r1"], None),
        (["r1,", ",r2"], None),
    ],
)
def test_oifs_split_at_commas_and_spaces_and_an_empty_name_is_refused(
    words: list[str], names: list[str] | None
) -> None:
    if names is not None:
        assert batchfile.split_oifs(words) == names
    else:
        with pytest.raises(ValueError, match=r"^--oifs has an empty interface name"):
            batchfile.split_oifs(words)

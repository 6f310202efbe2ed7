"""Tests for mfcd.batchscan: a batch text's usual lines read by one regular expression give
exactly what batchfile.lines gives, every other line is batchfile.lines' own."""

from __future__ import annotations

import pytest

from mfcd import batchfile, batchscan

USUAL = "add --source 10.0.0.{n} --group 239.1.1.{n} --iif r0 --oifs r1"
# Lines around and between usual ones: each is either another shape or a near miss of the
# usual one that the expression must leave to the general parser.
OTHERS = [
    "",
    "# a comment",
    "mfc add --source 10.0.0.7 --group 239.1.1.7 --iif r0 --oifs r1",  # usual, with mfc
    "add --source 10.0.0.8 --group 239.1.1.8 --iif r0 --oifs r1,r2",
    "add --source 10.0.0.9 --group 239.1.1.9 --iif r0 --oifs r1 r2",
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

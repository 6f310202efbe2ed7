"""Reading one response line of JSON as it arrives, a value at a time.

First the members before a long array, then the array's items one at a time (mfcctl's
`show --output json` of 1,000,000 routes).

Stdlib-only (mfcctl imports it). Pure apart from the `read` function it is given, which returns
the next bytes of the stream (b"" at its end).
"""

from __future__ import annotations

import codecs
import json

TYPE_CHECKING = False
if TYPE_CHECKING:  # mfcctl imports this module; typing would cost milliseconds
    from collections.abc import Callable, Iterator
    from typing import Any


class Truncated(ValueError):
    """The stream ended before the response line did."""


class Reader:
    """An object on one line, read a value at a time from `read`; bytes after its newline are
    kept in `rest`."""

    def __init__(self, read: Callable[[], bytes], buffered: bytes = b"") -> None:
        self._read = read
        self._decode = codecs.getincrementaldecoder("utf-8")().decode
        self._text = self._decode(buffered)
        self._pos = 0
        self._decoder = json.JSONDecoder()
        self.rest = b""

    def _more(self) -> None:
        """Read more of the line; Truncated at the end of the stream, ValueError past the
        newline (the line is all there, so what is being parsed is not JSON)."""
        if self._text.find("\n", self._pos) >= 0:
            raise ValueError("not JSON")
        data = self._read()
        if not data:
            raise Truncated("the response ended early")
        self._text = self._text[self._pos :] + self._decode(data)
        self._pos = 0

    def char(self) -> str:
        """The next character that is not white space, consumed."""
        while True:
            text, pos = self._text, self._pos
            while pos < len(text) and text[pos] in " \t\r":
                pos += 1
            self._pos = pos
            if pos < len(text):
                self._pos = pos + 1
                return text[pos]
            self._more()

    def value(self) -> Any:
        """The next JSON value, read whole."""
        self.char()
        self.back()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._text, self._pos)
            except json.JSONDecodeError:
                self._more()
                continue
            if end == len(self._text):  # a number may go on in the next bytes
                try:
                    self._more()
                except (Truncated, ValueError):
                    pass
                else:
                    continue
            self._pos = end
            return value

    def back(self) -> None:
        """Give back the character char() returned last."""
        self._pos -= 1

    def expect(self, wanted: str) -> None:
        got = self.char()
        if got != wanted:
            raise ValueError(f"expected {wanted!r}, found {got!r}")

    def members(self, stop_at: str | None) -> tuple[dict[str, Any], bool]:
        """An object's members after its "{" up to its "}", or up to member `stop_at` whose
        value is an array: then its "[" is consumed and True says so."""
        members: dict[str, Any] = {}
        while True:
            c = self.char()
            if c == "}":
                return members, False
            if c == ",":
                continue
            self.back()
            key = self.value()
            self.expect(":")
            if key == stop_at:
                if self.char() == "[":
                    return members, True
                self.back()
            members[key] = self.value()

    def items(self) -> Iterator[Any]:
        """The items of an array whose "[" is consumed, up to its "]"."""
        while True:
            c = self.char()
            if c == "]":
                return
            if c != ",":
                self.back()
            yield self.value()

    def end(self) -> None:
        """The newline that ends the line; what follows it is kept in `rest`."""
        self.expect("\n")
        self.rest = self._text[self._pos :].encode()


def response(
    read: Callable[[], bytes], member: str, buffered: bytes = b""
) -> tuple[dict[str, Any], Iterator[Any] | None, Reader]:
    """A response line's envelope with its result's members before `member`, and an iterator
    of that member's items if it is an array (None if the result has no such member: an
    error, or a result without it; the envelope is then whole). The iterator ends once the
    line has been read to its newline."""
    reader = Reader(read, buffered)
    reader.expect("{")
    envelope: dict[str, Any] = {}
    while True:
        c = reader.char()
        if c == "}":
            reader.end()
            return envelope, None, reader
        if c == ",":
            continue
        reader.back()
        key = reader.value()
        reader.expect(":")
        if key != "result" or reader.char() != "{":
            if key == "result":
                reader.back()
            envelope[key] = reader.value()
            continue
        result, streaming = reader.members(member)
        envelope["result"] = result
        if streaming:
            return envelope, _items_then_rest(reader, result), reader


def _items_then_rest(reader: Reader, result: dict[str, Any]) -> Iterator[Any]:
    yield from reader.items()
    more, _ = reader.members(None)  # (members after the array, if any: none today)
    result.update(more)
    reader.expect("}")
    reader.end()

"""A kernel writer process: writes runs of packed MFC structures through mfcd's own MRT sockets.

It writes pieces of the runs on another CPU while the daemon goes on with its own work
(kernel.Writer; mfcd runs two side by side on two CPUs).

Started by kernel.Writer as `python -I -S kernel_writer.py` (stdlib only, so it starts in a
few tens of ms) with one end of a Unix stream socket pair as its standard input. It gets:

- a SOCKET frame carrying an MRT socket's descriptor (SCM_RIGHTS) for a slot: the same
  kernel socket as the daemon's, so the kernel takes the calls as the table's owner's;
- a JOB frame (slot, level, optname, size, count) followed by count structures of `size`
  bytes: setsockopt each, in order, and answer one REPORT (how many went in, the errno of
  the one refused); after a refusal every later job is skipped (reported, not written)
  until a RESET frame, so nothing after a refused run reaches the kernel;
- end of file (the daemon stopped or died): it exits, and the MRT sockets it holds close
  with it (their routes live as long as the daemon's own descriptor, never longer).

The framing is pure (pack_*/parse_*) and shared with kernel.py; unit-tested in
tests/unit/test_kernel_writer.py.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections import deque
from collections.abc import Iterator
from itertools import repeat
from operator import itemgetter, length_hint

# Frame header: kind, slot, level, optname, structure size, count of structures.
HEADER = struct.Struct("=BxxxiiiII")
JOB, SOCKET, RESET = 1, 2, 3
# Report per job: routes that went in, errno of the one refused (0: none), status.
REPORT = struct.Struct("=Iii")
DONE, REFUSED, SKIPPED = 0, 1, 2
# Structures read and written at once (a few hundred KiB at most).
PIECE = 8192
_FIRST = itemgetter(0)


def pack_job(slot: int, level: int, optname: int, size: int, count: int) -> bytes:
    return HEADER.pack(JOB, slot, level, optname, size, count)


def pack_socket(slot: int) -> bytes:
    return HEADER.pack(SOCKET, slot, 0, 0, 0, 0)


def pack_reset() -> bytes:
    return HEADER.pack(RESET, 0, 0, 0, 0, 0)


def parse_report(data: bytes) -> tuple[int, int, int]:
    """(done, errno, status) of one REPORT."""
    done, err, status = REPORT.unpack(data)
    return done, err, status


def split(data: bytes | bytearray | memoryview, size: int) -> Iterator[tuple[bytes]]:
    """The structures of `size` bytes in `data` (a torn tail left out), each as a 1-tuple,
    at C speed (struct's iterator: half the cost of slicing a view, and it has a length
    hint, so the loop knows how many it took)."""
    view = memoryview(data)
    return struct.Struct(f"{size}s").iter_unpack(view[: len(view) - len(view) % size])


def _read_exactly(conn: socket.socket, buf: bytearray, n: int) -> bool:
    """Fill buf[:n] from conn; False at end of file."""
    view = memoryview(buf)[:n]
    got = 0
    while got < n:
        k = conn.recv_into(view[got:], n - got, socket.MSG_WAITALL)
        if k == 0:
            return False
        got += k
    return True


def _read_header(conn: socket.socket) -> tuple[bytes, list[int]] | None:
    """One frame header and the descriptors sent with it; None at end of file."""
    data, fds = b"", []
    while len(data) < HEADER.size:
        part, more, _flags, _addr = socket.recv_fds(conn, HEADER.size - len(data), 4)
        if not part:
            return None
        data += part
        fds += more
    return data, fds


def serve(conn: socket.socket) -> None:
    """Carry out frames until end of file."""
    socks: dict[int, socket.socket] = {}
    buf = bytearray()
    failed = False
    while True:
        frame = _read_header(conn)
        if frame is None:
            return
        header, fds = frame
        kind, slot, level, optname, size, count = HEADER.unpack(header)
        if kind == SOCKET:
            old = socks.pop(slot, None)
            if old is not None:
                old.close()
            socks[slot] = socket.socket(fileno=fds[0])
            continue
        if kind == RESET:
            failed = False
            continue
        skipped, refused = failed, False
        done, err = 0, 0
        call = socks[slot].setsockopt
        left = count
        while left:
            n = min(left, PIECE)
            if len(buf) < n * size:
                buf = bytearray(n * size)
            if not _read_exactly(conn, buf, n * size):
                return
            left -= n
            if failed:
                continue
            structs = split(memoryview(buf)[: n * size], size)
            try:
                deque(map(call, repeat(level), repeat(optname), map(_FIRST, structs)), 0)
                done += n
            except OSError as e:
                done += n - length_hint(structs) - 1  # (the one refused was taken)
                err = e.errno or 0
                failed = refused = True
        status = SKIPPED if skipped else REFUSED if refused else DONE
        conn.sendall(REPORT.pack(done, err, status))


def main() -> None:
    conn = socket.socket(fileno=sys.stdin.fileno())
    try:
        serve(conn)
    except (BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        return  # the daemon is gone: so is this process, and the sockets with it


if __name__ == "__main__":
    main()

"""The kernel writer's framing and its loop (kernel_writer.py), without the kernel's MRT
API: the loop is served real setsockopt calls on a UDP socket (IP_TTL, which refuses 0)."""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from queue import SimpleQueue

import pytest

from mfcd import kernel_writer as kw
from mfcd.kernel import Writer, WriterJob, WriterReport
from mfcd.model import AddMfcRun

TTL = struct.Struct("=i")


def test_split_gives_each_structure_and_drops_a_torn_tail() -> None:
    data = b"".join(bytes([i]) * 60 for i in range(5))
    assert [v for (v,) in kw.split(data, 60)] == [bytes([i]) * 60 for i in range(5)]
    assert [v for (v,) in kw.split(data + b"x" * 59, 60)] == [bytes([i]) * 60 for i in range(5)]
    assert list(kw.split(b"", 92)) == []


def test_frames_are_fixed_size_headers() -> None:
    job = kw.HEADER.unpack(kw.pack_job(3, 41, 204, 92, 1_000_000))
    assert job == (kw.JOB, 3, 41, 204, 92, 1_000_000)
    assert kw.HEADER.unpack(kw.pack_socket(7))[:2] == (kw.SOCKET, 7)
    assert kw.HEADER.unpack(kw.pack_reset())[0] == kw.RESET
    report = kw.REPORT.pack(12, errno.EINVAL, kw.REFUSED)
    assert kw.parse_report(report) == (12, errno.EINVAL, kw.REFUSED)


@pytest.fixture
def writer() -> Iterator[tuple[socket.socket, socket.socket]]:
    """The writer's loop in a thread, at the other end of a socket pair, and a UDP socket
    it has been sent (slot 0)."""
    ours, theirs = socket.socketpair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    thread = threading.Thread(target=kw.serve, args=(theirs,))
    thread.start()
    socket.send_fds(ours, [kw.pack_socket(0)], [udp.fileno()])
    try:
        yield ours, udp
    finally:
        ours.close()
        thread.join(timeout=5)
        assert not thread.is_alive()  # end of file ends it
        theirs.close()
        udp.close()


def job(ttls: list[int]) -> bytes:
    data = b"".join(TTL.pack(t) for t in ttls)
    return kw.pack_job(0, socket.IPPROTO_IP, socket.IP_TTL, TTL.size, len(ttls)) + data


def report(conn: socket.socket) -> tuple[int, int, int]:
    return kw.parse_report(conn.recv(kw.REPORT.size, socket.MSG_WAITALL))


def test_the_loop_writes_in_order_and_stops_at_the_refused_one(
    writer: tuple[socket.socket, socket.socket],
) -> None:
    """A job is written in order (the socket keeps the last value); one the kernel refuses
    stops it there and says how many went in and the errno; every later job is skipped
    (its bytes read, nothing written) until a reset; a long job crosses the loop's pieces."""
    conn, udp = writer
    conn.sendall(job([5, 6, 7]))
    assert report(conn) == (3, 0, kw.DONE)
    assert udp.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 7
    conn.sendall(job([9, 10, 0, 11, 12]))
    assert report(conn) == (2, errno.EINVAL, kw.REFUSED)
    assert udp.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 10
    conn.sendall(job([20, 21]))
    assert report(conn) == (0, 0, kw.SKIPPED)
    assert udp.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 10
    conn.sendall(kw.pack_reset())
    n = 3 * kw.PIECE + 5
    conn.sendall(job([1 + i % 200 for i in range(n)]))
    assert report(conn) == (n, 0, kw.DONE)
    assert udp.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 1 + (n - 1) % 200
    bad = 2 * kw.PIECE + 3  # refused in the third piece: counted from the job's start
    conn.sendall(kw.pack_reset() + job([0 if i == bad else 30 for i in range(n)]))
    assert report(conn) == (bad, errno.EINVAL, kw.REFUSED)


def test_collect_takes_the_reports_that_came_and_wait_returns_them_in_order(
    writer: tuple[socket.socket, socket.socket],
) -> None:
    """kernel.Writer.collect against the real loop: the reports that have come are taken
    without waiting (their pieces leave `jobs`), a refusal is noted, and the next wait()
    returns every report since the last one in order (the skipped piece's too), queues the
    reset and starts afresh."""
    ours, _ = writer
    plane = object.__new__(Writer)  # (the loop in a thread stands for the process)
    plane.conn, plane.jobs, plane.queue = ours, deque(), SimpleQueue()
    plane.reports, plane.refused, plane.gone = [], False, False
    ttls = [[5, 6], [7], [0, 9], [8]]  # (the third piece's first is refused, the fourth skipped)
    keys = [(4, "s", "g", 253)]
    pieces = [
        WriterJob(i, 0, len(t), None, AddMfcRun(4, 253, 0, (), keys * len(t)))  # type: ignore[arg-type]
        for i, t in enumerate(ttls)
    ]
    plane.collect()  # (nothing sent: nothing to take, and no wait)
    assert plane.reports == []
    for piece, t in zip(pieces, ttls, strict=True):
        plane.jobs.append(piece)
        ours.sendall(job(t))
    deadline = time.monotonic() + 5
    while plane.jobs and time.monotonic() < deadline:
        plane.collect()
        time.sleep(0.01)
    assert plane.refused and not plane.jobs
    expected = [
        WriterReport(pieces[0], 2, 0, kw.DONE),
        WriterReport(pieces[1], 1, 0, kw.DONE),
        WriterReport(pieces[2], 0, errno.EINVAL, kw.REFUSED),
        WriterReport(pieces[3], 0, 0, kw.SKIPPED),
    ]
    assert plane.reports == expected
    assert plane.load() == 0
    assert plane.wait() == expected
    assert not plane.jobs and not plane.refused and plane.reports == []
    assert plane.queue.get_nowait() == kw.pack_reset()

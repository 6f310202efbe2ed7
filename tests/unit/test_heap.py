"""Tests for mfcd.heap: free C heap memory really goes back to the system, and the controller
asks for it after a bulk change only."""

from __future__ import annotations

import gc

from mfcd import declarations, heap
from mfcd.controller import GROUP_MAX_CHANGES, Controller, Outcome
from mfcd.model import AddRoute, Ports

from .conftest import FakeKernel, FakeState

MIB = 1024 * 1024


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_release_returns_freed_heap_memory_that_free_alone_keeps() -> None:
    heap.release()
    # 96 MiB of 4 KiB blocks: below malloc's mmap threshold, so they come from the heap;
    # one block allocated after them pins the heap's top, so free() alone cannot shrink it.
    blocks = [bytearray(4096) for _ in range(96 * 256)]
    pin = bytearray(4096)
    del blocks
    gc.collect()
    kept = rss()
    assert heap.release()  # glibc (the platform mfcd supports) has malloc_trim
    released = kept - rss()
    assert released > 48 * MIB, f"only {released / MIB:.1f} MiB went back"
    del pin


def test_a_bulk_change_asks_for_a_release_and_a_small_one_does_not() -> None:
    ctl = Controller(FakeKernel(), FakeState())
    ports = Ports("eth0", ("eth1",))

    def adds(first: int, n: int) -> list[AddRoute]:
        return [
            AddRoute((4, "198.18.0.1", f"239.14.{k >> 8 & 255}.{k & 255}", 253), ports)
            for k in range(first, first + n)
        ]

    ctl.change(adds(0, 3))
    assert not ctl.heap_release_due
    ctl.change(adds(3, GROUP_MAX_CHANGES + 1))
    assert ctl.heap_release_due


def test_a_reload_of_many_routes_asks_for_a_release_and_one_of_a_few_does_not() -> None:
    """As after a bulk change: the files' text and what the reload replaced are freed."""
    ctl = Controller(FakeKernel(), FakeState())
    for ifindex, name in enumerate(("a", "b"), 1):
        ctl.link_up(name, ifindex)

    def reload(count: int) -> None:
        text = "".join(
            f'[[route]]\nsource = "198.18.0.1"\ngroup = "239.15.{k >> 8}.{k & 255}"\n'
            'iif = "a"\noifs = ["b"]\n'
            for k in range(count)
        )
        new = declarations.parse_file(text, "f.conf").found
        list(ctl.declared_slices(new, declarations.diff(ctl.declared, new), Outcome()))

    reload(3)
    assert not ctl.heap_release_due
    reload(GROUP_MAX_CHANGES + 1)
    assert ctl.heap_release_due
    ctl.heap_release_due = False  # (the daemon's, once it has released)
    reload(0)  # every route removed
    assert ctl.heap_release_due

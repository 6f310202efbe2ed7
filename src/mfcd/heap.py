"""Giving the C heap's free memory back to the system after bulk work (glibc's malloc_trim).

A batch of 1,000,000 routes allocates some 100 MiB for a moment (its lists, the request's
text, the journal's records) through malloc.  Once a large block has been freed, glibc raises
its mmap threshold, so later large blocks come from the heap (brk) as well; freed, they stay
in the process, counted in its RSS, unless they happen to lie at the heap's top.
`malloc_trim(0)` returns every free page of the heap to the system (madvise), wherever it
lies: measured at 1,000,000 routes it gave back 31-39 MiB, in about 10 ms
(docs/benchmarks.md, "Memory at 1,000,000 routes").  It does not touch Python's own small
object arenas: those go back only when empty, as before.

The C library is reached through ctypes; where it has no malloc_trim (musl), release()
does nothing.
"""

from __future__ import annotations

from typing import Any

_UNKNOWN: Any = object()
_malloc_trim: Any = _UNKNOWN  # the C function, None where there is none; looked up once


def release() -> bool:
    """Return the C heap's free pages to the system; False where libc cannot."""
    global _malloc_trim  # noqa: PLW0603 (looked up at the first call: ctypes costs a start)
    if _malloc_trim is _UNKNOWN:
        import ctypes  # noqa: PLC0415 (only a daemon after bulk work needs it)

        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        if _malloc_trim is not None:
            _malloc_trim.argtypes = [ctypes.c_size_t]
            _malloc_trim.restype = ctypes.c_int
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True

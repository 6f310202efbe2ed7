"""Long work on the event loop in time-budgeted slices, other clients served in between.

Work over many routes (entries written again after an interface came back, a drift check,
learned entries expired, flushed or let go with their template) is a generator that
yields at points where the model and the kernel agree: between two of its small steps.
`run_sliced` drives it and gives the loop a turn once a slice has run SLICE_SECONDS, not
after a fixed number of steps: a fixed count is either too large on a loaded machine
(a ping waits for two slices of 100 ms) or too small on an idle one (a turn of the loop
per few hundred routes makes a rewrite of 1,000,000 routes several times slower). The
budget is wall-clock time, so a process the machine preempts gets shorter slices of work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

# Seconds of work between two turns of the loop. A request that arrives during a slice
# waits for the rest of it and, as asyncio runs the callbacks that were ready before it,
# for one more: about twice this, plus its own handling. A turn costs a few tens of
# microseconds (one select), about 1% of a slice.
SLICE_SECONDS = 0.005


class Budget:
    """The time left in the current slice; `turn()` yields to the loop once it is spent."""

    __slots__ = ("clock", "deadline", "seconds", "turns")

    def __init__(
        self, seconds: float | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.seconds = SLICE_SECONDS if seconds is None else seconds
        self.clock = clock
        self.deadline = clock() + self.seconds
        self.turns = 0  # turns given to the loop so far

    async def turn(self) -> None:
        """Let the loop serve others if this slice has used its time; else go on at once."""
        if self.clock() >= self.deadline:
            await asyncio.sleep(0)
            self.turns += 1
            self.deadline = self.clock() + self.seconds


async def run_sliced(work: Iterable[int], budget: Budget | None = None) -> int:
    """Run `work` to its end, a slice at a time; the sum of what it yielded (how many
    routes or entries its steps wrote or removed)."""
    budget = budget or Budget()
    total = 0
    for done in work:
        total += done
        await budget.turn()
    return total

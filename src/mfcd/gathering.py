"""When group commit hands the next group to the journal's thread.

Once the clients of the group just synced are back in it, or after as long as that sync took.

Each client waits for its answer before it sends its next change, so while one group
syncs, only the clients of the group before can join the next one: started at once, the
groups would alternate between two halves of the clients, each half paying a whole sync.
Holding the next sync until the answered clients are back (counted, not guessed) makes
one group of them all. The hold never lasts longer than the last sync did: a change then
waits at most two syncs, as it would have waiting for the half before it; with a fast
disk the hold is as short as its syncs, and a lone client is never held (it is back the
moment its next change arrives).

Pure: time comes in as an argument (the server passes its loop's clock).
"""

from __future__ import annotations

from dataclasses import dataclass

HOLD_MAX = 0.010  # seconds: the longest hold, whatever the last sync took


@dataclass(slots=True)
class Gathering:
    """The hold on the next group's sync (see the module's docstring)."""

    expected: int = 0  # requests the next group holds once the answered clients are back
    until: float = 0.0  # when the hold ends anyway

    def synced(self, now: float, took: float, answered: int, waiting: int) -> None:
        """A group's sync ended at `now` after `took` seconds; `answered` requests waited for
        it and `waiting` wait in the group formed meanwhile."""
        self.expected = answered + waiting
        self.until = now + min(took, HOLD_MAX)

    def ready(self, now: float, waiting: int) -> bool:
        """Whether the group formed so far, which `waiting` requests wait for, may be synced
        now."""
        return waiting >= self.expected or now >= self.until

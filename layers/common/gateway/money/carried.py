"""The carried holds this container keeps (docs/money.md "Carried holds"; no I/O).

A settle may open a standing reservation for the next request of the same user and key
(``ledger.Carry``, migration 0012): the database has checked and counted it exactly as a reserve
would. The container keeps its id, amount and the user's tier here; the next request of that key
whose hold fits takes it instead of sending a reserve, until ``usable_until`` (wall clock: right
again after a Lambda environment thaws; the database keeps it idle ``carry_margin_s`` longer, the
time the request has to mark it as used). A taken hold is the request's own: ``take`` removes it,
so two concurrent requests never share one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal

from ..records import frozen

Principal = tuple[object, object]   # (user id, key id)


@frozen
class Standing:
    """A standing reservation this container holds for a user and key (``Carried``)."""

    request_id: str       # the standing reservation's id
    amount: Decimal       # its hold
    tier: str             # the user's tier when it was opened
    usable_until: float   # wall-clock time after which this container no longer uses it


class Carried:
    """Standing reservations by user and key, at most ``per_key`` idle ones each."""

    __slots__ = ("_clock", "_held", "_opening", "_running", "per_key")

    def __init__(self, per_key: int = 4, clock: Callable[[], float] = time.time) -> None:
        self.per_key = per_key
        self._clock = clock
        self._held: dict[Principal, list[Standing]] = {}
        self._opening: dict[Principal, int] = {}  # settles asking for one now (concurrent requests)
        self._running: dict[Principal, int] = {}  # admitted requests not settled yet

    def begin(self, who: Principal) -> None:
        """A request of ``who`` was admitted (``end`` when it is settled)."""
        self._running[who] = self._running.get(who, 0) + 1

    def end(self, who: Principal) -> None:
        left = self._running.get(who, 1) - 1
        if left > 0:
            self._running[who] = left
        else:
            self._running.pop(who, None)

    def take(self, who: Principal, hold: Decimal) -> Standing | None:
        """A usable standing reservation of ``who`` of at least ``hold``, removed from the store."""
        held = self._held.get(who)
        if not held:
            return None
        now = self._clock()
        for i, s in enumerate(held):
            if s.amount >= hold and now < s.usable_until:
                del held[i]
                return s
        return None

    def drop(self, who: Principal, hold: Decimal) -> list[str]:
        """Remove and return the ids of ``who``'s standing reservations this container will not use:
        past their time, or smaller than ``hold`` (the latest request's: the next one is likely as
        big). Their settle gives them back in the database."""
        held = self._held.get(who)
        if not held:
            return []
        now = self._clock()
        keep: list[Standing] = []
        gone: list[str] = []
        for s in held:  # one pass (no record comparisons: ``s not in keep`` compared up to n² pairs)
            if s.amount >= hold and now < s.usable_until:
                keep.append(s)
            else:
                gone.append(s.request_id)
        if not gone:
            return gone  # all kept, in the same list
        if keep:
            self._held[who] = keep
        else:
            del self._held[who]
        return gone

    def claim(self, who: Principal, *, concurrent: bool = False) -> bool:
        """Room for one more standing reservation of ``who``, counting those being opened by settles
        still running, when no other request of ``who`` runs in this container (as in Lambda, where a
        container serves one request at a time) or ``concurrent``: measured, carrying holds under
        concurrency of one key in one process lengthened the requests' median when each settle that
        carried was a commit of its own on the user's row; with the key's money statements combined
        (``money.combine``) it shortens it (BENCHMARKS.md). True claims it until ``opened`` is
        called (whatever the settle's outcome)."""
        if not concurrent and self._running.get(who, 0) > 1:
            return False
        opening = self._opening.get(who, 0)
        if len(self._held.get(who, ())) + opening >= self.per_key:
            return False
        self._opening[who] = opening + 1
        return True

    def opened(self, who: Principal, standing: Standing | None) -> None:
        """The settle of a ``claim`` ended: it opened ``standing``, or nothing (None)."""
        left = self._opening.get(who, 1) - 1
        if left > 0:
            self._opening[who] = left
        else:
            self._opening.pop(who, None)
        if standing is None:
            return
        if len(self._held) >= 256:  # many users through one container: forget the stale ones
            now = self._clock()
            for key in [k for k, v in self._held.items() if all(now >= s.usable_until for s in v)]:
                del self._held[key]
        self._held.setdefault(who, []).append(standing)

    def drain(self) -> dict[Principal, list[str]]:
        """Remove and return the ids of every standing reservation kept here (the process stops)."""
        held, self._held = self._held, {}
        return {who: [s.request_id for s in standings] for who, standings in held.items() if standings}

    def __len__(self) -> int:
        return sum(len(v) for v in self._held.values())

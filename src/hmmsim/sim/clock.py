"""A discrete-event clock with spans and counters for the trace export.

Time is a float in microseconds. ``schedule(t, fn)`` queues a callback;
``run()`` pops events in time order (ties in scheduling order), moving
``now`` to each event's time. ``advance(dt)`` moves time forward with no
event. ``span`` and ``counter`` record what the trace export shows.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


class EventClock:
    def __init__(self, max_records: int = 200_000) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.spans: list[tuple[str, str, float, float, dict]] = []
        self.counters: list[tuple[str, float, dict]] = []
        self.max_records = max_records
        self.dropped = 0

    def schedule(self, t: float, fn: Callable[[], None]) -> None:
        if t < self.now:
            raise ValueError(f"event at {t} is in the past (now {self.now})")
        heapq.heappush(self._queue, (t, self._seq, fn))
        self._seq += 1

    def run(self) -> int:
        """Run every queued event in time order; how many ran."""
        n = 0
        while self._queue:
            t, _, fn = heapq.heappop(self._queue)
            self.now = t
            fn()
            n += 1
        return n

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError(f"negative time step {dt}")
        self.now += dt

    def pending(self) -> int:
        return len(self._queue)

    # --- records for the trace -----------------------------------------------------------
    def span(self, track: str, name: str, start: float, dur: float, **args) -> None:
        if len(self.spans) >= self.max_records:
            self.dropped += 1
            return
        self.spans.append((track, name, start, dur, args))

    def counter(self, name: str, t: float, **values) -> None:
        if len(self.counters) >= self.max_records:
            self.dropped += 1
            return
        self.counters.append((name, t, values))

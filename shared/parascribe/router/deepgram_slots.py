"""The Deepgram path as the planner times it: a pool of request slots that every job shares.

The pool holds ``DEEPGRAM_MAX_INSTANCES`` × ``DEEPGRAM_MAX_CONCURRENCY`` requests in
flight. A request takes ``DEEPGRAM_REQUEST_OVERHEAD_SECONDS`` + its audio /
``DEEPGRAM_EXPECTED_RTFX``. The requests already queued or in flight
(:attr:`parascribe.router.capacity.Capacity.deepgram_queue`) go first, then the job's
chunks, each in order on the first slot to come free (greedy list scheduling). With an
empty queue and equal chunks that is waves of the pool's width.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence


class DeepgramSlots:
    """When each request slot comes free, once the queue ahead is done.

    Args:
        slots: requests in flight at once (≥ 1).
        overhead_s, rtfx: a request's fixed cost, and audio seconds Deepgram does per second.
        queue: audio seconds of each request ahead, oldest first.
    """

    def __init__(self, slots: int, overhead_s: float, rtfx: float, queue: Sequence[float] = ()) -> None:
        self._overhead_s = overhead_s
        self._rtfx = rtfx
        self._free = [0.0] * max(1, slots)  # a heap: the first slot to come free on top
        for audio_s in queue:
            heapq.heapreplace(self._free, self._free[0] + self.request_s(audio_s))

    def request_s(self, audio_s: float) -> float:
        """Seconds one request of ``audio_s`` holds a slot."""
        return self._overhead_s + audio_s / self._rtfx

    def finish_s(self, durations: Sequence[float]) -> float:
        """When the last of these requests (audio seconds each, sent in order after the queue) is done."""
        free = list(self._free)
        end = 0.0
        for audio_s in durations:
            done = free[0] + self.request_s(audio_s)
            heapq.heapreplace(free, done)
            end = max(end, done)
        return end

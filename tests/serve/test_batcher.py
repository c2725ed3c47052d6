"""The queue in front of the model, with a fake decoder: lanes, failure isolation, cancellation, bounds."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from attnlab.serve.batcher import MicroBatcher, Overloaded


class FakeDecode:
    """Outputs each source reversed; raises on a source containing 666; records every call."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[list[list[int]]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, sources: list[list[int]], beam: int) -> list[list[int]]:
        with self.lock:
            self.calls.append(sources)
        time.sleep(self.delay)
        if any(666 in s for s in sources):
            raise ValueError("this sentence breaks the model")
        return [s[::-1] for s in sources]


def run(coro):
    return asyncio.run(coro)


def test_a_failing_sentence_fails_only_its_own_request():
    decode = FakeDecode()

    async def main():
        b = MicroBatcher(decode, max_batch=16, wait_ms=100)
        results = await asyncio.gather(b.submit([[1, 2]], 1), b.submit([[3, 666]], 1), b.submit([[4, 5], [6]], 1),
                                       return_exceptions=True)
        await b.stop()
        return b, results

    b, (ok1, bad, ok2) = run(main())
    assert ok1 == [[2, 1]] and ok2 == [[5, 4], [6]]
    assert isinstance(bad, ValueError) and "breaks the model" in str(bad)
    assert len(decode.calls[0]) == 4  # first all together, then each alone
    assert b.stats.failed == 1 and b.stats.requests == 2


def test_large_jobs_take_the_bulk_lane_in_chunks_and_small_ones_are_not_stuck_behind():
    decode = FakeDecode(delay=0.05)

    async def main():
        # work of a sentence = its length: 3 units; small jobs <= 4 units; chunks of <= 6 units
        b = MicroBatcher(decode, max_batch=8, wait_ms=1, work_of=lambda s, beam: len(s), small_work=4,
                         chunk_work=6)
        big = asyncio.ensure_future(b.submit([[i, i, i] for i in range(8)], 1))  # 24 units: 4 chunks of 2
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        small = await b.submit([[7, 8]], 1)
        small_s = time.perf_counter() - t0
        out = await big
        await b.stop()
        return small, small_s, out

    small, small_s, out = run(main())
    assert small == [[8, 7]] and out == [[i, i, i] for i in range(8)]
    assert small_s < 0.15  # not behind the 4 chunks (0.2 s)
    chunks = [c for c in decode.calls if len(c[0]) == 3]
    assert [len(c) for c in chunks] == [2, 2, 2, 2]


def test_a_cancelled_job_is_dropped_and_a_cancelled_bulk_job_stops_at_its_next_chunk():
    decode = FakeDecode(delay=0.05)

    async def main():
        b = MicroBatcher(decode, max_batch=1, wait_ms=1, work_of=lambda s, beam: len(s), small_work=4,
                         chunk_work=3)
        first = asyncio.ensure_future(b.submit([[1]], 1))  # interactive, running
        queued = asyncio.ensure_future(b.submit([[2]], 1))  # interactive, waiting behind it
        bulk = asyncio.ensure_future(b.submit([[5, 5, 5]] * 10, 1))  # 10 chunks
        await asyncio.sleep(0.01)
        queued.cancel()
        await asyncio.sleep(0.12)
        bulk.cancel()
        assert await first == [[1]]
        await asyncio.sleep(0.2)
        await b.stop()
        return b

    b = run(main())
    sources = [s for c in decode.calls for s in c]
    assert [2] not in sources  # never decoded
    assert sources.count([5, 5, 5]) < 6  # stopped after a few of its 10 chunks
    assert b.stats.cancelled == 2 and b.waiting == 0


def test_calls_go_through_the_queue_and_the_queue_is_bounded():
    async def main():
        b = MicroBatcher(FakeDecode(), max_queue=3)
        assert await b.call(lambda x: x * 2, 21) == 42
        with pytest.raises(Overloaded, match="queue limit 3"):
            await b.submit([[1]] * 4, 1)
        with pytest.raises(ZeroDivisionError):
            await b.call(lambda: 1 / 0)
        assert await b.submit([[1, 2]], 1) == [[2, 1]]  # the worker survived
        await b.stop()
        return b

    b = run(main())
    assert b.stats.calls == 1 and b.stats.failed == 1


def test_the_bulk_lane_runs_at_a_lower_cpu_priority():
    import os

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def main():
        b = MicroBatcher(FakeDecode(), small_work=10)
        got = await b.call(priority, work=0), await b.call(priority, work=100)  # interactive, bulk
        await b.stop()
        return got

    interactive, bulk = run(main())
    assert bulk - interactive == 10

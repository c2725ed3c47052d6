"""Micro-batching: concurrent /translate requests share one batched decoding call.

Each request puts a job (its encoded sentences and beam size) on an asyncio queue. One worker takes
the first job, keeps collecting for up to `wait_ms` (or until `max_batch` sentences are waiting),
and runs one `Translator.translate_ids` call per beam size in the model thread. Decoding a batch of
B short sentences costs far less than B separate calls on a CPU (the matmuls are wider, the Python
loop over time steps runs once), so throughput rises under concurrency; a lone request waits at
most `wait_ms` extra. `max_batch=1` turns batching off.

All model work (batches, attention maps, captions) runs on one thread (`ModelThread`), so torch
never sees two concurrent forward passes and the event loop stays free to accept and reject requests.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

T = TypeVar("T")

# (sources as token ids, beam) -> one output token-id list per source
DecodeFn = Callable[[list[list[int]], int], list[list[int]]]


class Overloaded(Exception):
    """More sentences are waiting than the queue allows: the caller should retry later (503)."""


class ModelThread:
    """A single worker thread that owns the model: `await run(fn, *args)`."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnlab-model")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@dataclass
class _Job:
    sources: list[list[int]]
    beam: int
    future: asyncio.Future


@dataclass
class BatchStats:
    batches: int = 0
    sentences: int = 0
    requests: int = 0
    largest: int = 0
    busy_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "requests": self.requests, "sentences": self.sentences,
                "largest_batch": self.largest, "busy_s": round(self.busy_s, 3),
                "mean_batch": round(self.sentences / self.batches, 2) if self.batches else 0.0}


@dataclass
class MicroBatcher:
    decode: DecodeFn
    model_thread: ModelThread
    max_batch: int = 32  # sentences per decoding call
    wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 2048  # sentences waiting; beyond this, submit raises Overloaded
    stats: BatchStats = field(default_factory=BatchStats)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._waiting = 0

    def start(self) -> None:
        """Start the worker on the running event loop (again, if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._worker is not None and not self._worker.done() and self._worker.get_loop() is loop:
            return
        self._queue = asyncio.Queue()
        self._waiting = 0
        self._worker = loop.create_task(self._run(self._queue), name="attnlab-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, RuntimeError):
                pass
            self._worker = None

    async def submit(self, sources: list[list[int]], beam: int) -> list[list[int]]:
        """Decode `sources` (token ids, EOS-terminated) with `beam`; returns output ids per source."""
        if not sources:
            return []
        self.start()
        if self._waiting + len(sources) > self.max_queue:
            raise Overloaded(f"{self._waiting} sentences are already waiting (queue limit {self.max_queue})")
        future = asyncio.get_running_loop().create_future()
        assert self._queue is not None
        self._waiting += len(sources)
        self._queue.put_nowait(_Job(sources, beam, future))
        return await future

    async def _collect(self, queue: asyncio.Queue[_Job]) -> list[_Job]:
        jobs = [await queue.get()]
        n = len(jobs[0].sources)
        deadline = time.monotonic() + self.wait_ms / 1000
        while n < self.max_batch:
            if queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                job = queue.get_nowait()
            jobs.append(job)
            n += len(job.sources)
        return jobs

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            jobs = await self._collect(queue)
            self._waiting -= sum(len(j.sources) for j in jobs)
            jobs = [j for j in jobs if not j.future.done()]  # callers that gave up
            for beam in sorted({j.beam for j in jobs}):
                group = [j for j in jobs if j.beam == beam]
                sources = [s for j in group for s in j.sources]
                start = time.perf_counter()
                try:
                    outputs = await self.model_thread.run(self.decode, sources, beam)
                except Exception as err:  # noqa: BLE001 - handed to every waiting caller
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(err)
                    continue
                self.stats.busy_s += time.perf_counter() - start
                self.stats.batches += 1
                self.stats.requests += len(group)
                self.stats.sentences += len(sources)
                self.stats.largest = max(self.stats.largest, len(sources))
                at = 0
                for j in group:
                    if not j.future.done():
                        j.future.set_result(outputs[at: at + len(j.sources)])
                    at += len(j.sources)

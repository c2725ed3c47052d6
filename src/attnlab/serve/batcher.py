"""The one bounded queue in front of the model: every model call (translations, attention maps,
captions) waits here, and one request's failure or size does not become everyone's.

A job is either sentences to translate (token ids and a beam size) or a function to call with the
model. Each has a size (the queue places it takes: its sentences, or 1) and a work estimate (units
of sentences x source tokens x beam x target length, computed by the service). Two lanes, each with
its own model thread:

- the interactive lane takes jobs of at most `small_work` units. Translations are micro-batched:
  the first job waits up to `wait_ms` for company, up to `max_batch` sentences go through one
  decoding call (`max_batch=1` turns batching off). Decoding B short sentences at once costs far
  less than B calls on a CPU (wider matmuls, one Python loop over time steps).
- the bulk lane takes the larger jobs, one at a time, on a thread of lower CPU priority (nice 10),
  and decodes them in chunks of at most `chunk_work` units (at least one sentence). Before each
  chunk it waits (up to `yield_s`) while the interactive lane has work, and a job whose caller has
  gone (deadline, disconnect) stops at the next chunk instead of being finished.

So a maximal request delays a one-sentence request by at most one chunk running beside it, and the
event loop stays free to answer /health. If a batched call fails, each of its jobs is run again
alone: one failing sentence fails only its own request. More than `max_queue` places waiting:
`submit` raises Overloaded (503).

Place in the layering: serve and bench; imports only from applications and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# (sources as token ids, beam) -> one output token-id list per source
DecodeFn = Callable[[list[list[int]], int], list[list[int]]]
# (lane, sentences, seconds, output tokens) after each decoding call
BatchHook = Callable[[str, int, float, int], None]


class Overloaded(Exception):
    """More places are waiting than the queue allows: the caller should retry later (503)."""


class ModelThread:
    """A single worker thread that runs model calls: `await run(fn, *args)`. `nice` > 0 lowers the
    thread's CPU priority (Linux schedules threads; elsewhere it is ignored)."""

    def __init__(self, name: str = "attnlab-model", nice: int = 0) -> None:
        self.name, self.nice = name, nice
        self._pool: ThreadPoolExecutor | None = None

    def _lower_priority(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except (AttributeError, OSError):
            pass

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name,
                                            initializer=self._lower_priority if self.nice > 0 else None)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@dataclass(eq=False)
class _Job:
    future: asyncio.Future
    size: int  # queue places: sentences, or 1 for a call
    work: int
    sources: list[list[int]] = field(default_factory=list)
    beam: int = 1
    fn: Callable[[], Any] | None = None  # a call, run alone

    @property
    def gone(self) -> bool:
        return self.future.done()  # answered, failed, or its caller gave up (cancelled)


@dataclass
class BatchStats:
    batches: int = 0  # decoding calls
    sentences: int = 0
    requests: int = 0  # translation jobs answered
    largest: int = 0
    calls: int = 0  # attention maps, captions
    failed: int = 0  # jobs that raised
    cancelled: int = 0  # jobs dropped because their caller had gone
    busy_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "requests": self.requests, "sentences": self.sentences,
                "largest_batch": self.largest, "calls": self.calls, "failed": self.failed,
                "cancelled": self.cancelled, "busy_s": round(self.busy_s, 3),
                "mean_batch": round(self.sentences / self.batches, 2) if self.batches else 0.0}


class MicroBatcher:
    def __init__(self, decode: DecodeFn, max_batch: int = 32, wait_ms: float = 5.0, max_queue: int = 2048,
                 work_of: Callable[[list[int], int], int] = lambda src, beam: len(src) * beam,
                 small_work: int = 50_000, chunk_work: int = 50_000, yield_s: float = 1.0,
                 on_batch: BatchHook | None = None, bulk_nice: int = 10):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.decode, self.max_batch, self.wait_ms, self.max_queue = decode, max_batch, wait_ms, max_queue
        self.work_of, self.small_work, self.chunk_work, self.yield_s = work_of, small_work, chunk_work, yield_s
        self.on_batch = on_batch
        self.stats = BatchStats()
        # the bulk thread runs at a lower CPU priority: on 2 shared cores it halved the delay that three
        # maximal requests add to a one-sentence request (benchmarks/results/serve_abuse_bulk_nice.json)
        self.threads = {"interactive": ModelThread("attnlab-interactive"),
                        "bulk": ModelThread("attnlab-bulk", bulk_nice)}
        self._queues: dict[str, asyncio.Queue[_Job]] = {}
        self._workers: list[asyncio.Task] = []
        self._idle: asyncio.Event | None = None  # set while the interactive lane has nothing to do
        self.waiting = 0  # queue places taken by jobs that have not started

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the workers on the running event loop (again, if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._workers and all(not w.done() and w.get_loop() is loop for w in self._workers):
            return
        self._queues = {"interactive": asyncio.Queue(), "bulk": asyncio.Queue()}
        self._idle = asyncio.Event()
        self._idle.set()
        self.waiting = 0
        self._workers = [loop.create_task(self._interactive(), name="attnlab-interactive"),
                         loop.create_task(self._bulk(), name="attnlab-bulk")]

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            try:
                await worker
            except (asyncio.CancelledError, RuntimeError):
                pass
        self._workers = []
        for thread in self.threads.values():
            thread.shutdown()

    @property
    def full(self) -> bool:
        return self.waiting >= self.max_queue

    # ---- submitting -------------------------------------------------------------------------
    async def submit(self, sources: list[list[int]], beam: int) -> list[list[int]]:
        """Decode `sources` (token ids, EOS-terminated) with `beam`; returns output ids per source."""
        if not sources:
            return []
        work = sum(self.work_of(s, beam) for s in sources)
        return await self._put(_Job(self._future(), len(sources), work, sources=sources, beam=beam))

    async def call(self, fn: Callable[..., T], *args: Any, work: int = 0, size: int = 1) -> T:
        """Run `fn(*args)` in a model thread, through the queue."""
        return await self._put(_Job(self._future(), size, work, fn=lambda: fn(*args)))

    def _future(self) -> asyncio.Future:
        self.start()
        return asyncio.get_running_loop().create_future()

    async def _put(self, job: _Job) -> Any:
        if self.waiting + job.size > self.max_queue:
            raise Overloaded(f"{self.waiting} sentences are already waiting (queue limit {self.max_queue})")
        lane = "interactive" if job.work <= self.small_work else "bulk"
        if lane == "interactive":
            assert self._idle is not None
            self._idle.clear()
        self.waiting += job.size
        self._queues[lane].put_nowait(job)
        # a caller cancelled here (deadline, disconnect) cancels job.future too: the worker drops the
        # job, or stops it at its next chunk
        return await job.future

    def _taken(self, job: _Job) -> bool:
        """A job leaves the queue; False when its caller has gone (it is dropped)."""
        self.waiting -= job.size
        if job.gone:
            self.stats.cancelled += 1
            return False
        return True

    # ---- running ----------------------------------------------------------------------------
    async def _decode(self, lane: str, sources: list[list[int]], beam: int) -> list[list[int]]:
        start = time.perf_counter()
        outputs = await self.threads[lane].run(self.decode, sources, beam)
        seconds = time.perf_counter() - start
        self.stats.busy_s += seconds
        self.stats.batches += 1
        self.stats.sentences += len(sources)
        self.stats.largest = max(self.stats.largest, len(sources))
        if self.on_batch is not None:
            self.on_batch(lane, len(sources), seconds, sum(len(o) + 1 for o in outputs))
        return outputs

    async def _call(self, lane: str, job: _Job) -> None:
        assert job.fn is not None
        start = time.perf_counter()
        try:
            result = await self.threads[lane].run(job.fn)
        except Exception as err:  # noqa: BLE001 - the job's own failure, handed to its caller
            self._fail(job, err)
        else:
            self.stats.calls += 1
            if not job.gone:
                job.future.set_result(result)
        self.stats.busy_s += time.perf_counter() - start

    def _fail(self, job: _Job, err: BaseException) -> None:
        self.stats.failed += 1
        if not job.gone:
            job.future.set_exception(err)

    async def _collect(self, queue: asyncio.Queue[_Job], held: list[_Job]) -> list[_Job]:
        """Translation jobs for one micro-batch; calls met on the way are held for after it."""
        jobs = [await queue.get()]
        if jobs[0].fn is not None:
            return jobs
        n = jobs[0].size
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
            if job.fn is not None:
                held.append(job)
                continue
            jobs.append(job)
            n += job.size
        return jobs

    async def _interactive(self) -> None:
        queue, held = self._queues["interactive"], []
        assert self._idle is not None
        while True:
            if queue.empty() and not held:
                self._idle.set()
            jobs = [held.pop(0)] if held else await self._collect(queue, held)
            self._idle.clear()
            jobs = [j for j in jobs if self._taken(j)]
            if len(jobs) == 1 and jobs[0].fn is not None:
                await self._call("interactive", jobs[0])
                continue
            for beam in sorted({j.beam for j in jobs}):
                await self._run_batch([j for j in jobs if j.beam == beam], beam)

    async def _run_batch(self, group: list[_Job], beam: int) -> None:
        """One decoding call for the group; if it fails, each job again alone."""
        sources = [s for j in group for s in j.sources]
        try:
            outputs = await self._decode("interactive", sources, beam)
        except Exception as err:  # noqa: BLE001 - run each job alone to find whose it is
            if len(group) == 1:
                self._fail(group[0], err)
                return
            for job in group:
                try:
                    self._answer(job, await self._decode("interactive", job.sources, beam))
                except Exception as one_err:  # noqa: BLE001 - fails only this job's request
                    self._fail(job, one_err)
            return
        at = 0
        for job in group:
            self._answer(job, outputs[at: at + job.size])
            at += job.size

    def _answer(self, job: _Job, outputs: list[list[int]]) -> None:
        self.stats.requests += 1
        if not job.gone:
            job.future.set_result(outputs)

    def _chunks(self, job: _Job) -> list[list[list[int]]]:
        chunks: list[list[list[int]]] = [[]]
        work = 0
        for src in job.sources:
            w = self.work_of(src, job.beam)
            if chunks[-1] and (work + w > self.chunk_work or len(chunks[-1]) >= self.max_batch):
                chunks.append([])
                work = 0
            chunks[-1].append(src)
            work += w
        return chunks

    async def _yield_to_interactive(self) -> None:
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), self.yield_s)
        except asyncio.TimeoutError:
            pass

    async def _bulk(self) -> None:
        queue = self._queues["bulk"]
        while True:
            job = await queue.get()
            if not self._taken(job):
                continue
            await self._yield_to_interactive()
            if job.fn is not None:
                await self._call("bulk", job)
                continue
            outputs: list[list[int]] = []
            try:
                for chunk in self._chunks(job):
                    if job.gone:
                        self.stats.cancelled += 1
                        break
                    outputs += await self._decode("bulk", chunk, job.beam)
                    await self._yield_to_interactive()
                else:
                    self._answer(job, outputs)
            except Exception as err:  # noqa: BLE001 - fails only this job's request
                self._fail(job, err)

"""Micro-batching: a bounded queue of requests, drained into batches that run on worker threads, each batch split
into onnxruntime calls of similar length."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from sst2dist.runtime import Classifier
from sst2dist.serve.limits import ServeLimits
from sst2dist.serve.protocol import ServeError, invalid

logger = logging.getLogger("sst2dist.serve")


@dataclass(eq=False)  # compared and hashed by identity: the queue and the service's set of waiting jobs
class Job:
    """One request's texts on their way through the queue and a worker thread."""

    texts: list[str]
    truncate: bool
    single: bool  # for error messages: "inputs" or "inputs[i]"
    future: asyncio.Future
    truncate_hint: str = 'send "truncate": true'  # the field of the request's dialect that allows truncation
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    tokenize_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0
    logits: np.ndarray | None = None
    error: Exception | None = None

    @property
    def estimated_tokens(self) -> int:
        """A cheap guess (about 4 characters a token) used to pack requests; exact counts come in the worker."""
        return max(len(text) for text in self.texts) // 4 + 2

    def check_lengths(self, counts: Sequence[int], limit: int) -> None:
        """With truncate=false, a text over the model's limit fails its request with a 422."""
        for index, count in enumerate(counts):
            if not self.truncate and count > limit:
                where = "inputs" if self.single else f"inputs[{index}]"
                raise invalid(
                    f"{where} has {count} tokens, over the model's limit of {limit}: shorten it or {self.truncate_hint}"
                )


# What one onnxruntime call costs beyond its padded tokens, in tokens: splitting a batch into length groups
# pays off when it saves more padding than this per extra call. Measured on SST-2 validation batches of 4-16
# random sentences, one onnxruntime thread (the default per worker), static int8: 8-16 tokens gave the lowest
# time per sentence, about 8 % below 32 and 10 % below no split at all.
CALL_COST_TOKENS = 12


def plan_chunks(token_counts: Sequence[int], max_size: int, max_tokens: int) -> list[list[int]]:
    """Group text indices into onnxruntime calls: sorted by length, then split where it saves padding.

    Each group holds at most `max_size` texts and `len(group) * longest <= max_tokens` padded tokens (a single
    text always fits); the split minimizes the sum over groups of CALL_COST_TOKENS + len(group) * longest
    (dynamic programming over the sorted lengths: at most max_size^2 steps per batch).
    """
    order = sorted(range(len(token_counts)), key=token_counts.__getitem__)
    lengths = [token_counts[i] for i in order]
    best = [0.0] + [math.inf] * len(order)  # best[j]: cheapest plan for the first j sorted texts
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end - 1, max(end - max_size, 0) - 1, -1):
            size, longest = end - start, lengths[end - 1]
            if size > 1 and size * longest > max_tokens:
                break
            cost = best[start] + CALL_COST_TOKENS + size * longest
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class MicroBatcher:
    """A bounded queue of jobs, drained into batches; up to `workers` batches run at once, one per worker thread.

    Several single-threaded onnxruntime runs side by side beat one run spread over the same cores: a
    MiniLM-sized model on one sentence keeps one core busy but spends much of a second one synchronizing
    (bench/results/load_bench.md)."""

    def __init__(self, classifier: Classifier, limits: ServeLimits, on_batch: Callable[[int, float], None]):
        self.classifier, self.limits, self.on_batch = classifier, limits, on_batch
        self.pending: deque[Job] = deque()
        self.executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="onnxruntime")
        self._free_workers = asyncio.Semaphore(limits.workers)
        self.running: set[asyncio.Task] = set()
        self._arrived = asyncio.Event()
        self.dispatcher: asyncio.Task | None = None
        self.stopping = False

    def start(self, on_death: Callable[[str], None]) -> None:
        """Start the dispatcher; should it ever end before `stop`, the queued jobs fail with a 503 and `on_death`
        hears why (the server then answers 503 instead of letting requests wait for ever)."""
        self.dispatcher = asyncio.get_running_loop().create_task(self._run_forever())
        self.dispatcher.add_done_callback(lambda task: self._supervise(task, on_death))

    @property
    def alive(self) -> bool:
        return self.dispatcher is not None and not self.dispatcher.done()

    def _supervise(self, task: asyncio.Task, on_death: Callable[[str], None]) -> None:
        if self.stopping:
            return
        error = None if task.cancelled() else task.exception()
        reason = f"{type(error).__name__}: {error}" if error else "it was cancelled"
        logger.error("the batch dispatcher stopped (%s); the server answers 503 from now on", reason, exc_info=error)
        message = "the batch dispatcher stopped: this server can no longer answer, restart it"
        self.fail_pending(ServeError(503, "unavailable", message))
        on_death(message)

    def fail_pending(self, error: ServeError) -> None:
        """Fail every queued job with `error` (they never run)."""
        while self.pending:
            job = self.pending.popleft()
            if not job.future.done():
                job.future.set_exception(error)

    def drop(self, job: Job) -> bool:
        """Take `job` out of the queue; False when it was no longer queued (its batch is running or ran)."""
        try:
            self.pending.remove(job)
        except ValueError:
            return False
        return True

    async def stop(self) -> None:
        """Stop taking batches; a batch still running finishes on its thread (the process waits for it at exit)."""
        self.stopping = True
        if self.dispatcher:
            self.dispatcher.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, job: Job) -> None:
        if len(self.pending) >= self.limits.max_queue:
            raise ServeError(
                429,
                "overloaded",
                f"the queue is full ({self.limits.max_queue} requests, --max-queue): retry shortly",
                {"Retry-After": "1"},
            )
        self.pending.append(job)
        self._arrived.set()

    async def run_in_worker(self, function: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def _run_forever(self) -> None:
        while True:
            if not self.pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._free_workers.acquire()
            await self._wait_for_more()
            if not self.pending:  # its clients hung up (or the drain cut them off) while it waited
                self._free_workers.release()
                continue
            task = asyncio.create_task(self._run_batch(self._take_batch()))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run_batch(self, batch: list[Job]) -> None:
        try:
            await self.run_in_worker(self._execute, batch)
        except Exception as err:  # a bug, not an onnxruntime error (those stay inside _execute)
            logger.exception("the batch worker failed")
            for job in batch:
                job.error = job.error or err
        finally:
            self._free_workers.release()
        for job in batch:
            self._settle(job)

    async def _wait_for_more(self) -> None:
        """Give a not-yet-full batch until `max_wait_ms` after its oldest request arrived to fill up.

        The default wait is 0: on a CPU a batch costs about as much per text as single texts do (see
        bench/results/load_bench.md), so a free worker gains nothing by idling; under load, the requests that
        arrive while a batch runs are batched anyway."""
        if self.limits.max_wait_ms <= 0 or not self.pending:
            return
        deadline = self.pending[0].enqueued + self.limits.max_wait_ms / 1000
        while self.pending and sum(len(job.texts) for job in self.pending) < self.limits.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                return

    def _take_batch(self) -> list[Job]:
        """The oldest jobs, within the limits and within this worker's share of the queue: a worker that took
        everything would leave the next free one idle while it works through the whole queue alone."""
        share = math.ceil(sum(len(job.texts) for job in self.pending) / self.limits.workers)
        max_size = max(1, min(self.limits.max_batch_size, share))
        batch = [self.pending.popleft()]
        size, longest = len(batch[0].texts), batch[0].estimated_tokens
        while self.pending:
            job = self.pending[0]
            new_size, new_longest = size + len(job.texts), max(longest, job.estimated_tokens)
            if new_size > max_size or new_size * new_longest > self.limits.max_batch_tokens:
                break
            batch.append(self.pending.popleft())
            size, longest = new_size, new_longest
        return batch

    def _execute(self, batch: list[Job]) -> None:
        """Worker thread: run the batch; if onnxruntime fails on it, rerun each request alone to isolate it.

        Token counting happens here, once per batch, rather than per request on the event loop: tokenizers
        releases the GIL, and every release on the event loop's thread costs it a GIL hand-over."""
        started = time.perf_counter()
        counts = self.classifier.token_counts([text for job in batch for text in job.texts])
        counted = time.perf_counter()
        limit, offset, admitted = self.classifier.max_length, 0, []
        for job in batch:
            job_counts, offset = counts[offset : offset + len(job.texts)], offset + len(job.texts)
            try:
                job.check_lengths(job_counts, limit)
            except ServeError as err:
                job.error = err
                continue
            admitted.append((job, [min(count, limit) for count in job_counts]))
        if admitted:
            self._run_jobs(admitted, started, counted - started)

    def _run_jobs(self, admitted: list[tuple[Job, list[int]]], started: float, counting_s: float) -> None:
        batch = [job for job, _ in admitted]
        texts = [text for job in batch for text in job.texts]
        counts = [count for _, job_counts in admitted for count in job_counts]
        try:
            logits, tokenize_s, inference_s = self._infer(texts, counts)
            tokenize_s += counting_s
        except Exception as err:
            if len(batch) > 1:
                for pair in admitted:
                    self._run_jobs([pair], started, counting_s)
                return
            logger.exception("inference failed on a batch of %d texts", len(texts))
            batch[0].error = err
            return
        self.on_batch(len(texts), inference_s)
        offset = 0
        for job in batch:
            job.logits = logits[offset : offset + len(job.texts)]
            offset += len(job.texts)
            job.started, job.tokenize_s, job.inference_s, job.batch_size = started, tokenize_s, inference_s, len(texts)
            if not np.isfinite(job.logits).all():  # JSON has no NaN: a client would read it as a score, or choke
                logger.error("the model returned non-finite logits for a request of %d texts", len(job.texts))
                job.error = ServeError(500, "backend", "the model returned non-finite scores for this request")

    def _infer(self, texts: list[str], counts: list[int]) -> tuple[np.ndarray, float, float]:
        tokenize_s = inference_s = 0.0
        logits = np.empty((len(texts), len(self.classifier.labels)), dtype=np.float32)
        for group in plan_chunks(counts, self.limits.max_batch_size, self.limits.max_batch_tokens):
            begin = time.perf_counter()
            chunk = [texts[i] for i in group]
            encoded = self.classifier.encode(chunk)
            middle = time.perf_counter()
            logits[group] = self.classifier.run(encoded)
            tokenize_s, inference_s = tokenize_s + middle - begin, inference_s + time.perf_counter() - middle
        return logits, tokenize_s, inference_s

    @staticmethod
    def _settle(job: Job) -> None:
        if job.future.done():  # the client went away
            return
        if job.error is not None:
            job.future.set_exception(job.error)
        else:
            job.future.set_result(job)

"""Adaptive batching: concurrent requests for one model version share one runtime call.

Each loaded version has a lane: the requests waiting for it, in arrival order. A request that
finds its lane idle is dispatched at once, on the next turn of the event loop, so a lone caller
does not wait; what coalesces is what arrived in that turn or while earlier batches ran. With
``max_batch_delay`` above zero a batch may instead wait that long for company (until it holds
``max_batch_size`` rows).

Guarantees:

- each caller gets exactly its own rows, and an error never reaches another caller: a batch that
  fails (or whose outputs cannot be split by row) is run again request by request;
- the queue is bounded: past ``max_queue`` waiting requests a request is refused at once (503);
- a request whose deadline passes while it waits is answered 504 and never run (one whose batch
  is already running is answered 504 at its deadline; its rows finish with the batch);
- ONNX models measured to be quick run on the event loop (a thread hop costs more than they
  do); the rest run in a bounded pool of threads, at most one batch per thread.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelport.errors import BadRequestError, DeadlineExceededError, OverloadedError
from modelport.monitoring.metrics import BATCH_REFUSALS, BATCH_REQUESTS, BATCH_ROWS
from modelport.registry.service import VersionRef
from modelport.serving.model_cache import LoadedModel

TIMEOUT_HEADER = "x-request-timeout"
Outputs = Mapping[str, np.ndarray]
_BatchResult = tuple[list[Outputs | Exception], float]  # per request; seconds it all took

# A batch whose expected run time is below this runs on the event loop. Measured on 2 cores:
# a hop to a worker thread and back costs 0.1-0.4 ms, the wine forest 0.04 ms for one row and
# about 0.01 ms per row in larger batches (benchmarks/bench_batching.py).
INLINE_SECONDS = 0.0005
_COST_WEIGHT = 0.3  # share of the newest run in a model's running estimate of seconds per row


@dataclass(frozen=True)
class BatchPolicy:
    """How one model version's requests are coalesced."""

    max_batch_size: int  # rows per runtime call (a larger request runs alone, whole)
    max_batch_delay: float  # seconds a batch may wait for more requests; 0: never waits
    max_queue: int  # requests that may wait; past it a request is refused with 503


@dataclass(eq=False)
class _Job:
    model: LoadedModel
    features: np.ndarray
    future: asyncio.Future[Outputs]
    queued_at: float
    deadline: float | None  # event-loop time
    taken: bool = False  # left the queue for a batch

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


@dataclass(eq=False)
class _Lane:
    version_id: uuid.UUID
    model_name: str
    policy: BatchPolicy
    jobs: deque[_Job] = field(default_factory=deque)
    queued_rows: int = 0
    running: int = 0  # batches in the pool
    wakeup: asyncio.Handle | None = None
    wakeup_at: float = 0.0


class Batcher:
    def __init__(
        self, policy: BatchPolicy, pool_threads: int, inline_seconds: float = INLINE_SECONDS
    ) -> None:
        self._policy = policy
        self._pool_threads = pool_threads
        self._inline_seconds = inline_seconds
        self._pool = ThreadPoolExecutor(max_workers=pool_threads, thread_name_prefix="inference")
        self._lanes: dict[uuid.UUID, _Lane] = {}
        # Seconds per row, per loaded runtime (forgotten when the model cache drops it).
        self._costs: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def policy_for(self, ref: VersionRef) -> BatchPolicy:
        """The rules for one version: today the settings' for every model. The place to read a
        version's own ``max_batch_size`` / ``max_batch_delay_ms`` (e.g. from ``ref.details``)."""
        return self._policy

    async def run(
        self, model: LoadedModel, features: np.ndarray, time_left: float | None
    ) -> Outputs:
        """The model's outputs for exactly ``features``' rows, run alone or with others'.
        ``time_left``: seconds before the caller's deadline (None: no deadline)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        name = model.ref.model_name
        if time_left is not None and time_left <= 0:
            BATCH_REFUSALS.labels(model=name, reason="deadline").inc()
            raise _deadline_passed()
        lane = self._lanes.get(model.ref.version_id)
        if lane is None:
            lane = _Lane(model.ref.version_id, name, self.policy_for(model.ref))
            self._lanes[model.ref.version_id] = lane
        if len(lane.jobs) >= lane.policy.max_queue:
            BATCH_REFUSALS.labels(model=name, reason="queue_full").inc()
            raise OverloadedError(  # with Retry-After
                f"model {name!r} has {len(lane.jobs)} requests waiting already; try again shortly"
            )
        deadline = None if time_left is None else now + time_left
        job = _Job(model, features, loop.create_future(), now, deadline)
        lane.jobs.append(job)
        lane.queued_rows += job.rows
        self._wake(lane, loop)
        try:
            async with asyncio.timeout_at(deadline):
                return await job.future
        except TimeoutError:
            if not job.taken:
                BATCH_REFUSALS.labels(model=name, reason="deadline").inc()
            raise _deadline_passed() from None
        finally:
            if not job.taken:  # gave up (deadline, or the client went away): never run it
                lane.jobs.remove(job)
                lane.queued_rows -= job.rows
                self._retire_if_idle(lane)

    def waiting(self, version_id: uuid.UUID) -> int:
        """Requests queued for a version, not yet in a running batch."""
        lane = self._lanes.get(version_id)
        return len(lane.jobs) if lane is not None else 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _due(self, lane: _Lane, now: float) -> float:
        """When the lane's next batch should start."""
        delay = lane.policy.max_batch_delay
        if delay <= 0 or not lane.jobs or lane.queued_rows >= lane.policy.max_batch_size:
            return now
        return lane.jobs[0].queued_at + delay

    def _wake(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a dispatch is coming, no later than the lane needs it."""
        now = loop.time()
        due = self._due(lane, now)
        if lane.wakeup is not None:
            if lane.wakeup_at <= due:
                return
            lane.wakeup.cancel()
        lane.wakeup_at = due
        if due <= now:
            lane.wakeup = loop.call_soon(self._dispatch, lane, loop)
        else:
            lane.wakeup = loop.call_at(due, self._dispatch, lane, loop)

    def _dispatch(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        lane.wakeup = None
        while lane.jobs and lane.running < self._pool_threads:
            now = loop.time()
            if self._due(lane, now) > now:
                self._wake(lane, loop)
                return
            batch = self._take(lane, now)
            if batch:
                self._start(lane, batch, loop)
        self._retire_if_idle(lane)

    def _retire_if_idle(self, lane: _Lane) -> None:
        """Forget a lane nobody waits on (its version may never be asked for again)."""
        idle = not lane.jobs and lane.running == 0 and lane.wakeup is None
        if idle and self._lanes.get(lane.version_id) is lane:
            del self._lanes[lane.version_id]

    def _take(self, lane: _Lane, now: float) -> list[_Job]:
        """Whole requests from the front of the queue, up to the batch size (at least one)."""
        batch: list[_Job] = []
        rows = 0
        while lane.jobs:
            job = lane.jobs[0]
            if batch and rows + job.rows > lane.policy.max_batch_size:
                break
            lane.jobs.popleft()
            lane.queued_rows -= job.rows
            job.taken = True
            if job.future.done():  # cancelled: its caller is gone
                continue
            if job.deadline is not None and job.deadline <= now:
                BATCH_REFUSALS.labels(model=lane.model_name, reason="deadline").inc()
                job.future.set_exception(_deadline_passed())
                continue
            batch.append(job)
            rows += job.rows
        return batch

    def _start(self, lane: _Lane, batch: list[_Job], loop: asyncio.AbstractEventLoop) -> None:
        runtime = batch[0].model.runtime
        rows = sum(job.rows for job in batch)
        BATCH_ROWS.labels(model=lane.model_name).observe(rows)
        BATCH_REQUESTS.labels(model=lane.model_name).observe(len(batch))
        features = [job.features for job in batch]
        cost = self._costs.get(runtime)
        # Only ONNX Runtime inline: its cost follows the rows. A native model may run any Python
        # (a pipeline's function step) whose past speed says nothing of the next call's.
        quick = (
            runtime.flavor == "onnx" and cost is not None and cost * rows <= self._inline_seconds
        )
        if quick:
            self._settle(runtime, rows, batch, run_batch(runtime, features))
            return
        lane.running += 1
        pooled = loop.run_in_executor(self._pool, run_batch, runtime, features)
        pooled.add_done_callback(
            functools.partial(self._finished, lane, batch, runtime, rows, loop)
        )

    def _finished(
        self,
        lane: _Lane,
        batch: list[_Job],
        runtime: Any,
        rows: int,
        loop: asyncio.AbstractEventLoop,
        finished: asyncio.Future[_BatchResult],
    ) -> None:
        lane.running -= 1
        try:
            result = finished.result()
        except BaseException as exc:  # the pool shut down under it
            failure = RuntimeError(f"the inference pool stopped: {exc!r}")
            result = ([failure] * len(batch), 0.0)
        self._settle(runtime, rows, batch, result)
        if lane.wakeup is not None:  # dispatching now; a pending wake-up would find less to do
            lane.wakeup.cancel()
        self._dispatch(lane, loop)

    def _settle(
        self,
        runtime: Any,
        rows: int,
        batch: list[_Job],
        result: _BatchResult,
    ) -> None:
        outcomes, seconds = result
        if seconds > 0 and runtime.flavor == "onnx":  # only ONNX models may run inline
            per_row = seconds / rows
            known = self._costs.get(runtime)
            self._costs[runtime] = (
                per_row if known is None else known + _COST_WEIGHT * (per_row - known)
            )
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():  # its caller's deadline passed while the batch ran
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)


def run_batch(runtime: Any, features: Sequence[np.ndarray]) -> _BatchResult:
    """Each request's outputs (or the error it alone causes), and the seconds it all took.

    One runtime call for all when it succeeds and every output has a row per input row;
    otherwise each request runs on its own, so only the culprit sees an error."""
    started = time.perf_counter()
    if len(features) > 1:
        try:
            outputs = runtime.predict_outputs(np.concatenate(features))
            split = _split(outputs, [len(part) for part in features])
            if split is not None:
                return split, time.perf_counter() - started
        except Exception:  # noqa: S110 - retried request by request just below
            pass
    outcomes = [_run_one(runtime, part) for part in features]
    return outcomes, time.perf_counter() - started


def _run_one(runtime: Any, features: np.ndarray) -> Outputs | Exception:
    try:
        outputs: Outputs = runtime.predict_outputs(features)
        return outputs
    except Exception as exc:
        return exc


def _split(outputs: Outputs, sizes: list[int]) -> list[Outputs | Exception] | None:
    """Per-request views of a batch's outputs; None when an output has no row per input row."""
    total = sum(sizes)
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    if any(array.ndim == 0 or array.shape[0] != total for array in arrays.values()):
        return None
    parts: list[Outputs | Exception] = []
    start = 0
    for size in sizes:
        parts.append({name: array[start : start + size] for name, array in arrays.items()})
        start += size
    return parts


def time_limit(header: str | None, default: float) -> float:
    """Seconds a prediction may take: what the caller's X-Request-Timeout asks, at most the
    server's default (a caller may shorten its deadline, not hold the server longer)."""
    if header is None:
        return default
    try:
        seconds = float(header)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise BadRequestError(
            f"the X-Request-Timeout header must be a number of seconds above 0, such as 2.5 "
            f"(got {header[:20]!r})"
        )
    return min(seconds, default)


def _deadline_passed() -> DeadlineExceededError:
    return DeadlineExceededError(
        "the request's deadline passed before the model could answer; send a longer "
        "X-Request-Timeout (seconds) or try again when the server is less busy"
    )

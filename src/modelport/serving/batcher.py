"""Adaptive batching: concurrent requests for one model version share one runtime call.

Each loaded version has a lane: the requests waiting for it, in arrival order. A request that
finds nobody waiting for its version does not wait either: a quick model answers it right away
in the caller's own task (no queue entry, no future, no timer), any other is dispatched on the
next turn of the event loop. What coalesces is what arrived in that turn or while earlier
batches ran in the pool. With
``max_batch_delay`` above zero a batch may instead wait that long for company (until it holds
``max_batch_size`` rows).

Guarantees:

- each caller gets exactly its own rows, and an error never reaches another caller: a batch that
  fails (or whose outputs cannot be split by row) is run again request by request;
- the queue is bounded: past ``max_queue`` waiting requests a request is refused at once (503);
- a request whose deadline passes while it waits is answered 504 and never run (one whose batch
  is already running is answered 504 at its deadline; its rows finish with the batch, unless
  nobody is left waiting for it: then the run is stopped);
- ONNX models measured to be quick run on the event loop (a thread hop costs more than they
  do); the rest run in a bounded pool of threads, at most one batch per thread;
- one model uses at most ``max_concurrency`` of those threads at once (its other requests wait
  in its queue), so a slow model cannot take every thread from the others;
- a run has ``run_seconds`` (the model's time limit): then its callers are answered 504 and an
  ONNX run is stopped (a watchdog thread ends it, even while the event loop is held); a run is
  also stopped once every caller waiting for it has gone (deadline passed, or hung up). A native
  model's run cannot be stopped in its thread: its callers are answered, and the thread stays
  counted against the model's concurrency until the run ends;
- an inline run that turns out slow (an input that makes a Loop long) is stopped after
  ``INLINE_LIMIT_SECONDS`` and run again in the pool; the model never runs inline again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import signal
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelport.errors import BadRequestError, DeadlineExceededError, OverloadedError
from modelport.monitoring.metrics import BATCH_REFUSALS, count_batch
from modelport.registry.service import VersionRef
from modelport.runtimes.onnx import RunStop
from modelport.serving.model_cache import LoadedModel
from modelport.serving.watchdog import Alarm, InlineGuard, Watchdog

TIMEOUT_HEADER = "x-request-timeout"
Outputs = Mapping[str, np.ndarray]
_BatchResult = tuple[list[Outputs | Exception], float]  # per request; seconds it all took

# A batch whose expected run time is below this runs on the event loop. Measured on 2 cores:
# a hop to a worker thread and back costs 0.1-0.4 ms, the wine forest 0.04 ms for one row and
# about 0.01 ms per row in larger batches (benchmarks/bench_batching.py).
INLINE_SECONDS = 0.0005
_COST_WEIGHT = 0.3  # share of the newest run in a model's running estimate of seconds per row
# An inline run expected to take under INLINE_SECONDS that is still running after this long is
# stopped and run again in the pool: the event loop is never held longer for one model.
INLINE_LIMIT_SECONDS = 0.05
_MOVE_TO_POOL = "too slow to run inline"
_CALLERS_GONE = "every caller waiting for this run has gone"
# A run still going this long past its limit is stuck (a native model, which cannot be stopped,
# or an ONNX operator that never looks at the stop flag). When every inference thread is stuck,
# the process cannot serve and its liveness probe says so.
STUCK_GRACE_SECONDS = 30.0
# Once the server is asked to stop, a run may go on this long: normal ones finish and answer,
# runaway ones are stopped, so the graceful wait for open requests is short.
SHUTDOWN_GRACE_SECONDS = 1.0
_SHUTTING_DOWN = "the server is shutting down and stopped the model's run; try again"


@dataclass(frozen=True)
class BatchPolicy:
    """How one model version's requests are coalesced."""

    max_batch_size: int  # rows per runtime call (a larger request runs alone, whole)
    max_batch_delay: float  # seconds a batch may wait for more requests; 0: never waits
    max_queue: int  # requests that may wait; past it a request is refused with 503
    run_seconds: float = math.inf  # longest one run may take; then it is stopped (504)
    max_concurrency: int | None = None  # inference threads the model may use; None: every one


@dataclass(eq=False)
class _Job:
    model: LoadedModel
    features: np.ndarray
    future: asyncio.Future[Outputs]
    queued_at: float
    deadline: float | None  # event-loop time
    taken: bool = False  # left the queue for a batch
    run: _Run | None = None  # the pooled run it is part of, once it started

    @property
    def rows(self) -> int:
        return int(self.features.shape[0])


@dataclass(eq=False)
class _Run:
    """One batch in the inference pool: when it started, its limit, how to stop it."""

    model_name: str
    jobs: list[_Job]
    limit: float
    started: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    stop_handle: RunStop | None  # None: the runtime cannot be stopped (native models)
    alarm: Alarm | None = None
    finished: bool = False

    def stop(self, message: str) -> None:
        """End the run (when its runtime can be ended) and answer its callers now. Called from
        the watchdog thread or the event loop."""
        if self.stop_handle is not None:
            self.stop_handle.stop(message)
        if message != _CALLERS_GONE and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._answer, message)

    def _answer(self, message: str) -> None:
        for job in self.jobs:
            if not job.future.done():
                job.future.set_exception(DeadlineExceededError(message))

    def abandoned(self) -> bool:
        """Still running, with nobody left waiting for it."""
        return not self.finished and all(job.future.done() for job in self.jobs)

    def stuck(self, now: float) -> bool:
        return now - self.started > self.limit + STUCK_GRACE_SECONDS


@dataclass(eq=False)
class _Lane:
    version_id: uuid.UUID
    model_name: str
    policy: BatchPolicy
    jobs: deque[_Job] = field(default_factory=deque)
    queued_rows: int = 0
    running: int = 0  # batches of this version in the pool
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
        self._runs: set[_Run] = set()  # batches in the pool
        self._running_by_model: dict[str, int] = {}  # a model's batches in the pool
        self._watchdog = Watchdog()
        self._inline_guard = InlineGuard(INLINE_LIMIT_SECONDS, _MOVE_TO_POOL)
        self._winding_down = False

    def policy_for(self, ref: VersionRef) -> BatchPolicy:
        """The rules for one version: the settings', with the model's own time limit and
        concurrency where its owner set them (the registry keeps them within the server's)."""
        policy = self._policy
        if ref.inference_timeout_seconds is None and ref.max_concurrency is None:
            return policy
        return dataclasses.replace(
            policy,
            run_seconds=ref.inference_timeout_seconds or policy.run_seconds,
            max_concurrency=ref.max_concurrency or policy.max_concurrency,
        )

    async def run(
        self,
        model: LoadedModel,
        features: np.ndarray,
        time_left: float | None,
        ref: VersionRef | None = None,
    ) -> Outputs:
        """The model's outputs for exactly ``features``' rows, run alone or with others'.
        ``time_left``: seconds before the caller's deadline (None: no deadline). ``ref``: the
        version as just resolved, whose limits apply (default: as it was when loaded)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        ref = ref or model.ref
        name = ref.model_name
        if time_left is not None and time_left <= 0:
            BATCH_REFUSALS.labels(model=name, reason="deadline").inc()
            raise _deadline_passed()
        lane = self._lanes.get(ref.version_id)
        policy = self.policy_for(ref)  # a limit just changed applies from now
        if lane is None and policy.max_batch_delay <= 0:
            # Nobody waits for this version: a quick model answers right here, in the
            # caller's task, with no queue entry, future or deadline timer to pay for.
            outputs = self._run_alone_inline(name, model.runtime, features)
            if outputs is not None:
                return outputs
        if lane is None:
            lane = _Lane(ref.version_id, name, policy)
            self._lanes[ref.version_id] = lane
        else:
            lane.policy = policy
        if len(lane.jobs) >= lane.policy.max_queue:
            BATCH_REFUSALS.labels(model=name, reason="queue_full").inc()
            raise OverloadedError(  # with Retry-After
                f"model {name!r} has {len(lane.jobs)} requests waiting already for its "
                f"{self._model_threads(lane)} inference thread(s); try again shortly"
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
            elif job.run is not None and job.run.abandoned():
                job.run.stop(_CALLERS_GONE)  # nobody would read its answer

    def waiting(self, version_id: uuid.UUID) -> int:
        """Requests queued for a version, not yet in a running batch."""
        lane = self._lanes.get(version_id)
        return len(lane.jobs) if lane is not None else 0

    def load(self) -> dict[str, int]:
        """How busy inference is: threads, those running a batch, those stuck past their run's
        limit, and requests waiting for a thread."""
        now = time.monotonic()
        return {
            "threads": self._pool_threads,
            "busy": len(self._runs),
            "stuck": sum(1 for run in self._runs if run.stuck(now)),
            "waiting": sum(len(lane.jobs) for lane in self._lanes.values()),
        }

    def wind_down(self) -> None:
        """The server is stopping: every run, now or later, has at most
        SHUTDOWN_GRACE_SECONDS left."""
        self._winding_down = True
        for run in self._runs:
            self._watchdog.arm(SHUTDOWN_GRACE_SECONDS, run, _SHUTTING_DOWN)

    def wind_down_on_signals(self) -> None:
        """Wind down as soon as SIGTERM or SIGINT arrives, before the server's own handler (which
        first waits for open requests, some of them held by runaway runs). Only the main thread
        may install signal handlers; elsewhere (tests) this does nothing."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()

        def wind_down_soon() -> None:
            if not loop.is_closed():  # from a signal handler: the loop does it, not the handler
                loop.call_soon_threadsafe(self.wind_down)

        for number in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(number)
            if callable(previous):
                signal.signal(number, _chained(wind_down_soon, previous))

    def close(self) -> None:
        """Stop every run (so shutting down never waits for a runaway model), then the pool."""
        for run in list(self._runs):
            if run.stop_handle is not None:
                run.stop_handle.stop("the server is shutting down")
        self._watchdog.close()
        self._inline_guard.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _model_threads(self, lane: _Lane) -> int:
        limit = lane.policy.max_concurrency
        return self._pool_threads if limit is None else min(limit, self._pool_threads)

    def _has_room(self, lane: _Lane) -> bool:
        """A thread is free, and the model uses fewer than it may."""
        running = self._running_by_model.get(lane.model_name, 0)
        return len(self._runs) < self._pool_threads and running < self._model_threads(lane)

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
        while lane.jobs and self._has_room(lane):
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
        count_batch(lane.model_name, rows, len(batch))
        features = [job.features for job in batch]
        stoppable = getattr(runtime, "stoppable", False)
        if self._quick(runtime, rows):
            result = self._run_inline(runtime, features)
            if result is not None:
                self._settle(runtime, rows, batch, result)
                return
        limit = lane.policy.run_seconds
        run = _Run(
            lane.model_name,
            batch,
            min(limit, SHUTDOWN_GRACE_SECONDS) if self._winding_down else limit,
            time.monotonic(),
            loop,
            RunStop() if stoppable else None,
        )
        if math.isfinite(run.limit):
            why = _SHUTTING_DOWN if self._winding_down else _ran_too_long(limit, stoppable)
            run.alarm = self._watchdog.arm(run.limit, run, why)
        for job in batch:
            job.run = run
        lane.running += 1
        self._runs.add(run)
        self._running_by_model[lane.model_name] = self._running_by_model.get(lane.model_name, 0) + 1
        pooled = loop.run_in_executor(self._pool, run_batch, runtime, features, run.stop_handle)
        pooled.add_done_callback(functools.partial(self._finished, lane, run, runtime, rows, loop))

    def _quick(self, runtime: Any, rows: int) -> bool:
        """Whether ``rows`` run on the event loop: only ONNX Runtime, whose cost follows the
        rows, measured quicker than a thread hop. A native model may run any Python (a
        pipeline's function step) whose past speed says nothing of the next call's."""
        cost = self._costs.get(runtime)
        return (
            cost is not None
            and runtime.flavor == "onnx"
            and getattr(runtime, "stoppable", False)
            and cost * rows <= self._inline_seconds
        )

    def _run_inline(self, runtime: Any, features: list[np.ndarray]) -> _BatchResult | None:
        """The batch run on the event loop; None if it turned out slow and was stopped (the
        model never runs inline again, and the batch goes to the pool)."""
        stop = RunStop()
        self._inline_guard.begin(stop)
        try:
            result = run_batch(runtime, features, stop)
        finally:
            self._inline_guard.end()
        if stop.message == _MOVE_TO_POOL:
            self._costs[runtime] = math.inf
            return None
        return result

    def _run_alone_inline(self, name: str, runtime: Any, features: np.ndarray) -> Outputs | None:
        """One request's outputs, run at once on the event loop when its model is quick; None
        when it is not (or turned out slow): then it queues like any other."""
        rows = int(features.shape[0])
        if not self._quick(runtime, rows):
            return None
        result = self._run_inline(runtime, [features])
        if result is None:  # turned out slow: queue it
            return None
        count_batch(name, rows, 1)
        self._learn_cost(runtime, rows, result[1])
        [outcome] = result[0]
        if isinstance(outcome, Exception):  # the caller's alone
            raise outcome
        return outcome

    def _finished(
        self,
        lane: _Lane,
        run: _Run,
        runtime: Any,
        rows: int,
        loop: asyncio.AbstractEventLoop,
        finished: asyncio.Future[_BatchResult],
    ) -> None:
        run.finished = True
        if run.alarm is not None:
            self._watchdog.disarm(run.alarm)
        lane.running -= 1
        self._runs.discard(run)
        left = self._running_by_model[lane.model_name] - 1
        if left:
            self._running_by_model[lane.model_name] = left
        else:
            del self._running_by_model[lane.model_name]
        try:
            result = finished.result()
        except BaseException as exc:  # the pool shut down under it
            failure = RuntimeError(f"the inference pool stopped: {exc!r}")
            result = ([failure] * len(run.jobs), 0.0)
        self._settle(runtime, rows, run.jobs, result)
        # A thread is free: the other lanes waiting for one first, then this one.
        for other in [other for other in self._lanes.values() if other.jobs and other is not lane]:
            self._redispatch(other, loop)
        self._redispatch(lane, loop)

    def _redispatch(self, lane: _Lane, loop: asyncio.AbstractEventLoop) -> None:
        if lane.wakeup is not None:  # dispatching now; a pending wake-up would find less to do
            lane.wakeup.cancel()
            lane.wakeup = None
        self._dispatch(lane, loop)

    def _learn_cost(self, runtime: Any, rows: int, seconds: float) -> None:
        if seconds > 0 and runtime.flavor == "onnx":  # only ONNX models may run inline
            per_row = seconds / rows
            known = self._costs.get(runtime)
            self._costs[runtime] = (
                per_row if known is None else known + _COST_WEIGHT * (per_row - known)
            )

    def _settle(
        self,
        runtime: Any,
        rows: int,
        batch: list[_Job],
        result: _BatchResult,
    ) -> None:
        outcomes, seconds = result
        self._learn_cost(runtime, rows, seconds)
        for job, outcome in zip(batch, outcomes, strict=True):
            if job.future.done():  # its caller's deadline passed while the batch ran
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)


def run_batch(
    runtime: Any, features: Sequence[np.ndarray], stop: RunStop | None = None
) -> _BatchResult:
    """Each request's outputs (or the error it alone causes), and the seconds it all took.

    One runtime call for all when it succeeds and every output has a row per input row;
    otherwise each request runs on its own, so only the culprit sees an error. A run that was
    stopped is not tried again: every request gets why it was stopped."""
    started = time.perf_counter()
    if len(features) > 1:
        try:
            outputs = _predict(runtime, np.concatenate(features), stop)
            split = _split(outputs, [len(part) for part in features])
            if split is not None:
                return split, time.perf_counter() - started
        except Exception:  # noqa: S110 - retried request by request just below
            pass
    outcomes: list[Outputs | Exception] = []
    for part in features:
        if stop is not None and stop.message is not None:
            outcomes.append(DeadlineExceededError(stop.message))
        else:
            outcomes.append(_run_one(runtime, part, stop))
    return outcomes, time.perf_counter() - started


def _predict(runtime: Any, features: np.ndarray, stop: RunStop | None) -> Outputs:
    outputs: Outputs = (
        runtime.predict_outputs(features)
        if stop is None
        else runtime.predict_outputs(features, stop)
    )
    return outputs


def _run_one(runtime: Any, features: np.ndarray, stop: RunStop | None) -> Outputs | Exception:
    try:
        return _predict(runtime, features, stop)
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


def _chained(
    first: Callable[[], None], then: Callable[[int, Any], Any]
) -> Callable[[int, Any], None]:
    def handler(number: int, frame: Any) -> None:
        first()
        then(number, frame)

    return handler


def _ran_too_long(limit: float, stoppable: bool) -> str:
    if stoppable:
        return f"the model ran longer than its {limit:g} s limit and was stopped"
    return (
        f"the model ran longer than its {limit:g} s limit; its answer was abandoned (this kind "
        "of model cannot be stopped mid-run, so it keeps one of the model's inference threads "
        "until it ends)"
    )


def _deadline_passed() -> DeadlineExceededError:
    return DeadlineExceededError(
        "the request's deadline passed before the model could answer; send a longer "
        "X-Request-Timeout (seconds) or try again when the server is less busy"
    )

"""Run the training step in a child process under the job's limits, and say in words a user
can act on why it stopped. The child is killed when its time is up, when the job is cancelled
(the runner shuts down, or lost its lease) and, on Linux, when this process dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
from typing import Any

import anyio
import numpy as np

from modelport.errors import ModelportError
from modelport.jobs.runner import PermanentJobError
from modelport.training.budget import TrainingLimits

logger = logging.getLogger(__name__)
CHILD_MODULE = "modelport.training.child"
READY = b"R"  # the child's first byte: libraries loaded, memory capped, training starts
STARTUP_SECONDS = 120.0
# One core per training: the other cores keep serving predictions.
_ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_ADVICE = (
    "lower n_estimators or max_depth (or max_iter), raise min_samples_leaf, or train on fewer rows"
)


def _size(n: float) -> str:
    return f"{n / 1_048_576:,.1f} MB" if n >= 1_048_576 else f"{n / 1024:,.0f} KB"


async def train_in_child(
    spec: dict[str, Any], features: np.ndarray, target: np.ndarray, limits: TrainingLimits
) -> tuple[Any, dict[str, float]]:
    """The prepared version and its holdout metrics; PermanentJobError when the job went over
    a limit or its data cannot train."""
    request = pickle.dumps(
        {
            "parent_pid": os.getpid(),
            "spec": spec,
            "features": features,
            "target": target,
            "memory_limit_bytes": limits.memory_limit_bytes,
            "max_artifact_bytes": limits.max_artifact_bytes,
        },
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        CHILD_MODULE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **_ONE_THREAD},
        start_new_session=True,  # a terminal's Ctrl-C reaches the server, which ends it
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    errors = asyncio.ensure_future(process.stderr.read())  # drained all along: never blocks it
    started, output = False, b""
    try:
        # Starting Python and loading the libraries is not the job's time: on a busy server it
        # can take seconds. It has a bound of its own.
        async with asyncio.timeout(STARTUP_SECONDS):
            process.stdin.write(request)
            await process.stdin.drain()
            process.stdin.close()
            first = await process.stdout.read(1)
            started = first == READY
            if not started:  # it failed before training (its outcome follows) or died
                output = first + await process.stdout.read()
                await process.wait()
        if started:
            async with asyncio.timeout(limits.time_limit_seconds):
                output = await process.stdout.read()
                await process.wait()
    except TimeoutError:
        if not started:
            raise ModelportError(
                "the training process did not start in time; the server is busy, try again",
                internal=f"no ready mark from the training process in {STARTUP_SECONDS} s",
            ) from None
        raise PermanentJobError(
            f"training stopped after {limits.time_limit_seconds:g} s, the time limit per job "
            f"(MODELPORT_TRAINING_TIME_LIMIT_SECONDS): {_ADVICE}"
        ) from None
    finally:
        if process.returncode is None:  # timed out or cancelled: it must not run on
            process.kill()
            await process.wait()
    error_text = b""
    with contextlib.suppress(TimeoutError):  # it has exited: its stderr ends now
        async with asyncio.timeout(5):
            error_text = await errors
    return await _result(process.returncode, output, error_text, limits)


async def _result(
    returncode: int | None, output: bytes, errors: bytes, limits: TrainingLimits
) -> tuple[Any, dict[str, float]]:
    memory = (
        f"training stopped: it needed more memory than the limit of "
        f"{_size(limits.memory_limit_bytes)} per job (MODELPORT_TRAINING_MEMORY_LIMIT_BYTES): "
        f"{_ADVICE}"
    )
    if returncode != 0 or not output:
        tail = errors.decode("utf-8", "replace")[-2000:]
        if returncode is not None and returncode < 0:  # killed by a signal: a failed
            # allocation that aborted, or the kernel's out-of-memory killer
            logger.warning(
                "training process killed", extra={"signal": -returncode, "internal": tail}
            )
            raise PermanentJobError(memory)
        raise ModelportError(
            "training failed on an internal error; the server log has the details",
            internal=f"training process exited with {returncode}: {tail}",
        )
    # Written by our own child process, never by a caller: its data is numbers it was given.
    outcome = await anyio.to_thread.run_sync(pickle.loads, output)
    kind = outcome[0]
    if kind == "ok":
        return outcome[1], outcome[2]
    if kind == "memory":
        raise PermanentJobError(memory)
    if kind == "artifact":
        raise PermanentJobError(
            f"training stopped: the trained model is {_size(outcome[1])}, over the limit of "
            f"{_size(limits.max_artifact_bytes)} per model "
            f"(MODELPORT_TRAINING_MAX_ARTIFACT_BYTES): {_ADVICE}"
        )
    if kind == "invalid":
        raise PermanentJobError(f"training failed: {outcome[1]}")
    raise ModelportError(
        "training failed on an internal error; the server log has the details",
        internal=str(outcome[1]),
    )

"""The training step in a process of its own (``python -m modelport.training.child``).

The parent (``training.isolation``) writes a pickled request on stdin: the job's spec, the
feature and target arrays and the limits. This process loads the libraries, then caps its
address space (RLIMIT_AS) at what they take plus the memory limit, fits the model, checks the
artifact size and prepares the version exactly as an upload is prepared (skops file in,
converted to ONNX and verified). It writes one pickled outcome on its original stdout:
a ready mark once the libraries are loaded (the job's time limit runs from there), then
``("ok", prepared, metrics)``, or ``(kind, message)`` for a failure the user should read.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import resource
import signal
import sys
import traceback
from typing import Any, BinaryIO

import numpy as np

PR_SET_PDEATHSIG = 1  # linux/prctl.h
READY = b"R"  # training.isolation.READY


class ArtifactTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _die_with_parent(parent_pid: int) -> None:
    """Killed when the server process that started it goes, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent went before the line above ran
        os._exit(1)


def _load_libraries() -> None:
    """Everything the training needs, imported before the memory cap: the cap bounds the
    training, not the size of the installed libraries."""
    import onnxruntime  # noqa: F401
    import skl2onnx  # noqa: F401
    import sklearn.ensemble  # noqa: F401

    from modelport.ingest import preparation  # noqa: F401
    from modelport.ingest.build_only import import_skops_io

    import_skops_io()


def _cap_memory(limit_bytes: int) -> None:
    with open("/proc/self/statm") as statm:
        loaded = int(statm.read().split()[0]) * resource.getpagesize()
    cap = loaded + limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def train_and_prepare(
    spec: dict[str, Any], features: np.ndarray, target: np.ndarray, max_artifact_bytes: int
) -> tuple[Any, dict[str, float]]:
    from modelport.ingest.build_only import import_skops_io
    from modelport.ingest.preparation import prepare_upload
    from modelport.runtimes.signature import FieldSpec, Signature
    from modelport.training import algorithms

    estimator = algorithms.build(
        spec["algorithm"], spec["task"], spec["params"], spec["random_state"]
    )
    trained = algorithms.fit_with_holdout(
        estimator, features, target, spec["task"], spec["test_size"], spec["random_state"]
    )
    data = import_skops_io().dumps(trained.model)
    if len(data) > max_artifact_bytes:  # before converting it: that would cost as much again
        raise ArtifactTooLarge(len(data))
    # The trained model goes through the same door as an upload: skops file in, converted to
    # ONNX and verified (or served natively, saying why).
    signature = Signature(
        task=spec["task"],
        inputs=tuple(
            FieldSpec(name=name, example=float(features[0, i]))
            for i, name in enumerate(spec["features"])
        ),
        outputs=(FieldSpec(name="label", type="str"), FieldSpec(name="probabilities"))
        if spec["task"] == "classification"
        else (FieldSpec(name=spec["target"]),),
    )
    prepared = prepare_upload(data, declared_flavor="skops", signature=signature, task=spec["task"])
    if len(prepared.artifact) > max_artifact_bytes:
        raise ArtifactTooLarge(len(prepared.artifact))
    return prepared, trained.metrics


def _outcome(request: dict[str, Any], result: BinaryIO) -> tuple[Any, ...]:
    from modelport.errors import ModelportError, public_text

    try:
        _load_libraries()
        _cap_memory(request["memory_limit_bytes"])
        result.write(READY)  # the job's time limit runs from here
        result.flush()
        prepared, metrics = train_and_prepare(
            request["spec"], request["features"], request["target"], request["max_artifact_bytes"]
        )
        return ("ok", prepared, metrics)
    except MemoryError:
        return ("memory", "")
    except ArtifactTooLarge as exc:
        return ("artifact", exc.size)
    except ModelportError as exc:
        return ("invalid", exc.message)
    except ValueError as exc:  # what scikit-learn says about the data (e.g. one class only)
        return ("invalid", public_text(str(exc)))
    except Exception:
        return ("crash", traceback.format_exc(limit=20))


def main() -> None:
    result: BinaryIO = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the result
    request = pickle.load(sys.stdin.buffer)  # noqa: S301 - written by the server that started us
    _die_with_parent(request["parent_pid"])
    outcome = _outcome(request, result)
    del request
    pickle.dump(outcome, result, protocol=pickle.HIGHEST_PROTOCOL)
    result.flush()


if __name__ == "__main__":
    main()

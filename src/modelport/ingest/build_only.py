"""Keep build-time-only libraries out of the server process.

PyTorch is installed for one build step (converting the built-in image classifier), but the
server must never load it. Importing skops walks every scikit-learn module, and one of them
(an array-API shim) imports torch whenever it is installed; ``without_torch`` makes that import
fail for the duration, which those modules tolerate.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


class _RefuseTorch:
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("torch is used only at build time", name=name)
        return None


@contextlib.contextmanager
def without_torch() -> Iterator[None]:
    if "torch" in sys.modules:  # a build step in this process already loaded it
        yield
        return
    finder = _RefuseTorch()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def import_skops_io() -> ModuleType:
    """``skops.io``, imported without dragging PyTorch into the server."""
    with without_torch():
        return importlib.import_module("skops.io")

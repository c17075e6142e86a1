"""What changed in the registry, announced after each commit to whoever remembers registry state.

The owner of a unit of work commits first and publishes second, so a listener never sees a change
that was rolled back. Listeners (the version resolver, the model cache, and a bridge that carries
changes to other replicas) subscribe once when the app is assembled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

ChangeKind = Literal["model", "version", "alias"]


@dataclass(frozen=True)
class RegistryChange:
    """``model_name`` changed: its settings or visibility, a version, or an alias."""

    model_name: str
    kind: ChangeKind


Listener = Callable[[RegistryChange], None]


class RegistryChanges:
    """A process-local hub: publish after commit, every subscriber hears every change."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, change: RegistryChange) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # one listener's bug must not undo a committed change
                logger.exception("a registry change listener failed", extra={"change": change})

"""What changed, announced after each commit to whoever remembers state across requests.

The owner of a unit of work commits first and publishes second, so a listener never hears of a
change that was rolled back. Listeners (the version resolver, the caches of who is calling, and
a bridge that carries changes to other replicas) subscribe once when the app is assembled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

# model / version / alias: ``subject`` is a model name. api_key: a key id. user: a user id
# (disabled, role changed). session: a refresh-token family id (signed out, reused).
Topic = Literal["model", "version", "alias", "api_key", "user", "session"]
REGISTRY_TOPICS: frozenset[Topic] = frozenset({"model", "version", "alias"})


@dataclass(frozen=True)
class Change:
    topic: Topic
    subject: str
    # True when the change was made by another replica and carried here: not sent on again.
    remote: bool = False


Listener = Callable[[Change], None]


class ChangeHub:
    """A process-local hub: publish after commit, every subscriber hears every change."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, change: Change) -> None:
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:  # one listener's bug must not undo a committed change
                logger.exception("a change listener failed", extra={"topic": change.topic})

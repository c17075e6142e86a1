"""Stops model runs whose time is up, from a thread of its own.

The batcher arms an alarm when a run starts and disarms it when the run ends. The alarm fires
on this thread, not the event loop, so a run is stopped on time even while the event loop is
held (an ONNX model run inline that turned out slow is exactly that case).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)


class Stoppable(Protocol):
    def stop(self, message: str) -> None: ...


@dataclass(eq=False)
class Alarm:
    at: float  # time.monotonic()
    target: Stoppable
    message: str
    cancelled: bool = field(default=False)


class Watchdog:
    def __init__(self) -> None:
        self._wakeup = threading.Condition()
        self._alarms: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()  # ties never compare alarms
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, seconds: float, target: Stoppable, message: str) -> Alarm:
        """Call ``target.stop(message)`` in ``seconds`` unless disarmed first."""
        alarm = Alarm(time.monotonic() + seconds, target, message)
        with self._wakeup:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._watch, name="run-watchdog")
                self._thread.daemon = True  # never keeps the process from exiting
                self._thread.start()
            earliest = self._alarms[0][0] if self._alarms else None
            heapq.heappush(self._alarms, (alarm.at, next(self._order), alarm))
            if earliest is None or alarm.at < earliest:
                self._wakeup.notify()
        return alarm

    @staticmethod
    def disarm(alarm: Alarm) -> None:
        alarm.cancelled = True  # dropped when it comes up; cheaper than taking it out now

    def close(self) -> None:
        with self._wakeup:
            self._closed = True
            self._wakeup.notify()

    def _watch(self) -> None:
        while True:
            due: list[Alarm] = []
            with self._wakeup:
                if self._closed:
                    return
                now = time.monotonic()
                while self._alarms and (self._alarms[0][2].cancelled or self._alarms[0][0] <= now):
                    _, _, alarm = heapq.heappop(self._alarms)
                    if not alarm.cancelled:
                        due.append(alarm)
                if not due:
                    wait = self._alarms[0][0] - now if self._alarms else None
                    self._wakeup.wait(wait)
                    continue
            for alarm in due:
                try:
                    alarm.target.stop(alarm.message)
                except Exception:  # one failure must not leave later runs unstopped
                    logger.exception("stopping a model run failed")


class InlineGuard:
    """Stops a run on the event loop that goes on past ``limit`` seconds. Such runs are many
    and short, so instead of an alarm each (a wake-up of the watchdog per run), a thread looks
    every few milliseconds at which run is on and since when."""

    def __init__(self, limit: float, message: str) -> None:
        self._limit = limit
        self._message = message
        self._current: tuple[Stoppable, float] | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def begin(self, target: Stoppable) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="inline-guard", daemon=True)
            self._thread.start()
        self._current = (target, time.monotonic())

    def end(self) -> None:
        self._current = None

    def close(self) -> None:
        self._closed.set()

    def _watch(self) -> None:
        while not self._closed.wait(self._limit / 5):
            current = self._current
            if current is not None and time.monotonic() - current[1] >= self._limit:
                target, _ = current
                target.stop(self._message)  # a run that just ended is not hurt by it

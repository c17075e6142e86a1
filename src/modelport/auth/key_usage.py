"""Remember when API keys were used and write it now and then, not on every request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.service import record_key_use

logger = logging.getLogger(__name__)


class KeyUsageRecorder:
    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], interval: float = 30.0
    ) -> None:
        self._session_factory = session_factory
        self._interval = interval
        self._pending: dict[uuid.UUID, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    def touch(self, key_id: uuid.UUID) -> None:
        self._pending[key_id] = datetime.now(UTC)

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            async with self._session_factory() as session:
                await record_key_use(session, pending)
                await session.commit()
        except Exception:
            # Keep the newest time per key for the next attempt.
            for key_id, when in pending.items():
                self._pending.setdefault(key_id, when)
            raise

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="api-key-usage")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:
                logger.warning("could not record API key use", extra={"error": str(exc)})

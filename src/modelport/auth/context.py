"""What deciding who is calling needs, assembled once per process by the app factory."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.callers import Callers
from modelport.auth.key_usage import KeyUsageRecorder
from modelport.auth.tokens import TokenCodec
from modelport.ratelimit.buckets import Limiter
from modelport.settings import Settings


@dataclass(frozen=True)
class AuthContext:
    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    tokens: TokenCodec
    limiter: Limiter
    key_usage: KeyUsageRecorder
    callers: Callers

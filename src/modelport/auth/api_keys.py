"""API key material: ``mp_`` + 32 random bytes; only the SHA-256 is ever stored."""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "mp_"
VISIBLE_PREFIX_LENGTH = 10  # "mp_" + 7 characters, enough to recognise a key in a list
SCOPES = ("predict", "read", "manage")
DEFAULT_LIFETIME_DAYS = 90


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def visible_prefix(key: str) -> str:
    return key[:VISIBLE_PREFIX_LENGTH]


def looks_like_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX) and 20 <= len(value) <= 100

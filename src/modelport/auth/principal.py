"""Who is calling: a user (by JWT or API key) or an anonymous client address."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

ALL_SCOPES = frozenset({"predict", "read", "manage"})


@dataclass(frozen=True)
class Principal:
    client_address: str
    user_id: uuid.UUID | None = None
    role: str | None = None
    api_key_id: uuid.UUID | None = None
    api_key_rate_limit: int | None = None
    api_key_expires_at: datetime | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_anonymous(self) -> bool:
        return self.user_id is None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see(self, owner_id: uuid.UUID | None, public: bool) -> bool:
        """Own resources, public ones, or everything for an admin."""
        return public or self.is_admin or (owner_id is not None and owner_id == self.user_id)

    def can_access_by_id(self, owner_id: uuid.UUID | None) -> bool:
        """Records made anonymously have no owner: their unguessable id is what grants access."""
        return self.is_admin or owner_id is None or owner_id == self.user_id

    def can_change(self, owner_id: uuid.UUID | None) -> bool:
        return self.is_admin or (owner_id is not None and owner_id == self.user_id)

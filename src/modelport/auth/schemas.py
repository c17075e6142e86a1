"""API shapes for accounts, tokens and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Scope = Literal["predict", "read", "manage"]
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"  # names are shown in lists; no control characters
Role = Literal["admin", "user"]


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Annotated[str, Field(max_length=320, examples=["winemaker@example.com"])]
    password: Annotated[str, Field(max_length=1024, examples=["a long passphrase"])]


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    refresh_token: Annotated[str, Field(max_length=4096)]


class TokenPairOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - a scheme name, not a secret
    expires_in: int = Field(description="Seconds until the access token expires")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: Role
    disabled: bool
    created_at: datetime


class UserUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    disabled: bool | None = None


class ApiKeyCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, Field(min_length=1, max_length=100, pattern=_PRINTABLE, examples=["notebook"])
    ]
    scopes: Annotated[list[Scope], Field(min_length=1, examples=[["predict", "read"]])] = [
        "predict",
        "read",
    ]
    expires_in_days: Annotated[int, Field(ge=1, le=365)] = 90
    rate_limit_per_minute: Annotated[
        int | None, Field(ge=1, le=1_000_000, description="Override (admins only)")
    ] = None


class ApiKeyUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str | None, Field(min_length=1, max_length=100, pattern=_PRINTABLE)] = None
    scopes: Annotated[list[Scope] | None, Field(min_length=1)] = None
    rate_limit_per_minute: Annotated[int | None, Field(ge=1, le=1_000_000)] = None


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str = Field(description="The key's first characters, to recognise it")
    scopes: list[str]
    rate_limit_per_minute: int | None
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="The key itself. Shown only now: store it safely.")


class ApiKeyListOut(BaseModel):
    items: list[ApiKeyOut]


class UserListOut(BaseModel):
    items: list[UserOut]

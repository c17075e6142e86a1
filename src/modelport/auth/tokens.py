"""JWT access and refresh tokens: HS256, explicit algorithm list, issuer/audience/expiry checked."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import jwt

ALGORITHM = "HS256"
TokenType = Literal["access", "refresh"]


class InvalidTokenError(Exception):
    """The token cannot be trusted; the message says why (without echoing the token)."""


@dataclass(frozen=True)
class TokenClaims:
    user_id: uuid.UUID
    token_id: uuid.UUID
    token_type: TokenType
    family_id: uuid.UUID | None
    expires_at: datetime
    # The account's token generation when the token was issued (see User.token_generation).
    generation: int = 0


class TokenCodec:
    def __init__(
        self,
        secret: str,
        issuer: str,
        audience: str,
        access_ttl: timedelta,
        refresh_ttl: timedelta,
    ) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("the JWT secret must be at least 32 bytes")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def issue(
        self,
        user_id: uuid.UUID,
        token_type: TokenType,
        *,
        token_id: uuid.UUID | None = None,
        family_id: uuid.UUID | None = None,
        generation: int = 0,
    ) -> tuple[str, TokenClaims]:
        now = datetime.now(UTC)
        ttl = self.access_ttl if token_type == "access" else self.refresh_ttl  # noqa: S105
        claims = TokenClaims(
            user_id=user_id,
            token_id=token_id or uuid.uuid4(),
            token_type=token_type,
            family_id=family_id,
            expires_at=now + ttl,
            generation=generation,
        )
        payload: dict[str, Any] = {
            "sub": str(user_id),
            "jti": str(claims.token_id),
            "typ": token_type,
            "iss": self._issuer,
            "aud": self._audience,
            "iat": now,
            "nbf": now,
            "exp": claims.expires_at,
            "gen": generation,
        }
        if family_id is not None:
            payload["fam"] = str(family_id)
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM), claims

    def decode(self, token: str, expected_type: TokenType) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "nbf", "iat", "iss", "aud", "sub", "jti", "typ"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidTokenError("token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("token audience is wrong") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("token issuer is wrong") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidTokenError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise InvalidTokenError(f"token algorithm is not allowed (only {ALGORITHM})") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("token signature is wrong") from None
        except jwt.PyJWTError:
            raise InvalidTokenError("token is malformed") from None
        if payload.get("typ") != expected_type:
            article = "an" if expected_type == "access" else "a"
            raise InvalidTokenError(f"{article} {expected_type} token is required here")
        if expected_type == "access" and not ("fam" in payload and "gen" in payload):
            # Without its session an access token could not be ended by signing out.
            raise InvalidTokenError("token names no session; refresh it or sign in again")
        try:
            return TokenClaims(
                user_id=uuid.UUID(payload["sub"]),
                token_id=uuid.UUID(payload["jti"]),
                token_type=expected_type,
                family_id=uuid.UUID(payload["fam"]) if "fam" in payload else None,
                expires_at=datetime.fromtimestamp(payload["exp"], UTC),
                generation=_generation(payload.get("gen", 0)),
            )
        except (ValueError, TypeError):
            raise InvalidTokenError("token claims are malformed") from None


def _generation(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("gen must be a non-negative integer")
    return value

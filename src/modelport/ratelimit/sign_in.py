"""Failed sign-ins, counted so that guessing is slow and cannot be aimed at someone else.

Three buckets count failures: the address-and-account pair (tight: a guesser at one address is
stopped quickly without locking the owner out from elsewhere), the address across accounts
(one address spraying many accounts), and the account from everywhere (looser and slower to
refill: guessing spread over many addresses). An attempt reserves a token in each before the
password is checked, in one atomic step on all three (so concurrent attempts can never all pass
one check, and a refused attempt costs no bucket anything); a right password (or any outcome
that is not a wrong password) gives the tokens back.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelport.errors import TooManyRequestsError
from modelport.ratelimit.buckets import SIGN_IN_PREFIX, Limit, Limiter


@dataclass(frozen=True)
class SignInLimits:
    per_pair: Limit
    per_address: Limit
    per_account: Limit


class Attempt:
    """One reserved sign-in attempt, counted as failed unless ``release`` gives it back."""

    def __init__(self, limiter: Limiter, reserved: list[tuple[str, Limit]]) -> None:
        self._limiter = limiter
        self._reserved = reserved

    async def release(self) -> None:
        reserved, self._reserved = self._reserved, []
        if reserved:
            await self._limiter.take_all(reserved, cost=-1)


class SignInThrottle:
    def __init__(self, limiter: Limiter, limits: SignInLimits) -> None:
        self._limiter = limiter
        self._limits = limits

    def _buckets(self, account: str, address: str) -> list[tuple[str, Limit]]:
        return [
            (f"{SIGN_IN_PREFIX}pair:{address}|{account}", self._limits.per_pair),
            (f"{SIGN_IN_PREFIX}ip:{address}", self._limits.per_address),
            (f"{SIGN_IN_PREFIX}account:{account}", self._limits.per_account),
        ]

    async def reserve(self, account: str, address: str) -> Attempt:
        """Count this attempt as failed until it succeeds; 429 when a bucket is empty. One
        atomic step on every bucket (one script with Redis, never a lease): an attempt is
        counted in all three or in none."""
        buckets = self._buckets(account, address)
        decisions = await self._limiter.take_all(buckets)
        refusals = [decision for decision in decisions if not decision.allowed]
        if refusals:
            retry_after = max(decision.retry_after for decision in refusals)
            raise TooManyRequestsError(
                f"too many failed sign-ins; try again in {retry_after} s", retry_after
            )
        return Attempt(self._limiter, buckets)

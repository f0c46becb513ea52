"""The one HTTP retry helper of the platform: the crawler/image fetcher (:mod:`mella.net`), the
moderation API client and the MT API clients retry through :func:`retry_async`.

Policy (:class:`RetryPolicy`): at most ``retries`` retries after the first attempt, exponential backoff
``backoff_base_s * 2**n`` (× 1..1+``jitter`` random) capped at ``backoff_max_s``; a server's
``Retry-After`` (RFC 9110 10.2.3: delay-seconds or an HTTP-date) replaces the backoff, capped the same;
``max_timeout_retries`` bounds retries after a *timeout* separately (a host that did not answer in
time once rarely answers the second time, and each try costs a whole timeout); ``deadline_s`` bounds the
whole call, every attempt and sleep included: no retry starts, and no sleep is begun, that would pass
it, and the attempt function is told the time left so it can bound its own request.
(``tenacity``/``backoff`` on PyPI retry functions but neither honours Retry-After, splits timeout
retries from the rest nor hands the attempt its remaining budget; the loop is 30 lines.)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retry settings (seconds). ``deadline_s`` None: no total bound; ``max_timeout_retries`` None: as ``retries``."""

    retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.25
    deadline_s: float | None = None
    max_timeout_retries: int | None = None

    def backoff(self, n: int, retry_after: float | None = None) -> float:
        """Sleep before retry ``n`` (0-based), seconds: Retry-After if given, else exponential; both capped."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.backoff_max_s)
        return min(self.backoff_base_s * 2**n * (1 + self.jitter * random.random()), self.backoff_max_s)


class Retryable(Exception):
    """Raised by an attempt to ask for a retry. ``error``: what to raise when no retry is left;
    ``retry_after``: seconds the server asked for (None: backoff); ``timeout``: the attempt timed out."""

    def __init__(self, error: BaseException, retry_after: float | None = None, timeout: bool = False) -> None:
        super().__init__(str(error))
        self.error, self.retry_after, self.timeout = error, retry_after, timeout


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` header → seconds (≥ 0), from delay-seconds or an HTTP-date; None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


async def retry_async(
    attempt: Callable[[int, float | None], Awaitable[T]],
    policy: RetryPolicy,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``attempt(n, time_left_s)`` (n = 0, 1, ...; ``time_left_s`` None without a deadline) until it
    returns; retry while it raises :class:`Retryable` and the policy allows, then raise that ``error``.
    Any other exception propagates at once. ``clock`` (seconds) measures the deadline; the crawler
    passes one that stops while a request waits for its host's slot."""
    start = clock()
    timeouts = 0
    max_t = policy.retries if policy.max_timeout_retries is None else policy.max_timeout_retries
    n = 0
    while True:
        left = None if policy.deadline_s is None else policy.deadline_s - (clock() - start)
        try:
            return await attempt(n, left)
        except Retryable as r:
            timeouts += r.timeout
            if n >= policy.retries or (r.timeout and timeouts > max_t):
                raise r.error from None
            sleep = policy.backoff(n, r.retry_after)
            if policy.deadline_s is not None and clock() - start + sleep >= policy.deadline_s:
                raise r.error from None
            await asyncio.sleep(sleep)
            n += 1

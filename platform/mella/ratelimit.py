"""One asyncio rate limiter for every HTTP client of the platform (crawler politeness, MT and moderation APIs)."""

from __future__ import annotations

import asyncio
import time


class RateLimiter:
    """At most ``per_second`` request starts per second, evenly spaced, shared by the coroutines of one loop.

    ``await limiter.wait()`` sleeps until the next start slot while holding a FIFO lock, so requests
    start in the order they asked (batches of one API call go out in order). Raises ``ValueError``
    for ``per_second`` ≤ 0.
    """

    def __init__(self, per_second: float) -> None:
        if per_second <= 0:
            raise ValueError(f"per_second must be > 0, got {per_second}")
        self.interval = 1.0 / per_second
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self.lock:
            now = time.monotonic()
            if self.next > now:
                await asyncio.sleep(self.next - now)
            self.next = max(now, self.next) + self.interval

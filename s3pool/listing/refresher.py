"""The list monitor: refreshes the listings of the buckets in use.

Every ``refresh_interval`` seconds (0 turns it off) it re-lists, one at a
time and each after a random pause of up to ``jitter`` of the interval,
the buckets PULLed, PUSHed, GLOBbed, REFRESHed or mounted since start-up.
A failure is logged and tried again next round; a bucket that no longer
exists on S3 is dropped from the round. A SET of ``refresh_interval``
wakes it so the new interval applies at once, counted from the last round.
Listings of one bucket never overlap: the client's REFRESH and this loop
share the lock in ``Listings.refresh``. With ``--use-published-listing`` a
round fetches the published listing instead of listing (``published.py``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from s3pool.errors import NoSuchBucket

log = logging.getLogger(__name__)


class Refresher:
    def __init__(self, refresh: Callable[[str], Awaitable[Any]], buckets: set[str],
                 interval: Callable[[], float], jitter: float = 0.1,
                 max_jitter: float = 30.0, rng: random.Random | None = None) -> None:
        self.refresh = refresh
        self.buckets = buckets  # shared with the cache: buckets in use
        self.interval = interval
        self.jitter = jitter
        self.max_jitter = max_jitter
        self.rng = rng or random.Random()
        self.wakeup = trio.Event()
        self.rounds = 0
        self.failures = 0

    def wake(self) -> None:
        self.wakeup.set()

    def jitter_for(self, interval: float) -> float:
        return self.rng.uniform(0, min(interval * self.jitter, self.max_jitter))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        last_round = trio.current_time()
        while True:
            interval = self.interval()
            if interval > 0:
                deadline = last_round + interval
                with trio.move_on_at(deadline):
                    await self.wakeup.wait()
            else:
                await self.wakeup.wait()  # off until a SET turns it on
            self.wakeup = trio.Event()
            interval = self.interval()
            if interval <= 0 or trio.current_time() < last_round + interval:
                continue  # woken by a SET: wait out the (new) interval
            await self.run_round(interval)
            last_round = trio.current_time()

    async def run_round(self, interval: float) -> None:
        self.rounds += 1
        for bucket in sorted(self.buckets):
            await trio.sleep(self.jitter_for(interval))
            try:
                await self.refresh(bucket)
            except NoSuchBucket:
                log.warning("bucket %s no longer exists; dropped from the refresh round", bucket)
                self.buckets.discard(bucket)
            except Exception as exc:
                self.failures += 1
                log.warning("refresh of %s failed (%s); trying again next round", bucket, exc)

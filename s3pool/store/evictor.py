"""The disk monitor: keeps the cache under its high water mark, LRU first.

Two limits, whichever bites first: the filesystem holding HOMEDIR past
``high_water`` percent, or (with ``max_cache_size``) the cache's own
bytes past ``high_water`` percent of that cap. Either way it deletes the
least recently accessed objects until the figure is at ``low_water``.

Victims come from the access index in access order, a batch at a time:
no walk of the tree per eviction. This module only chooses them; the
store removes them, skipping any whose key lock is held (a download, a
push, an open in progress) without waiting for it. Passes take no lock
of their own, so a download that needs room (and holds its key's lock)
never waits for one.

Grace: the background pass spares objects used within ``grace`` seconds
(a path PULL just handed out). A download that needs room now may take
them too, oldest first, rather than fail for space while evictable
bytes exist; the caps are hard.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psutil
import trio

from s3pool.errors import NoSpace
from s3pool.settings import Settings
from s3pool.store.objects import Store

log = logging.getLogger(__name__)

BATCH = 256


@dataclass
class Usage:
    disk_total: int
    disk_used: int
    cache_bytes: int

    @property
    def disk_percent(self) -> float:
        return 100.0 * self.disk_used / self.disk_total if self.disk_total else 0.0


class Evictor:
    def __init__(self, store: Store, settings: Settings, poll_interval: float = 10.0,
                 grace: float = 1.0) -> None:
        self.store = store
        self.settings = settings
        self.layout = store.layout
        self.poll_interval = poll_interval
        self.grace = grace
        self.wakeup = trio.Event()
        self.reconciled = trio.Event()
        self.runs = 0
        self.evictions = 0
        self.bytes_evicted = 0
        # bytes that passes under way have chosen to free: passes run side by
        # side (none waits for another), and each leaves these to the others
        self.freeing = 0
        settings.on_change(self._setting_changed)

    def _setting_changed(self, name: str, value: Any) -> None:
        if name in ("high_water", "low_water", "max_cache_size"):
            self.wake()

    def wake(self) -> None:
        self.wakeup.set()

    def usage(self) -> Usage:
        disk = psutil.disk_usage(self.layout.home)
        reserved = self.store.reserved  # downloads in progress, not yet on disk in full
        return Usage(disk.used + disk.free, disk.used + reserved, self.store.cache_bytes)

    def bytes_to_free(self, extra: int = 0) -> int:
        """How much must go so that adding *extra* bytes stays under the marks (0: none)."""
        settings = self.settings
        usage = self.usage()
        need = 0
        cap = settings.max_cache_size
        if cap:
            if usage.cache_bytes + extra > cap * settings.high_water / 100:
                need = max(need, usage.cache_bytes + extra - int(cap * settings.low_water / 100))
        if usage.disk_total:
            if usage.disk_used + extra > usage.disk_total * settings.high_water / 100:
                need = max(need, usage.disk_used + extra
                           - int(usage.disk_total * settings.low_water / 100))
        return max(0, need - self.freeing) if need else 0

    async def make_room(self, nbytes: int) -> None:
        """Called before a download of *nbytes*: evict now if it would cross the mark.

        Raises NoSpace if the object cannot fit even with the whole cache
        evicted (nothing is downloaded then).
        """
        cap = self.settings.max_cache_size
        if cap and nbytes > cap:
            raise NoSpace(f"object of {nbytes} bytes is larger than max_cache_size ({cap})")
        if self.bytes_to_free(nbytes + self.store.access.pending_bytes()) <= 0:
            return  # under the marks even if every record not yet written were new
        await self.store.flush_access()  # count what is pending too
        usage = self.usage()
        free = usage.disk_total - usage.disk_used
        if nbytes > free + usage.cache_bytes:
            raise NoSpace(
                f"object of {nbytes} bytes does not fit: {free} bytes free on the cache "
                f"filesystem and {usage.cache_bytes} bytes evictable"
            )
        if self.bytes_to_free(nbytes) > 0:
            await self.evict(nbytes, spare_recent=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._reconcile()
        while True:
            try:
                await self.evict()
            except Exception:
                log.exception("eviction round failed; retrying next round")
            with trio.move_on_after(self.poll_interval):
                await self.wakeup.wait()
            self.wakeup = trio.Event()

    async def _reconcile(self) -> None:
        started = time.monotonic()
        try:
            added, dropped = await trio.to_thread.run_sync(self.store.reconcile)
            access = self.store.access
            await access.recount()
            log.info("access index reconciled with data/ in %.1fs: %d added, %d dropped, "
                     "%d objects, %d bytes", time.monotonic() - started, added, dropped,
                     access.count, access.total_bytes)
        except Exception:
            log.exception("could not reconcile the access index with data/")
        finally:
            self.reconciled.set()

    async def evict(self, extra: int = 0, spare_recent: bool = True) -> int:
        """One eviction pass; returns bytes freed.

        With *spare_recent* (the background pass) objects used within
        ``grace`` seconds stay; without it (a download needs the room now)
        only objects in use are skipped. Passes run side by side and never
        wait for one another: what a pass has chosen to free counts in
        ``freeing`` until its removals show in the totals, so a second pass
        only frees what is still missing.
        """
        await self.store.flush_access()
        need = self.bytes_to_free(extra)
        if need <= 0:
            return 0
        self.runs += 1
        started = time.monotonic()
        freed = count = skip = claimed = 0
        horizon = time.time() - self.grace if spare_recent else float("inf")
        try:
            while True:
                batch = await self.store.access.oldest(BATCH, skip)
                # what is still missing once what every pass chose is gone (this
                # one's choices count in freeing): passes that began side by side
                # with the same need free it once between them, not once each
                still = self.bytes_to_free(extra)
                if not batch or still <= 0:
                    break
                victims = []
                batch_bytes = 0
                too_recent = False
                for bucket, key, size, atime in batch:
                    if atime > horizon:
                        too_recent = True  # everything after it is newer still
                        break
                    victims.append((bucket, key, size, atime))
                    batch_bytes += size
                    if batch_bytes >= still:
                        break
                if not victims:
                    break
                self.freeing += batch_bytes
                claimed += batch_bytes
                freed_now, deleted, taken = await self.store.evict(victims)
                freed += freed_now
                count += deleted
                # what stayed (in use, or used since it was chosen) is skipped next time
                skip += len(victims) - taken
                if too_recent or len(batch) < BATCH and taken == len(victims):
                    break
            await self.store.flush_access()  # the totals now count the removals
        finally:
            self.freeing -= claimed
        self.evictions += count
        self.bytes_evicted += freed
        missing = self.bytes_to_free(extra)
        level = logging.INFO if missing <= 0 else logging.WARNING
        log.log(level, "evicted %d objects, %d bytes of %d needed, in %.3fs%s",
                count, freed, need, time.monotonic() - started,
                f" ({missing} bytes still to free)" if missing > 0 else "")
        return freed

"""The disk monitor: keeps the cache under its high water mark, LRU first.

Two limits, whichever bites first: the filesystem holding HOMEDIR past
``high_water`` percent, or (with ``max_cache_size``) the cache's own
bytes past ``high_water`` percent of that cap. Either way it deletes the
least recently accessed objects until the figure is at ``low_water``.

Victims come from the access index (``access.py``) in access order, a
batch at a time: no walk of the tree per eviction. An object is never
evicted while its key lock is held (a download, a push, an open in
progress) nor within ``grace`` seconds of its last access (a path just
handed out). Each victim loses its meta first, then its data.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import psutil
import trio

from .cache import Cache
from .errors import NoSpace
from .layout import META_SUFFIX, unlink_quietly

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
    def __init__(self, cache: Cache, poll_interval: float = 10.0, grace: float = 1.0) -> None:
        self.cache = cache
        self.settings = cache.settings
        self.layout = cache.layout
        self.poll_interval = poll_interval
        self.grace = grace
        self.wakeup = trio.Event()
        self.reconciled = trio.Event()
        self.runs = 0
        self._lock = trio.Lock()
        cache.make_room = self.make_room
        cache.settings.on_change(self._setting_changed)

    def _setting_changed(self, name: str, value: Any) -> None:
        if name in ("high_water", "low_water", "max_cache_size"):
            self.wake()

    def wake(self) -> None:
        self.wakeup.set()

    def usage(self) -> Usage:
        disk = psutil.disk_usage(self.layout.home)
        return Usage(disk.used + disk.free, disk.used, self.cache.access.total_bytes)

    def bytes_to_free(self, extra: int = 0) -> int:
        """How much must go so that adding *extra* bytes stays under the marks (0: none)."""
        settings = self.settings
        self.cache.access.flush()  # count what is pending too
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
        return need

    async def make_room(self, nbytes: int) -> None:
        """Called before a download of *nbytes*: evict now if it would cross the mark.

        Raises NoSpace if the object cannot fit even with the whole cache
        evicted (nothing is downloaded then).
        """
        cap = self.settings.max_cache_size
        if cap and nbytes > cap:
            raise NoSpace(f"object of {nbytes} bytes is larger than max_cache_size ({cap})")
        usage = self.usage()
        free = usage.disk_total - usage.disk_used
        if nbytes > free + usage.cache_bytes:
            raise NoSpace(
                f"object of {nbytes} bytes does not fit: {free} bytes free on the cache "
                f"filesystem and {usage.cache_bytes} bytes evictable"
            )
        if self.bytes_to_free(nbytes) > 0:
            await self.evict(nbytes)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._reconcile()
        while True:
            try:
                await self.evict()
                self.cache.access.flush()
            except Exception:
                log.exception("eviction round failed; retrying next round")
            with trio.move_on_after(self.poll_interval):
                await self.wakeup.wait()
            self.wakeup = trio.Event()

    async def _reconcile(self) -> None:
        started = time.monotonic()
        try:
            added, dropped = await trio.to_thread.run_sync(self.cache.access.reconcile)
            access = self.cache.access
            access.count, access.total_bytes = access._totals()
            log.info("access index reconciled with data/ in %.1fs: %d added, %d dropped, "
                     "%d objects, %d bytes", time.monotonic() - started, added, dropped,
                     access.count, access.total_bytes)
        except Exception:
            log.exception("could not reconcile the access index with data/")
        finally:
            self.reconciled.set()

    async def evict(self, extra: int = 0) -> int:
        """One eviction pass; returns bytes freed."""
        async with self._lock:
            need = self.bytes_to_free(extra)
            if need <= 0:
                return 0
            self.runs += 1
            started = time.monotonic()
            freed = count = 0
            skip = 0
            horizon = time.time() - self.grace
            while freed < need:
                batch = self.cache.access.oldest(BATCH, skip)
                if not batch:
                    break
                victims = []
                batch_bytes = 0
                too_recent = False
                for bucket, key, size, atime in batch:
                    if atime > horizon:
                        too_recent = True  # everything after it is newer still
                        break
                    if self.cache.is_busy(bucket, key):
                        skip += 1
                        continue
                    victims.append((bucket, key, size, atime))
                    batch_bytes += size
                    if freed + batch_bytes >= need:
                        break
                if not victims:
                    if too_recent or len(batch) < BATCH:
                        break
                    continue
                freed_now, deleted = await self._delete(victims)
                freed += freed_now
                count += deleted
            stats = self.cache.stats
            stats.evictions += count
            stats.bytes_evicted += freed
            level = logging.INFO if freed >= need else logging.WARNING
            log.log(level, "evicted %d objects, %d bytes of %d needed, in %.3fs",
                    count, freed, need, time.monotonic() - started)
            return freed

    async def _delete(self, victims: list[tuple[str, str, int, float]]) -> tuple[int, int]:
        """Delete victims under their key locks (meta first); returns (bytes, objects)."""
        cache = self.cache
        async with _locked_all(cache, [(b, k) for b, k, _, _ in victims]):
            # taking the locks yields to other tasks: a victim used meanwhile stays
            victims = [v for v in victims
                       if (cache.access.last_access(v[0], v[1]) or 0.0) <= v[3]]
            paths = [cache.layout.object_path(b, k) for b, k, _, _ in victims]
            await trio.to_thread.run_sync(_delete_files, cache.layout.data_dir, paths,
                                          limiter=cache.disk_limiter)
            for bucket, key, _, _ in victims:
                cache.forget_cached(bucket, key)
        return sum(v[2] for v in victims), len(victims)


class _locked_all:
    """Hold the key locks of many keys (none is busy: taking them does not wait)."""

    def __init__(self, cache: Cache, idents: list[tuple[str, str]]) -> None:
        self.locks = [cache.key_lock(b, k) for b, k in idents]
        self.held: list[Any] = []

    async def __aenter__(self) -> None:
        for lock in self.locks:
            await lock.__aenter__()
            self.held.append(lock)

    async def __aexit__(self, *exc: object) -> None:
        for lock in reversed(self.held):
            await lock.__aexit__(None, None, None)


def _delete_files(data_dir: str, paths: list[str]) -> None:
    parents: set[str] = set()
    for path in paths:
        unlink_quietly(path + META_SUFFIX)  # meta first: data without meta is not served
        unlink_quietly(path)
        parents.add(os.path.dirname(path))
    # drop directories the evictions emptied, deepest first, never a BUCKETDIR
    for parent in sorted(parents, key=len, reverse=True):
        while os.path.dirname(parent) != data_dir and parent.startswith(data_dir + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

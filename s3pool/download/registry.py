"""The registry of downloads in flight: one :class:`Download` per key at a time.

:class:`Downloads` owns what is known of the downloads running now: the
download of each (bucket, key), shared by every opener of the key until it
installs or fails; how many ``Download.run()`` tasks are alive and how
many reads wait for bytes (a shutdown lets them answer first); the
``pull_concurrency`` slots (``limiter``) a download holds while it starts,
or while it runs for a PULL; and the hook that installs a complete, checked
download (the cache's policy: the store, the shared tier, the counters).

The cache decides when a download starts and whom it serves (single
flight, freshness); this class only keeps the books. A download sees it
through the narrow :class:`~s3pool.download.download.Registry` interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from s3pool.download.download import Download
from s3pool.errors import BackendError
from s3pool.store.objects import CachedObject


class Downloads:
    """The downloads in flight, by (bucket, key); see the module's docstring."""

    def __init__(self, pull_concurrency: int,
                 install: Callable[[Download], Awaitable[CachedObject]]) -> None:
        self._by_key: dict[tuple[str, str], Download] = {}
        self.running = 0  # Download.run() tasks alive
        self.waiting_reads = 0  # reads waiting for a download's bytes
        # objects downloading at once (pull_concurrency): a slot per download
        self.limiter = trio.CapacityLimiter(pull_concurrency)
        self._install = install

    # --- the cache's side ----------------------------------------------

    def get(self, bucket: str, key: str) -> Download | None:
        """The download in flight for the key, if any (its openers share it)."""
        return self._by_key.get((bucket, key))

    def add(self, download: Download) -> None:
        """*download* is the key's download in flight from now on."""
        self._by_key[(download.bucket, download.key)] = download

    def supersede(self, bucket: str, key: str) -> None:
        """The key is being replaced: its download in flight (if any) keeps its
        readers but is never installed, and the next opener starts afresh."""
        download = self._by_key.pop((bucket, key), None)
        if download is not None:
            download.superseded = True

    def __len__(self) -> int:
        return len(self._by_key)

    def busy(self) -> bool:
        """True while a download runs or a read waits for one (shutdown waits)."""
        return bool(self.running or self.waiting_reads)

    def stop_all(self, reason: str) -> None:
        """Fail every download in flight: its readers get EIO, its PULLs ERROR."""
        for download in list(self._by_key.values()):
            download.fail(BackendError(reason))

    def set_concurrency(self, pull_concurrency: int) -> None:
        self.limiter.total_tokens = pull_concurrency

    async def take_slot(self, owner: object) -> None:
        """Wait for a pull_concurrency slot, held on behalf of *owner*."""
        await self.limiter.acquire_on_behalf_of(owner)

    async def hold_slot(self, download: Download, owner: object) -> None:
        """A whole download's slot, given back when the download ends."""
        try:
            await download.done.wait()
        finally:
            self.release_slot(owner)

    # --- the download's side (download.Registry) -------------------------

    def release_slot(self, owner: object) -> None:
        self.limiter.release_on_behalf_of(owner)

    def run_started(self) -> None:
        self.running += 1

    def run_ended(self) -> None:
        self.running -= 1

    def read_waits(self) -> None:
        self.waiting_reads += 1

    def read_waited(self) -> None:
        self.waiting_reads -= 1

    def ended(self, download: Download) -> None:
        """The download installed its file or failed: the next opener starts afresh."""
        ident = (download.bucket, download.key)
        if self._by_key.get(ident) is download:
            del self._by_key[ident]

    async def install(self, download: Download) -> CachedObject:
        """Move a complete, checked download into data/ (the cache's hook)."""
        return await self._install(download)

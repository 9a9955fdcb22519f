"""Read-ahead of the next files of a directory read in order through the mount.

A cold small file costs its whole GET on the critical path of ``open()``;
a program that walks a directory (``for f in sorted(os.listdir(d))``)
pays that latency once per file. When the opens of one directory follow
its listing order, the next ``prefetch_files`` files are fetched in the
background, so the program finds them cached.

Detection, per directory (the last :data:`DIRECTORIES` directories opened
in, least recently used forgotten first): an open is *in order* if it is
the file that follows the previous open in the listing, or one of the
files already fetched ahead for the directory. After :data:`TRIGGER_STREAK`
in-order opens in a row the window of files ahead is topped up at every
open; an open out of order resets the streak, so random access fetches
nothing it did not ask for (prefetches already started are left to end:
they are few and bounded).

A prefetch is a PULL without a caller (:meth:`Cache.fetch`): it takes the
key's lock, checks the ETag, shares a download in flight and installs, so
a later open finds the key cached and fresh. Objects larger than
``download_part_size`` are never fetched ahead (the mount streams them
anyway), which bounds the bytes in flight to ``prefetch_files`` parts.
At most ``prefetch_files`` prefetches run at once in the whole daemon.
A prefetch never fails a user's request: its errors are logged and
dropped, and the later open does its own fetch and reports its own error.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from s3pool.cache import PREFETCH, Cache, IndexFault
from s3pool.errors import NoSuchKey, S3PoolError

log = logging.getLogger(__name__)

# directories whose reading order is followed (least recently opened in forgotten first)
DIRECTORIES = 1024
# in-order opens in a row (after the first open) before files are fetched ahead:
# two opens that merely happen to be neighbours do not start a read-ahead
TRIGGER_STREAK = 2
# keys fetched ahead and not opened yet that count a hit when opened
REMEMBERED_FETCHES = 4096
# subdirectories skipped at most while reading the files ahead from the index
ENTRIES_LOOKED_AT = 64


@dataclass
class DirectoryState:
    """How a program is reading one directory."""

    last: str  # name of the last file opened in it
    # files after `last` in listing order (name, size), read from the index a
    # batch at a time, so an open in order costs no query
    ahead: list[tuple[str, int]] = field(default_factory=list)
    ahead_to_end: bool = False  # `ahead` reaches the end of the directory
    streak: int = 0  # in-order opens in a row since the last reset
    window: set[str] = field(default_factory=set)  # files ahead, fetched or being fetched


class Prefetcher:
    """Follows the mount's opens and fetches the next files of a directory read in order."""

    def __init__(self, cache: Cache, spawn: Callable[..., None] | None) -> None:
        self.cache = cache
        self.settings = cache.settings
        self.spawn = spawn  # starts a background task (the mount's nursery)
        self.directories: OrderedDict[tuple[str, str], DirectoryState] = OrderedDict()
        # being fetched ahead -> opened since the prefetch started
        self.in_flight: dict[tuple[str, str], bool] = {}
        # fetched ahead, not opened since: an open of one is a hit
        self.fetched: OrderedDict[tuple[str, str], None] = OrderedDict()
        self.prefetches = 0  # fetches started
        self.hits = 0  # opens of a file a prefetch had fetched (or was fetching)

    @property
    def depth(self) -> int:
        files: int = self.settings.prefetch_files
        return files

    def opened(self, bucket: str, key: str) -> None:
        """The mount is about to open *key*: note it, maybe fetch what follows.

        Called before the open's own fetch, so the files ahead download
        while this one does. Costs at most one small range read of the
        listing index (one per ``prefetch_files`` opens of a directory read
        in order).
        """
        ident = (bucket, key)
        if self.in_flight.get(ident) is False:
            self.hits += 1
            self.in_flight[ident] = True  # one hit per fetch ahead
        elif ident in self.fetched:
            del self.fetched[ident]
            self.hits += 1
        if self.depth <= 0 or self.spawn is None:
            return
        dir_prefix, _, name = key.rpartition("/")
        if dir_prefix:
            dir_prefix += "/"
        where = (bucket, dir_prefix)
        state = self.directories.get(where)
        if state is None:
            state = self.directories[where] = DirectoryState(last=name)
            while len(self.directories) > DIRECTORIES:
                self.directories.popitem(last=False)
        else:
            self.directories.move_to_end(where)
            if name == state.last:
                return  # the same file again: neither a step nor a jump
            step = self._position(state, name)
            if step is not None:
                state.streak += 1
                del state.ahead[:step + 1]
            else:
                state.streak = 0
                state.window.clear()
                state.ahead, state.ahead_to_end = [], False
            state.last = name
        # the next file is all a directory read at random needs to know
        wanted = self.depth if state.streak >= TRIGGER_STREAK - 1 else 1
        if len(state.ahead) < wanted and not state.ahead_to_end:
            batch = max(wanted, 2 * self.depth) if wanted > 1 else 1
            state.ahead = self._files_after(bucket, dir_prefix, name, batch)
            state.ahead_to_end = len(state.ahead) < batch
        if state.streak < TRIGGER_STREAK:
            return
        window = state.ahead[:self.depth]
        state.window = {file_name for file_name, _ in window}
        part_size = self.settings.download_part_size
        for file_name, size in window:
            if len(self.in_flight) >= self.depth:
                break  # the rest is topped up by the next opens
            if size > part_size:
                continue  # streamed by the mount anyway: not worth a whole fetch ahead
            self._start(bucket, dir_prefix + file_name)

    @staticmethod
    def _position(state: DirectoryState, name: str) -> int | None:
        """Where *name* is in the files ahead if opening it is a step in order:
        the next file, or one inside the window being fetched ahead."""
        if state.ahead and state.ahead[0][0] == name:
            return 0
        if name in state.window:
            for position, (file_name, _) in enumerate(state.ahead):
                if file_name == name:
                    return position
        return None

    def _files_after(self, bucket: str, dir_prefix: str, name: str, count: int
                     ) -> list[tuple[str, int]]:
        """(name, size) of up to *count* files after *name* in the directory's listing."""
        files: list[tuple[str, int]] = []
        try:
            entries = self.cache.dir_entries(bucket, dir_prefix, (name, False))
            for looked_at, entry in enumerate(entries):
                if not entry.is_dir:
                    files.append((entry.name, entry.size))
                if len(files) >= count or looked_at >= count + ENTRIES_LOOKED_AT:
                    break
        except IndexFault as exc:  # the index is unreadable: no read-ahead
            log.debug("no read-ahead in s3://%s/%s: %s", bucket, dir_prefix, exc)
        return files

    def _start(self, bucket: str, key: str) -> None:
        ident = (bucket, key)
        if ident in self.in_flight or ident in self.fetched:
            return
        if self.cache.is_stopping():
            return
        if self.cache.is_locked(bucket, key) or self.cache.is_fresh(bucket, key):
            return  # being opened or pulled right now, or checked moments ago
        assert self.spawn is not None
        self.in_flight[ident] = False
        self.prefetches += 1
        self.spawn(self._fetch, bucket, key)

    async def _fetch(self, bucket: str, key: str) -> None:
        ident = (bucket, key)
        fetched = False
        try:
            await self.cache.fetch(bucket, key, PREFETCH)
            fetched = True
        except NoSuchKey as exc:
            log.debug("prefetch of s3://%s/%s: %s", bucket, key, exc)
        except (S3PoolError, OSError) as exc:
            log.info("prefetch of s3://%s/%s failed: %s", bucket, key, exc)
        except Exception:  # a prefetch never takes the mount down
            log.exception("prefetch of s3://%s/%s failed", bucket, key)
        finally:
            opened = self.in_flight.pop(ident, False)
        if fetched and not opened:
            self.fetched[ident] = None
            self.fetched.move_to_end(ident)
            while len(self.fetched) > REMEMBERED_FETCHES:
                self.fetched.popitem(last=False)

    def status_lines(self) -> list[tuple[str, Any]]:
        return [("prefetches", self.prefetches), ("prefetch_hits", self.hits)]

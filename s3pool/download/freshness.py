"""What the cache remembers of its conversations with S3, in memory only.

- when each key was last checked with S3 (its ETag asked), so a PULL or
  an ``open()`` within ``freshness_window`` of the check is answered from
  the disk without asking again, and a copy checked within
  ``stale_on_error`` may be served while S3 fails;
- which names S3 said it does not have (the mount's lookups of names the
  listing lacks), so an ``ls`` storm of missing names costs S3 nothing
  for a freshness window.

Both are bounded and ordered oldest first, so forgetting costs O(1) per
new entry whatever their size; a forgotten key only costs one more
conditional GET. Nothing here describes files on disk: a restart starts
with every key unchecked.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

from s3pool.settings import Settings

# keys whose last ETag check is remembered (oldest forgotten first)
FRESHNESS_MEMORY = 1 << 20
# names S3 said it lacks, remembered for the freshness window
MISSING_MEMORY = 1 << 16


class Freshness:
    """Last ETag check per key, and names S3 lacks (trio clock)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.checked: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.missing: OrderedDict[tuple[str, str], float] = OrderedDict()

    def is_fresh(self, bucket: str, key: str) -> bool:
        """True if the key was checked with S3 within the freshness window (it
        was cached then, or is being fetched): a dict lookup, no stat."""
        return self.checked_within(bucket, key, self.settings.freshness_window)

    def checked_within(self, bucket: str, key: str, seconds: float) -> bool:
        checked = self.checked.get((bucket, key))
        return checked is not None and trio.current_time() - checked < seconds

    def age(self, bucket: str, key: str) -> float:
        """Seconds since the key's last check (infinite if none is remembered)."""
        checked = self.checked.get((bucket, key))
        return float("inf") if checked is None else trio.current_time() - checked

    def mark(self, bucket: str, key: str) -> None:
        """The key was checked just now. O(1) whatever the number of keys: the
        dict stays in check order, so expired entries are dropped from its front."""
        now = trio.current_time()
        checked = self.checked
        ident = (bucket, key)
        checked[ident] = now
        checked.move_to_end(ident)
        horizon = now - max(self.settings.freshness_window, self.settings.stale_on_error)
        for _ in range(2):  # amortized: at most two expired entries per new one
            oldest = next(iter(checked.items()))
            if oldest[1] >= horizon and len(checked) <= FRESHNESS_MEMORY:
                break
            checked.popitem(last=False)

    def forget(self, bucket: str, key: str) -> None:
        """The next request for the key asks S3 again."""
        self.checked.pop((bucket, key), None)

    def known_missing(self, bucket: str, key: str) -> bool:
        """True if S3 said within the freshness window that it lacks the name."""
        since = self.missing.get((bucket, key))
        return since is not None and \
            trio.current_time() - since < self.settings.freshness_window

    def note_missing(self, bucket: str, key: str) -> None:
        ident = (bucket, key)
        self.missing[ident] = trio.current_time()
        self.missing.move_to_end(ident)
        while len(self.missing) > MISSING_MEMORY:
            self.missing.popitem(last=False)

"""The published listing in a refresh: fetch it instead of listing, or publish after one.

``--publish-listing``: after each LIST of a bucket (a client's REFRESH or the
background refresher's) the index just built is uploaded as the bucket's
published listing (format and key in ``published.py``), through the PUSH
endpoint. ``--use-published-listing``: a refresh is a conditional GET of
that object; the bucket is listed only when it is missing, damaged, for
another bucket or older than ``published_listing_max_age``. Keys this host
added to its index itself (PUSH, download, lookup) after the publisher's
LIST started are kept over the published listing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from s3pool.errors import BackendError, NoSuchBucket, NoSuchKey, S3PoolError
from s3pool.listing import index
from s3pool.listing.build import write_listing
from s3pool.listing.index import IndexFault
from s3pool.listing.listings import Listings
from s3pool.listing.published import DEFAULT_KEY, LISTED_AT_META, PublishedListing, write_published
from s3pool.s3.answers import ListEntry
from s3pool.s3.backend import Backend
from s3pool.store.files import new_temp, temp_path, unlink_quietly

log = logging.getLogger(__name__)

# keys this host added to its index less than this many seconds before a
# published listing's LIST started are kept over it too (host clocks drift)
CARRY_MARGIN = 5.0


@dataclass
class Fleet:
    """How this host shares listings with the others."""

    publish: bool = False  # upload the listing after each LIST
    use_published: bool = False  # fetch the published listing instead of listing
    key: str = DEFAULT_KEY
    max_age: Callable[[], float] = lambda: 900.0  # seconds a published listing is good for

    @property
    def source(self) -> str:
        return "published" if self.use_published else "s3"


class FleetListings:
    """Fetches or publishes the published listing for a :class:`Listings`."""

    def __init__(self, listings: Listings, fleet: Fleet,
                 push_backend: Backend | None = None) -> None:
        self.listings = listings
        self.layout = listings.layout
        self.backend = listings.backend
        self.fleet = fleet
        # where the published listing is uploaded (--push-endpoint, else S3 itself)
        self.push_backend = push_backend or listings.backend
        self.disk_limiter = listings.disk_limiter
        self.published_used = 0  # published listings installed
        self.published_unchanged = 0  # conditional GETs of it answered 304
        self.published_fallbacks = 0  # missing, stale or unreadable: listed instead
        self.listings_published = 0
        self.publish_failures = 0
        listings.published_key = fleet.key
        listings.fleet = self

    def hidden(self, key: str) -> bool:
        return self.listings.hidden(key)

    async def fetch(self, bucket: str) -> int | None:
        """The listing's key count after a refresh from the published listing,
        or None: list the bucket instead."""
        if not self.fleet.use_published:
            return None
        count = await self._from_published(bucket)
        if count is None:
            self.published_fallbacks += 1
        return count

    async def listed(self, bucket: str, listed_at: float) -> None:
        if self.fleet.publish:
            await self._publish(bucket, listed_at)

    async def _publish(self, bucket: str, listed_at: float) -> None:
        """Upload the index just built as the bucket's published listing.
        A failure is logged and counted; the local listing stands."""
        key = self.fleet.key
        try:
            with temp_path(self.layout.tmp_dir, "publish", bucket) as tmp_path:
                count = await trio.to_thread.run_sync(
                    write_published, self.layout.index_path(bucket), tmp_path, bucket,
                    listed_at, limiter=self.disk_limiter)
                await self.push_backend.upload_file(
                    bucket, key, tmp_path, extra_args={
                        "Metadata": {LISTED_AT_META: repr(listed_at)},
                        "ContentType": "application/gzip"})
                self.listings_published += 1
                log.info("published the listing of s3://%s (%d keys, %d bytes) as %s", bucket,
                         count, os.path.getsize(tmp_path), key)
        except (S3PoolError, OSError, IndexFault) as exc:
            self.publish_failures += 1
            log.warning("could not publish the listing of s3://%s as %s: %s", bucket, key, exc)

    def _published_state(self, bucket: str) -> tuple[str, float] | None:
        """(ETag, listed_at) of the published listing the index was built
        from, or None if it was not built from one."""
        conn = self.listings.conn(bucket)
        if conn is None:
            return None
        try:
            info = conn.info("source", "published_etag", "listed_at")
            if info.get("source") != "published" or not info.get("published_etag"):
                return None
            return str(info["published_etag"]), float(info["listed_at"])
        except (IndexFault, KeyError, TypeError, ValueError):
            return None

    async def _from_published(self, bucket: str) -> int | None:
        """Refresh *bucket* from its published listing; None if that cannot be
        done (missing, older than published_listing_max_age, unreadable) and
        the bucket must be listed instead."""
        key = self.fleet.key
        url = f"s3://{bucket}/{key}"
        max_age = self.fleet.max_age()
        previous = self._published_state(bucket)
        try:
            response = await self.backend.get_object(
                bucket, key, if_none_match=previous[0] if previous else None)
        except NoSuchKey:
            log.info("no published listing at %s: listing the bucket", url)
            return None
        except NoSuchBucket:
            raise
        except BackendError as exc:
            log.warning("cannot fetch the published listing %s (%s): listing the bucket",
                        url, exc)
            return None
        if response is None:  # 304: the one the index was built from
            assert previous is not None
            if not self._too_old(url, previous[1], max_age):
                self.published_unchanged += 1
                log.info("published listing %s unchanged", url)
                return self.listings.key_count(bucket)
            return None
        try:
            stamp = float(response.meta["Metadata"].get(LISTED_AT_META, "nan"))
        except ValueError:
            stamp = float("nan")
        if stamp == stamp and self._too_old(url, stamp, max_age):
            response.body.close()
            return None
        try:
            fd, tmp_path = new_temp(self.layout.tmp_dir, "published", bucket)
        except OSError as exc:
            response.body.close()
            log.warning("published listing %s not used (%s): listing the bucket", url, exc)
            return None
        try:
            try:
                size = response.content_length
                written = await self.backend.read_body_at(response, fd, 0, size, bucket, key,
                                                          None, response.digest)
                if written != size:
                    raise BackendError(f"short download: {written} of {size} bytes")
                if response.digest is not None:
                    response.digest.check()
            finally:
                os.close(fd)
            etag = response.meta.get("ETag") or ""
            count = await trio.to_thread.run_sync(self._install_published, bucket, tmp_path,
                                                  etag, max_age, limiter=self.disk_limiter)
        except (BackendError, OSError, IndexFault) as exc:
            log.warning("published listing %s not used (%s): listing the bucket", url, exc)
            return None
        finally:
            unlink_quietly(tmp_path)
        if count is not None:
            self.published_used += 1
            log.info("refreshed s3://%s from the published listing %s: %d keys", bucket, key,
                     count)
        return count

    @staticmethod
    def _too_old(url: str, listed_at: float, max_age: float) -> bool:
        age = time.time() - listed_at
        if age <= max_age:
            return False
        log.warning("published listing %s is %.0fs old (published_listing_max_age %gs): "
                    "listing the bucket", url, age, max_age)
        return True

    def _install_published(self, bucket: str, path: str, etag: str, max_age: float
                           ) -> int | None:
        """Blocking: the downloaded published listing becomes the bucket's listing."""
        url = f"s3://{bucket}/{self.fleet.key}"
        with open(path, "rb") as f:
            published = PublishedListing(f, url)
            if published.bucket != bucket:
                raise BackendError(f"{url} is the listing of bucket {published.bucket!r}")
            if self._too_old(url, published.listed_at, max_age):
                return None
            # keys this host wrote or saw after the publisher's LIST started
            # (host clocks differ a little: a margin)
            newer = self._added_since(bucket, published.listed_at - CARRY_MARGIN)
            info = {"source": "published", "listed_at": published.listed_at,
                    "published_etag": etag if etag.strip('"') else ""}
            return write_listing(self.layout, bucket, published.pages(), info=info,
                                 extra=newer, hidden=self.hidden)

    def _added_since(self, bucket: str, when: float) -> list[tuple[ListEntry, float]]:
        """Keys this host put into the index (PUSH, download, lookup) after *when*."""
        reader = index.open_reader(self.layout.index_path(bucket))
        if reader is None:
            return []  # none, or unusable: nothing of it is carried over
        try:
            return [(ListEntry(*row), added_at) for row, added_at in reader.added_since(when)]
        finally:
            reader.close()

    def status_lines(self) -> list[tuple[str, Any]]:
        fleet = self.fleet
        return [
            ("listing_source", fleet.source),
            ("publish_listing", "yes" if fleet.publish else "no"),
            ("published_listing_key", fleet.key),
            ("published_listings_used", self.published_used),
            ("published_listings_unchanged", self.published_unchanged),
            ("published_listing_fallbacks", self.published_fallbacks),
            ("listings_published", self.listings_published),
            ("publish_failures", self.publish_failures),
        ]

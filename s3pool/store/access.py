"""Access records of cached objects: what the LRU evictor reads.

A small SQLite file, ``HOMEDIR/state/access.db``, holds one row per
cached object: (bucket, key, size, last access). Why SQLite and not an
in-memory heap: the order has to survive restarts (atime is unreliable
under relatime, and rebuilding from a walk of a million files would cost
minutes at every start), and an index on the access time makes "the
oldest N" a cheap ordered read however many objects there are, without
holding them all in Python objects.

Accesses are buffered in memory and written in batches by a worker
thread, so a cached PULL costs a dict update, not a database write. The
files themselves belong to the store (``objects.py``): this module only
keeps their rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable

import trio

from s3pool.store.layout import Layout

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    atime REAL NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_atime ON objects (atime);
-- the totals kept by SQLite itself: a batch is applied with no Python per row
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0), count INTEGER NOT NULL, bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals SELECT 0, count(*), coalesce(sum(size), 0) FROM objects;
CREATE TRIGGER IF NOT EXISTS objects_added AFTER INSERT ON objects BEGIN
    UPDATE totals SET count = count + 1, bytes = bytes + NEW.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS objects_dropped AFTER DELETE ON objects BEGIN
    UPDATE totals SET count = count - 1, bytes = bytes - OLD.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS objects_resized AFTER UPDATE OF size ON objects BEGIN
    UPDATE totals SET bytes = bytes + NEW.size - OLD.size WHERE id = 0;
END;
"""
_UPSERT = ("INSERT INTO objects VALUES (?, ?, ?, ?) ON CONFLICT (bucket, key) "
           "DO UPDATE SET size = excluded.size, atime = excluded.atime")


class _Batch:
    """Accesses not yet written, each key in exactly one of three dicts whose
    values are the SQL parameters: records (bucket, key, size, atime),
    touches (atime, bucket, key), forgets."""

    __slots__ = ("records", "touches", "forgets", "record_bytes")

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[str, str, int, float]] = {}
        self.touches: dict[tuple[str, str], tuple[float, str, str]] = {}
        self.forgets: dict[tuple[str, str], None] = {}
        self.record_bytes = 0  # the sizes in records, summed as they change

    def __len__(self) -> int:
        return len(self.records) + len(self.touches) + len(self.forgets)

    def record(self, bucket: str, key: str, size: int, atime: float) -> None:
        ident = (bucket, key)
        old = self.records.get(ident)
        if old is not None:
            self.record_bytes -= old[2]
        self.records[ident] = (bucket, key, size, atime)
        self.record_bytes += size
        self.touches.pop(ident, None)
        self.forgets.pop(ident, None)

    def touch(self, bucket: str, key: str, atime: float) -> None:
        ident = (bucket, key)
        known = self.records.get(ident)
        if known is not None:
            self.records[ident] = (bucket, key, known[2], atime)
        elif ident not in self.forgets:
            self.touches[ident] = (atime, bucket, key)

    def forget(self, bucket: str, key: str) -> None:
        ident = (bucket, key)
        old = self.records.pop(ident, None)
        if old is not None:
            self.record_bytes -= old[2]
        self.touches.pop(ident, None)
        self.forgets[ident] = None

    def atime(self, ident: tuple[str, str]) -> float | None:
        known = self.records.get(ident)
        if known is not None:
            return known[3]
        touched = self.touches.get(ident)
        return touched[0] if touched is not None else None

    def merged_with(self, newer: _Batch) -> _Batch:
        """This batch with *newer* applied on top (a failed flush keeps its rows)."""
        merged = _Batch()
        for batch in (self, newer):
            for ident in batch.forgets:
                merged.forget(*ident)
            for bucket, key, size, atime in batch.records.values():
                merged.record(bucket, key, size, atime)
            for atime, bucket, key in batch.touches.values():
                merged.touch(bucket, key, atime)
        return merged


class AccessIndex:
    """LRU bookkeeping for the store.

    The trio thread only touches an in-memory dict of pending accesses;
    every SQLite write (and the ordered read of victims) runs in a worker
    thread, one at a time (``self.writer``, a leaf: nothing waits for
    another lock while holding it).
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.path = os.path.join(layout.state_dir, "access.db")
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;"
            + _SCHEMA
        )
        self._pending = _Batch()
        self._flushing = _Batch()
        self.writer = trio.CapacityLimiter(1)
        self.count, self.total_bytes = self.totals()

    def totals(self) -> tuple[int, int]:
        """Blocking: (objects, bytes) as the database has them."""
        count, total = self.db.execute("SELECT count, bytes FROM totals").fetchone()
        return int(count), int(total)

    def record(self, bucket: str, key: str, size: int, when: float | None = None) -> None:
        """Note an access (a PULL hit, a download, a FUSE open): a dict update."""
        self._pending.record(bucket, key, size, time.time() if when is None else when)

    def touch(self, bucket: str, key: str) -> None:
        """Note an access to an object only if it is still cached (size unknown here)."""
        self._pending.touch(bucket, key, time.time())

    def forget(self, bucket: str, key: str) -> None:
        """The object left the cache (evicted, replaced by a directory, deleted on S3)."""
        self._pending.forget(bucket, key)

    def pending_atime(self, bucket: str, key: str) -> float | None:
        """The last access not yet written to disk, if any."""
        for batch in (self._pending, self._flushing):
            atime = batch.atime((bucket, key))
            if atime is not None:
                return atime
        return None

    def pending_bytes(self) -> int:
        """At most how many bytes the records not yet written add to total_bytes."""
        return self._pending.record_bytes + self._flushing.record_bytes

    async def flush(self) -> None:
        """Write the pending accesses (worker thread)."""
        async with self.writer:
            if not self._pending:
                return
            self._flushing, self._pending = self._pending, _Batch()
            try:
                await trio.to_thread.run_sync(self._apply, self._flushing)
            except BaseException as exc:
                # keep what was not written, under anything recorded since
                self._pending = self._flushing.merged_with(self._pending)
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                # a full cache disk: access times are advisory, failing the PULL
                # or the eviction that asked for this flush would be worse
                log.warning("access index not updated (kept in memory): %s", exc)
            finally:
                self._flushing = _Batch()

    def flush_blocking(self) -> None:
        """Write the pending accesses now (at shutdown, outside trio)."""
        pending, self._pending = self._pending, _Batch()
        self._apply(pending)

    def _apply(self, batch: _Batch) -> None:
        # the rows are already parameter tuples: no Python runs per row here,
        # so the trio thread is not kept from the GIL by a big batch
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany(_UPSERT, batch.records.values())
            db.executemany("UPDATE objects SET atime = ? WHERE bucket = ? AND key = ?",
                           batch.touches.values())
            db.executemany("DELETE FROM objects WHERE bucket = ? AND key = ?",
                           batch.forgets.keys())
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (a full disk does that)
            raise
        self.count, self.total_bytes = self.totals()

    async def oldest(self, limit: int, skip: int = 0) -> list[tuple[str, str, int, float]]:
        """The *limit* least recently accessed objects (after *skip* of them)."""
        await self.flush()

        def query() -> list[tuple[str, str, int, float]]:
            return self.db.execute(
                "SELECT bucket, key, size, atime FROM objects ORDER BY atime LIMIT ? OFFSET ?",
                (limit, skip),
            ).fetchall()

        async with self.writer:
            return await trio.to_thread.run_sync(query)

    def close(self) -> None:
        try:
            self.flush_blocking()
        finally:
            self.db.close()

    # --- start-up reconciliation (runs in a worker thread) -----------------

    def reconcile(self, walk: Iterable[tuple[str, str, int, float]]) -> tuple[int, int]:
        """Blocking: make the index agree with *walk*, every complete cached
        object (bucket, key, size, atime) the store found in data/.

        Adds objects the index does not know (their access time taken from
        the file) and drops rows whose object is gone. Returns (added, dropped).
        """
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        # mark and sweep in SQL: a million walked keys never sit in a Python set
        db.execute("CREATE TEMP TABLE seen (bucket TEXT, key TEXT, PRIMARY KEY (bucket, key))"
                   " WITHOUT ROWID")
        added = 0
        started = time.time()
        try:
            batch: list[tuple[str, str, int, float]] = []
            for row in walk:
                batch.append(row)
                if len(batch) >= 2000:
                    added += self._insert_missing(db, batch)
                    batch = []
            added += self._insert_missing(db, batch)
            db.execute("BEGIN")
            # rows touched since the walk began are live whatever the walk saw
            cur = db.execute(
                "DELETE FROM objects WHERE atime < ? AND NOT EXISTS "
                "(SELECT 1 FROM seen"
                " WHERE seen.bucket = objects.bucket AND seen.key = objects.key)",
                (started,),
            )
            dropped = cur.rowcount
            db.execute("COMMIT")
        finally:
            db.close()
        return added, dropped

    async def recount(self) -> None:
        """Take the totals from the database again (after a reconcile)."""
        async with self.writer:
            self.count, self.total_bytes = await trio.to_thread.run_sync(self.totals)

    @staticmethod
    def _insert_missing(db: sqlite3.Connection, batch: list[tuple[str, str, int, float]]) -> int:
        if not batch:
            return 0
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(b, k) for b, k, _, _ in batch])
        # rowcount counts the rows inserted here, not what the totals trigger did
        added = db.executemany("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?)", batch).rowcount
        db.execute("COMMIT")
        return added

"""Access records of cached objects: what the LRU evictor reads.

A small SQLite file, ``HOMEDIR/state/access.db``, holds one row per
cached object: (bucket, key, size, last access). Why SQLite and not an
in-memory heap: the order has to survive restarts (atime is unreliable
under relatime, and rebuilding from a walk of a million files would cost
minutes at every start), and an index on the access time makes "the
oldest N" a cheap ordered read however many objects there are, without
holding them all in Python objects.

Accesses are buffered in memory and written in batches, so a cached PULL
costs a dict update, not a database write.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

from .layout import INDEX_NAME, LIST_NAME, META_SUFFIX, Layout, unlink_quietly

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
"""
FLUSH_AT = 5000


class AccessIndex:
    """LRU bookkeeping for the cache; used from the trio thread only."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.path = os.path.join(layout.state_dir, "access.db")
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;"
            + _SCHEMA
        )
        self._pending: dict[tuple[str, str], tuple[int, float]] = {}
        self.count, self.total_bytes = self._totals()

    def _totals(self) -> tuple[int, int]:
        count, total = self.db.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
        return int(count), int(total)

    def record(self, bucket: str, key: str, size: int, when: float | None = None) -> None:
        """Note an access (a PULL hit, a download, a FUSE open)."""
        self._pending[(bucket, key)] = (size, time.time() if when is None else when)
        if len(self._pending) >= FLUSH_AT:
            self.flush()

    def touch(self, bucket: str, key: str) -> None:
        """Note an access to an object only if it is still cached (size unknown here)."""
        pending = self._pending.get((bucket, key))
        self._pending[(bucket, key)] = (pending[0] if pending else -1, time.time())
        if len(self._pending) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        db = self.db
        db.execute("BEGIN")
        try:
            for (bucket, key), (size, atime) in pending.items():
                row = db.execute(
                    "SELECT size FROM objects WHERE bucket = ? AND key = ?", (bucket, key)
                ).fetchone()
                if size < 0:  # a touch: only for objects still known
                    if row is not None:
                        db.execute("UPDATE objects SET atime = ? WHERE bucket = ? AND key = ?",
                                   (atime, bucket, key))
                    continue
                if row is None:
                    self.count += 1
                    self.total_bytes += size
                else:
                    self.total_bytes += size - int(row[0])
                db.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", (bucket, key, size, atime)
                )
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:  # SQLite has already rolled back after SQLITE_FULL
                db.execute("ROLLBACK")
            self.count, self.total_bytes = self._totals()
            if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
            # a full cache disk: keep the records for the next flush (access
            # times are advisory; failing the PULL or the eviction that
            # called us would be worse)
            self._pending = {**pending, **self._pending}
            log.warning("access index not updated (kept in memory): %s", exc)

    def forget(self, bucket: str, key: str) -> None:
        """The object left the cache (evicted, replaced by a directory, deleted on S3)."""
        self._pending.pop((bucket, key), None)
        row = self.db.execute(
            "DELETE FROM objects WHERE bucket = ? AND key = ? RETURNING size", (bucket, key)
        ).fetchone()
        if row is not None:
            self.count -= 1
            self.total_bytes -= int(row[0])

    def oldest(self, limit: int, skip: int = 0) -> list[tuple[str, str, int, float]]:
        """The *limit* least recently accessed objects (after *skip* of them)."""
        self.flush()
        return self.db.execute(
            "SELECT bucket, key, size, atime FROM objects ORDER BY atime LIMIT ? OFFSET ?",
            (limit, skip),
        ).fetchall()

    def last_access(self, bucket: str, key: str) -> float | None:
        pending = self._pending.get((bucket, key))
        if pending:
            return pending[1]
        row = self.db.execute(
            "SELECT atime FROM objects WHERE bucket = ? AND key = ?", (bucket, key)
        ).fetchone()
        return float(row[0]) if row else None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.db.close()

    # --- start-up reconciliation (runs in a worker thread) -----------------

    def reconcile(self) -> tuple[int, int]:
        """Blocking: make the index agree with data/ after a restart or a crash.

        Adds cached objects the index does not know (their access time
        taken from the file), drops rows whose file is gone, and deletes
        orphans: data without meta (a crash between the two renames) and
        meta without data. Returns (added, dropped).
        """
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA busy_timeout=10000")
        # mark and sweep in SQL: a million walked keys never sit in a Python set
        db.execute("CREATE TEMP TABLE seen (bucket TEXT, key TEXT, PRIMARY KEY (bucket, key)) WITHOUT ROWID")
        added = 0
        started = time.time()
        try:
            batch: list[tuple[str, str, int, float]] = []
            for row in self._walk(started):
                batch.append(row)
                if len(batch) >= 2000:
                    added += self._insert_missing(db, batch)
                    batch = []
            added += self._insert_missing(db, batch)
            db.execute("BEGIN")
            # rows touched since the walk began are live whatever the walk saw
            cur = db.execute(
                "DELETE FROM objects WHERE atime < ? AND NOT EXISTS "
                "(SELECT 1 FROM seen WHERE seen.bucket = objects.bucket AND seen.key = objects.key)",
                (started,),
            )
            dropped = cur.rowcount
            db.execute("COMMIT")
        finally:
            db.close()
        return added, dropped

    @staticmethod
    def _insert_missing(db: sqlite3.Connection, batch: list[tuple[str, str, int, float]]) -> int:
        if not batch:
            return 0
        db.execute("BEGIN")
        db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?)", [(b, k) for b, k, _, _ in batch])
        after_seen = db.total_changes
        db.executemany("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?)", batch)
        db.execute("COMMIT")
        return db.total_changes - after_seen

    def _walk(self, started: float):
        """Yield (bucket, key, size, atime) of every complete cached object.

        Orphans older than a minute are deleted on the way; younger ones may
        be a download between its data and meta renames, and are left be.
        """
        data_dir = self.layout.data_dir
        for bucket in self.layout.buckets_on_disk():
            root = os.path.join(data_dir, bucket)
            stack = [("", root)]
            while stack:
                prefix, path = stack.pop()
                try:
                    entries = list(os.scandir(path))
                except OSError:
                    continue
                names = {e.name for e in entries}
                for entry in entries:
                    name = entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((prefix + name + "/", entry.path))
                        continue
                    if not prefix and name in (LIST_NAME, INDEX_NAME):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    orphan_ok = st.st_mtime < started - 60
                    if name.endswith(META_SUFFIX):
                        if name[: -len(META_SUFFIX)] not in names and orphan_ok:
                            _remove_orphan(entry.path)  # meta without data
                        continue
                    if name + META_SUFFIX not in names:
                        if orphan_ok:
                            _remove_orphan(entry.path)  # data without meta: never served
                        continue
                    yield bucket, prefix + name, st.st_size, max(st.st_atime, st.st_mtime)


def _remove_orphan(path: str) -> None:
    if unlink_quietly(path):
        log.info("removed orphan %s", path)

"""A bucket's listing index, ``state/listings/BUCKET/index.db``; only this module knows its SQL.

The index is a SQLite file of four tables:

- ``keys (key, size, mtime, etag)``, ordered by key: the bucket's keys as
  listed, plus, with size ``DIR_MARK`` (-1), a directory a delimiter LIST
  showed whose keys the index lacks (so it shows in its parent; it is no
  key and matches no GLOB);
- ``info (name, value)``: ``count``, ``refreshed_at``, ``listed_at`` (when
  the whole listing's LIST began), ``source`` (``s3``, ``published``,
  ``none`` for the empty index), ``published_etag``, ``list_complete``
  (0 once the index holds keys ``__list__`` lacks);
- ``local_adds (key, added_at)``: keys this host put in itself (PUSH,
  download, lookup), kept over a listing taken before then;
- ``dirs (prefix, deep, listed_at)``: when a directory (deep 0) or
  everything under a prefix (deep 1) was last listed again from S3.

Every index written here carries ``PRAGMA user_version`` = :data:`VERSION`,
and every open checks it. An index without one (version 0: what s3pool
wrote before versions) whose ``keys`` and ``info`` tables have the columns
above is read as it is (a missing ``local_adds`` or ``dirs`` reads as
empty) and brought to the current version, in place, by its first write
(:data:`MIGRATIONS`). An index of any other version (newer than this
s3pool, or one this s3pool cannot bring forward) or that is no index at
all is *unusable*: it is never read (:func:`open_reader` answers None, as
for a missing index), never written into, and the next listing replaces
it (a whole listing renames a new index over it; :func:`create_empty`
puts an empty one in its place).

Every write into an index holds :func:`index_lock` for its whole
transaction, and so does every rename, link or unlink of the name (see
its docstring).

Writes into an index commit without an fsync (``synchronous=OFF``, see
:data:`WRITE_PRAGMAS`): a directory's LIST merged into it, a key added
by a download. As with the objects in ``data/``, a killed daemon loses
nothing (the kernel holds what was written) and the crash checkpoint
(``store/checkpoint.py``) covers the machine: its ``syncfs`` flushes the
indexes with the objects, and after an unclean reboot
:func:`sound_after_crash` checks every index; one that is torn is taken
away and listed again. An fsync a commit cost
1-2 ms on a quiet disk and tens of ms behind other writes, once per
directory a ``find`` reads (bench/RESULTS.md, Listings).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from s3pool.store.files import temp_path

log = logging.getLogger(__name__)

# every connection that writes into an index in place (module docstring)
WRITE_PRAGMAS = "PRAGMA synchronous=OFF"

# the schema version every index written now carries (PRAGMA user_version)
VERSION = 1
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, size INTEGER, mtime REAL, etag TEXT)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS info (name TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS local_adds (key TEXT PRIMARY KEY, added_at REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirs (prefix TEXT, deep INTEGER, listed_at REAL,
    PRIMARY KEY (prefix, deep)) WITHOUT ROWID;
PRAGMA user_version = {VERSION};
"""
# the columns a version-0 index must have to be read and brought forward
_LEGACY_COLUMNS = {"keys": ["key", "size", "mtime", "etag"], "info": ["name", "value"]}
# a directory a delimiter LIST showed whose keys the index lacks: a row
# (PREFIX/, -1, 0, '') that makes it show in its parent; no key, no GLOB match
DIR_MARK = -1
# the info 'source' of the empty index create_empty makes (no whole listing yet)
EMPTY_SOURCE = "none"
# Sorts after every character a key can hold: the end of a prefix range.
_TOP = chr(0x10FFFF)


def prefix_upper(prefix: str) -> str:
    """The end of the key range of *prefix* (every key under it sorts below)."""
    return prefix + _TOP


class Row(NamedTuple):
    """One row of the keys table (a key, or a directory mark: size DIR_MARK)."""

    key: str
    size: int
    mtime: float
    etag: str


class IndexFault(Exception):
    """The index could not be read or written (SQLite's reason in the text)."""

    def __init__(self, message: str, full: bool = False) -> None:
        super().__init__(message)
        self.full = full  # the disk is full

    @classmethod
    def of(cls, exc: sqlite3.Error) -> IndexFault:
        full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL \
            or "disk is full" in str(exc)
        if isinstance(exc, sqlite3.ProgrammingError):
            return IndexReplaced(str(exc))
        return cls(str(exc), full)


class IndexReplaced(IndexFault):
    """A reader was closed under a query: a new index took its place (ask again)."""


class IndexUnusable(IndexFault):
    """The file is no index this s3pool can use (another version, or no index
    at all): the next listing replaces it."""


_index_locks: dict[str, threading.Lock] = {}
_index_locks_guard = threading.Lock()


def index_lock(path: str) -> threading.Lock:
    """The lock of the index file at *path* (a leaf: nothing else is waited
    for while it is held). Every write into the index holds it for the whole
    transaction, from opening (or checking) the file the name holds to the
    commit; every rename, link or unlink of the name holds it too. SQLite's
    rollback journal is found by the file's name (``index.db-journal``), its
    locks are on the file: a write still going into a file just replaced
    left a journal that looked hot to a writer of the new file, which "rolled
    it back" into the wrong file ('database disk image is malformed', 'disk
    I/O error', readers kept 'locked'). Under this lock the name never
    changes file while a journal exists, and no write goes into a file the
    name no longer holds."""
    with _index_locks_guard:
        return _index_locks.setdefault(path, threading.Lock())


def inode(path: str) -> int | None:
    """The inode the name *path* holds now, or None."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


# --- versions ---------------------------------------------------------------

def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _legacy_shape(db: sqlite3.Connection) -> bool:
    """Does a version-0 index have the tables and columns this s3pool reads?"""
    for table, columns in _LEGACY_COLUMNS.items():
        found = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        if found[:len(columns)] != columns:
            return False
    return True


def _readable(db: sqlite3.Connection) -> str | None:
    """None if this s3pool can read the index open in *db*; else why not."""
    version = _version(db)
    if version == VERSION:
        return None
    if version == 0:
        return None if _legacy_shape(db) else "not a listing index of a known version"
    return f"index version {version}, this s3pool reads {VERSION} and older"


def _from_0(db: sqlite3.Connection) -> None:
    """Version 0 (no user_version; local_adds and dirs came later) -> 1."""
    db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")


# version -> the step that brings an index of it to VERSION in place
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _from_0}


def _writable(db: sqlite3.Connection, path: str) -> None:
    """Make the index open in *db* (under its lock) the current version, or
    raise IndexUnusable."""
    version = _version(db)
    if version == VERSION:
        return
    if version in MIGRATIONS and _readable(db) is None:
        MIGRATIONS[version](db)
        log.info("listing index %s: brought from version %d to %d", path, version, VERSION)
        return
    raise IndexUnusable(f"{path}: {_readable(db) or 'unknown version'}")


# --- reading ----------------------------------------------------------------

def open_reader(path: str) -> Reader | None:
    """A read-only view of the index at *path*; None when there is none or
    it is unusable (logged): the next listing makes a new one."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        why = _readable(db)
    except sqlite3.Error as exc:
        why = str(exc)
    if why is not None:
        db.close()
        if os.path.exists(path):
            log.warning("listing index %s is not used (%s): the next listing replaces it",
                        path, why)
        return None
    return Reader(db)


class Reader:
    """Queries of one index file (read-only). SQLite's errors come out as IndexFault."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def close(self) -> None:
        self._db.close()

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        try:
            return self._db.execute(sql, args).fetchone()
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc

    def info(self, *names: str) -> dict[str, Any]:
        """The info values of *names* that the index has."""
        marks = ", ".join("?" * len(names))
        try:
            return dict(self._db.execute(
                f"SELECT name, value FROM info WHERE name IN ({marks})", names))
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc

    def count(self) -> int:
        """Keys in the listing, as counted when it was written."""
        row = self._one("SELECT value FROM info WHERE name = 'count'")
        return int(row[0]) if row else 0

    def list_complete(self) -> bool:
        """False once the index holds keys ``__list__`` lacks."""
        row = self._one("SELECT value FROM info WHERE name = 'list_complete'")
        return row is None or bool(row[0])

    def key_info(self, key: str) -> tuple[int, float, str] | None:
        """(size, mtime, etag) of *key*, or None (a directory mark is no key)."""
        row = self._one("SELECT size, mtime, etag FROM keys WHERE key = ? AND size >= 0", (key,))
        return (int(row[0]), float(row[1]), row[2]) if row else None

    def has_under(self, prefix: str) -> bool:
        """True if some row (a key or a directory mark) lies under *prefix*."""
        return self._one("SELECT 1 FROM keys WHERE key >= ? AND key < ? LIMIT 1",
                         (prefix, prefix_upper(prefix))) is not None

    def rows(self, low: str, inclusive: bool, high: str
             ) -> Iterator[tuple[str, int, float, str]]:
        """Rows (key, size, mtime, etag) from *low* (included or not) to
        below *high*, in key order, read lazily (stop early and the rest is
        never read); plain tuples, not :class:`Row`: a readdir of 100,000
        entries reads 100,000 of them."""
        op = ">=" if inclusive else ">"
        try:
            cursor = self._db.execute(
                f"SELECT key, size, mtime, etag FROM keys WHERE key {op} ? AND key < ? "
                "ORDER BY key", (low, high))
            # the columns' own types (INTEGER, REAL, TEXT): rows as they come
            yield from cursor
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc

    def keys_under(self, prefix: str) -> Iterator[str]:
        """The keys (no directory marks) under *prefix*, in key order."""
        try:
            for (key,) in self._db.execute(
                    "SELECT key FROM keys WHERE key >= ? AND key < ? AND size >= 0 "
                    "ORDER BY key", (prefix, prefix_upper(prefix))):
                yield key
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc

    def key_total(self) -> int:
        """Keys in the index now (directory marks are none)."""
        return int(self._one("SELECT count(*) FROM keys WHERE size >= 0")[0])

    def entries(self) -> Iterator[Row]:
        """Every key (no directory marks) in key order."""
        try:
            for row in self._db.execute("SELECT key, size, mtime, etag FROM keys "
                                        "WHERE size >= 0 ORDER BY key"):
                yield Row(*row)
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc

    def listed_at(self, prefix: str, deep: bool) -> float:
        """The latest LIST of a part recorded for the directory *prefix*
        (with *deep*, for every key under it): a deep LIST of a prefix of it,
        or (not *deep*) a LIST of that directory; 0 if none."""
        best = 0.0
        try:
            # deep listings are few (one per GLOB prefix); directories many
            for listed_prefix, listed_at in self._db.execute(
                    "SELECT prefix, listed_at FROM dirs WHERE deep = 1"):
                if prefix.startswith(listed_prefix):
                    best = max(best, float(listed_at))
            if not deep:
                row = self._db.execute("SELECT listed_at FROM dirs WHERE prefix = ? AND deep = 0",
                                       (prefix,)).fetchone()
                if row is not None:
                    best = max(best, float(row[0]))
        except sqlite3.OperationalError:
            pass  # a version-0 index from before directory listings: no table
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc
        return best

    def added_since(self, when: float) -> list[tuple[Row, float]]:
        """(row, added_at) of the keys this host put in after *when*."""
        try:
            return [(Row(*row[:4]), row[4]) for row in self._db.execute(
                "SELECT k.key, k.size, k.mtime, k.etag, a.added_at FROM local_adds a "
                "JOIN keys k ON k.key = a.key WHERE a.added_at > ?", (when,))]
        except sqlite3.OperationalError:  # a version-0 index from before local_adds
            return []
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc


def read(path: str) -> Reader:
    """open_reader for a blocking caller that needs the index: IndexUnusable if none."""
    reader = open_reader(path)
    if reader is None:
        raise IndexUnusable(f"{path}: no usable listing index")
    return reader


# --- writing a whole index ----------------------------------------------------

class Builder:
    """A new index being written (blocking), in a file of tmp/ nobody reads yet."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path)
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc
        try:
            self._db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise IndexFault.of(exc) from exc

    def add(self, rows: Iterable[tuple[str, int, float, str]]) -> None:
        self._run_many("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)", rows)

    def add_local(self, added: Iterable[tuple[tuple[str, int, float, str], float]]) -> None:
        """Keys this host put in itself, with when: kept over a later listing
        of the past; the index then lacks nothing ``__list__`` has but may
        hold more (list_complete 0)."""
        added = list(added)
        if added:
            self.add(row for row, _ in added)
            self._run_many("INSERT OR REPLACE INTO local_adds VALUES (?, ?)",
                           [(row[0], at) for row, at in added])
            self.set_info({"list_complete": 0})

    def set_info(self, values: dict[str, Any]) -> None:
        self._run_many("INSERT OR REPLACE INTO info VALUES (?, ?)", values.items())

    def keys(self) -> Iterator[str]:
        """The keys added so far, each once, in key order."""
        try:
            for (key,) in self._db.execute("SELECT key FROM keys ORDER BY key"):
                yield key
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc

    def _run_many(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        try:
            self._db.executemany(sql, args)
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc

    def finish(self) -> None:
        """Commit, close and fsync: the file is whole on disk."""
        try:
            self._db.commit()
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc
        finally:
            self._db.close()
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())

    def abandon(self) -> None:
        self._db.close()


def install(built: str, path: str) -> None:
    """Blocking: the finished index *built* becomes the index at *path*
    (renamed over what was there, while no write into that runs)."""
    with index_lock(path):
        os.rename(built, path)


def create_empty(path: str, tmp_dir: str, hint: str) -> None:
    """Blocking: an empty index at *path*, listed at time 0, unless a usable
    one is there (one that appeared meanwhile is never replaced). An
    unusable one is replaced."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with temp_path(tmp_dir, "index", hint) as tmp:
        builder = Builder(tmp)
        try:
            builder.set_info({"listed_at": 0.0, "source": EMPTY_SOURCE, "count": 0,
                              "list_complete": 0})
        except BaseException:
            builder.abandon()
            raise
        builder.finish()
        with index_lock(path):
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                pass
            reader = open_reader(path)
            if reader is not None:
                reader.close()
                return  # a listing got there first
            os.rename(tmp, path)  # an unusable index: the empty one takes its place


def remove(path: str) -> None:
    """Blocking: take the index at *path* away (and its directory if empty)."""
    with index_lock(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass  # not empty (a journal, a listing that came meanwhile): leave it


# --- changing an index in place ------------------------------------------------

def _change(path: str, change: Callable[[sqlite3.Connection], None]) -> bool:
    """Blocking: run *change* as one transaction on the index at *path*,
    under its lock. False if there is no index (taken away meanwhile:
    connecting would make an empty file) or it is unusable."""
    with index_lock(path):
        if not os.path.exists(path):
            return False
        try:
            db = sqlite3.connect(path)
            try:
                _writable(db, path)
                db.execute(WRITE_PRAGMAS)
                change(db)
                db.commit()
            finally:
                db.close()
        except IndexUnusable as exc:
            log.debug("not changed: %s", exc)
            return False
        except sqlite3.Error as exc:
            raise IndexFault.of(exc) from exc
    return True


def sound_after_crash(path: str) -> bool:
    """Blocking, at start-up after an unclean reboot: False if the index at
    *path* may be torn, and then it is taken away (the next listing makes a
    new one). It must pass SQLite's quick_check and have no journal left (a
    rollback journal written without an fsync may itself be torn, and SQLite
    would play it back). Every index is checked, not only those written
    since the last sync: a file's time may be older than its bytes after a
    crash."""
    with index_lock(path):
        if not os.path.exists(path):
            return True
        why = "a rollback journal was left" if os.path.exists(path + "-journal") else None
        if why is None:
            try:
                db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    result = db.execute("PRAGMA quick_check").fetchone()
                finally:
                    db.close()
                if result is None or result[0] != "ok":
                    why = f"quick_check: {result[0] if result else 'no answer'}"
            except sqlite3.Error as exc:
                why = str(exc)
        if why is None:
            return True
        log.warning("listing index %s may be torn, the machine went down uncleanly (%s): "
                    "taken away, the next listing makes a new one", path, why)
        for name in (path + "-journal", path):
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass
        return False


def add_key(path: str, row: tuple[str, int, float, str], added_at: float) -> bool:
    """Blocking: put a key this host wrote or saw into the index (it then
    holds a key ``__list__`` lacks: list_complete 0)."""
    def change(db: sqlite3.Connection) -> None:
        db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)", tuple(row))
        db.execute("INSERT OR REPLACE INTO info VALUES ('list_complete', 0)")
        db.execute("INSERT OR REPLACE INTO local_adds VALUES (?, ?)", (row[0], added_at))
    return _change(path, change)


def remove_key(path: str, key: str) -> bool:
    """Blocking: take a key deleted on S3 out of the index."""
    def change(db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM keys WHERE key = ?", (key,))
        db.execute("DELETE FROM local_adds WHERE key = ?", (key,))
    return _change(path, change)


class Merger:
    """Blocking: the pages of one LIST of a prefix merged into the index at
    *path*, a transaction a page under the index's lock. A whole listing may
    replace the file meanwhile (a rename): the pages still to come go into
    the new file, and :attr:`replaced` says so."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._ino: int | None = None
        self.replaced = False

    def merge(self, prefix: str, deep: bool, lo: str | None, hi: str | None,
              entries: list[Any], subdirs: list[str], keep_since: float,
              listed_at: float | None = None) -> None:
        """Make the index agree with one page (see merge_page); with
        *listed_at* (the last page), record the prefix as listed then,
        unless the pages went into two files."""
        with index_lock(self.path):  # the name holds the file written, and keeps it till the commit
            now = inode(self.path)
            if now is None:
                raise IndexFault("the index was taken away meanwhile")
            try:
                if self._db is None or now != self._ino:
                    if self._db is not None:
                        self._db.close()  # replaced by a whole listing: go on in the new one
                        self.replaced = True
                        self._db = None
                    self._open()
                db = self._db
                assert db is not None
                try:
                    merge_page(db, prefix, deep, lo, hi, entries, subdirs, keep_since)
                    if listed_at is not None and not self.replaced:
                        db.execute("INSERT OR REPLACE INTO dirs VALUES (?, ?, ?)",
                                   (prefix, int(deep), listed_at))
                    db.execute("INSERT OR REPLACE INTO info VALUES ('list_complete', 0)")
                    db.commit()
                except BaseException:
                    db.close()  # rolled back while the lock is held: no journal left
                    self._db = None
                    raise
            except sqlite3.Error as exc:
                raise IndexFault.of(exc) from exc

    def _open(self) -> None:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            _writable(db, self.path)
            db.execute(WRITE_PRAGMAS)
        except BaseException:
            db.close()
            raise
        self._db, self._ino = db, inode(self.path)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def merge_page(db: sqlite3.Connection, prefix: str, deep: bool, lo: str | None,
               hi: str | None, entries: list[Any], subdirs: list[str],
               keep_since: float) -> None:
    """Blocking: make the index agree with one LIST page of *prefix*.

    The page covers the positions after *lo* (None: from the start of the
    prefix) up to *hi* (None: to the end of the prefix). A position is a key
    or, in a directory listing (not *deep*), a subdirectory's prefix. Index
    keys in that range the page lacks go (a subdirectory it lacks goes with
    every key under it), unless this host put them there after *keep_since*
    (a PUSH while the LIST ran); the page's keys (key, size, mtime, etag)
    go in; a subdirectory the index has no key under gets a DIR_MARK row so
    it shows in its parent.
    """
    end = prefix_upper(prefix)
    present = {e[0] for e in entries}
    recent = {key for (key,) in db.execute(
        "SELECT key FROM local_adds WHERE added_at >= ? AND key >= ? AND key < ?",
        (keep_since, prefix, end))}
    doomed: list[str] = []
    doomed_dirs: list[str] = []
    low, inclusive = (prefix, True) if lo is None else (lo, False)
    if deep:
        rows = db.execute(
            f"SELECT key FROM keys WHERE key {'>=' if inclusive else '>'} ? AND key < ? "
            "ORDER BY key", (low, end))
        for (key,) in rows:
            if hi is not None and key > hi:
                break
            if key not in present and key not in recent:
                doomed.append(key)
    else:
        dirs = set(subdirs)
        cut = len(prefix)
        while True:
            rows = db.execute(
                f"SELECT key FROM keys WHERE key {'>=' if inclusive else '>'} ? AND key < ? "
                "ORDER BY key", (low, end))
            jumped = False
            for (key,) in rows:
                slash = key.find("/", cut)
                if slash < 0:
                    if hi is not None and key > hi:
                        break
                    if key not in present and key not in recent:
                        doomed.append(key)
                    low, inclusive = key, False
                    continue
                sub = key[:slash + 1]
                if (lo is None or sub > lo) and (hi is None or sub <= hi):
                    if sub not in dirs:
                        doomed_dirs.append(sub)
                elif hi is not None and sub > hi:
                    break
                low, inclusive, jumped = prefix_upper(sub), False, True
                break  # past the subdirectory's keys in one jump
            if not jumped:
                break
    if doomed:
        db.executemany("DELETE FROM keys WHERE key = ?", [(k,) for k in doomed])
    for sub in doomed_dirs:
        db.execute("DELETE FROM keys WHERE key >= ? AND key < ? AND key NOT IN "
                   "(SELECT key FROM local_adds WHERE added_at >= ?)",
                   (sub, prefix_upper(sub), keep_since))
    if entries:  # ListEntry tuples (key, size, mtime, etag): the row as it is
        db.executemany("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)", entries)
    for sub in subdirs:
        if db.execute("SELECT 1 FROM keys WHERE key >= ? AND key < ? LIMIT 1",
                      (sub, prefix_upper(sub))).fetchone() is None:
            db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?, 0, '')", (sub, DIR_MARK))

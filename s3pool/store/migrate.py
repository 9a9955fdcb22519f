"""Start-up: bring a HOMEDIR written by an older s3pool to the current layout.

``state/layout`` holds the layout version of a HOMEDIR (``LAYOUT_VERSION``
in layout.py). A HOMEDIR without it is of version 1, the layout before the
listing indexes left the key namespace: each bucket's index was
``data/BUCKET/__index__``, beside the keys, where a key ``__index__-journal``
was SQLite's rollback journal. Moving from version 1 keeps everything
cached: objects and metas stay where they are; each index moves to
``state/listings/BUCKET/index.db`` after SQLite has checked it (a leftover
journal of SQLite's own is rolled back first). An index that may have been
tampered with (a cached *object* sits where its journal would be) or that
fails SQLite's check is dropped instead: the next REFRESH lists the bucket again.
A HOMEDIR of a newer layout than this s3pool knows is refused, never misread.
"""

from __future__ import annotations

import logging
import os
import sqlite3

from s3pool.errors import StartupError
from s3pool.store.files import replace_file
from s3pool.store.layout import INDEX_FILE, LAYOUT_VERSION, META_SUFFIX, Layout

log = logging.getLogger(__name__)

OLD_INDEX_NAME = "__index__"  # layout 1: data/BUCKET/__index__
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")


def layout_version(layout: Layout) -> int:
    """The layout version written in state/layout (1 if there is none)."""
    try:
        with open(layout.layout_file, encoding="ascii") as f:
            text = f.read(64)
    except FileNotFoundError:
        return 1
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"{layout.layout_file} is unreadable ({exc}): cannot tell the "
                           "layout of this HOMEDIR") from None
    words = text.split()
    if not words or not words[0].isdigit():
        raise StartupError(f"{layout.layout_file} holds {text[:20]!r}, not a layout version: "
                           "cannot tell the layout of this HOMEDIR")
    return int(words[0])


def migrate(layout: Layout) -> int:
    """Blocking, at start-up before anything is served: move the HOMEDIR to
    the current layout. Returns the version it had."""
    version = layout_version(layout)
    if version > LAYOUT_VERSION:
        raise StartupError(f"HOMEDIR {layout.home} has layout version {version} (a newer s3pool "
                           f"wrote it); this s3pool reads layout {LAYOUT_VERSION} and older")
    if version < 2:
        moved, dropped = _from_1(layout)
        log.info("HOMEDIR %s: moved from layout %d to %d (%d listing indexes moved under "
                 "state/listings/, %d dropped to be listed again)", layout.home, version,
                 LAYOUT_VERSION, moved, dropped)
    if version != LAYOUT_VERSION or not os.path.exists(layout.layout_file):
        _write_version(layout)
    return version


def _from_1(layout: Layout) -> tuple[int, int]:
    """Layout 1 -> 2: every data/BUCKET/__index__ goes to state/listings/BUCKET/index.db."""
    moved = dropped = 0
    for bucket in layout.buckets_on_disk():
        bucket_dir = layout.bucket_dir(bucket)
        old = os.path.join(bucket_dir, OLD_INDEX_NAME)
        side = [old + suffix for suffix in SQLITE_SIDE_FILES]
        # a key could take these names: with a meta beside it, it is a cached object
        objects = [p for p in side if os.path.lexists(p + META_SUFFIX)]
        ours = [p for p in side if os.path.lexists(p) and p not in objects]
        if os.path.lexists(old):
            if not objects and os.path.isfile(old) and not os.path.islink(old) \
                    and _sound(old):
                os.makedirs(layout.listing_dir(bucket), exist_ok=True)
                os.replace(old, os.path.join(layout.listing_dir(bucket), INDEX_FILE))
                moved += 1
            else:
                log.warning("s3://%s: the listing index of the old layout was dropped (%s); "
                            "the next REFRESH lists the bucket again", bucket,
                            "an object named like its journal is cached" if objects
                            else "it failed SQLite's check")
                _remove(old)
                dropped += 1
        for path in ours:
            _remove(path)
    return moved, dropped


def _sound(path: str) -> bool:
    """Open the index read-write where it lies (SQLite rolls back a hot
    journal of its own), then check it is a sound SQLite file. Whether it
    holds a listing index of a version this s3pool reads is for
    listing/index.py to say when it is opened (if not, the next listing
    replaces it)."""
    try:
        db = sqlite3.connect(path)
        try:
            ok = db.execute("PRAGMA quick_check").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        log.info("old listing index %s unusable: %s", path, exc)
        return False
    return ok is not None and ok[0] == "ok"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        pass  # a directory: keys live under it, it is no file of ours


def _write_version(layout: Layout) -> None:
    replace_file(layout.tmp_dir, "layout", layout.layout_file, f"{LAYOUT_VERSION}\n".encode())

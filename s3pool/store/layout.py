"""The HOMEDIR layout on disk, and the rules that keep keys inside it.

Everything that turns a bucket or key into a path goes through here, so
that no other module can build a path that leaves ``data/BUCKET/``.

    HOMEDIR/log/                   log files
    HOMEDIR/tmp/                   temp files (files.py), emptied at start-up
    HOMEDIR/state/                 our own files: access records, checkpoint
    HOMEDIR/state/layout           the layout version of this HOMEDIR
    HOMEDIR/state/listings/BUCKET/index.db  SQLite index of the listing (key,
                                   size, mtime, etag), written with __list__
    HOMEDIR/s3pool.pid             pidfile of the running daemon
    HOMEDIR/s3/                    the embedded demo S3's own data (see embedded.py)
    HOMEDIR/data/BUCKET/KEY        object bytes
    HOMEDIR/data/BUCKET/KEY__meta__  object meta (aws s3api get-object shape)
    HOMEDIR/data/BUCKET/__list__   every key of the bucket, one a line

A key can name any file of a BUCKETDIR, so nothing of s3pool's own lives
there but ``__list__`` and the meta files, which keys may not take: the
listing indexes and their SQLite journals live under ``state/``
(``migrate.py`` moves a HOMEDIR of the previous layout at start-up).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from s3pool.errors import BadBucket, BadKey
from s3pool.store.files import sweep_temp, unlink_quietly as unlink_quietly  # lives in files.py

META_SUFFIX = "__meta__"
LIST_NAME = "__list__"
# Names of our own files at the top of a BUCKETDIR; a key may not take them.
RESERVED_ROOT_NAMES = frozenset({LIST_NAME})
# The layout of HOMEDIR this s3pool writes (state/layout). 1: the listing
# index was data/BUCKET/__index__ (no state/layout file); 2: it is under state/.
LAYOUT_VERSION = 2
LAYOUT_FILE = "layout"
INDEX_FILE = "index.db"
# Linux NAME_MAX: a longer segment could never be a file name.
MAX_SEGMENT_BYTES = 255
# the last segment names the data file and, with META_SUFFIX, the meta file
MAX_FILE_NAME_BYTES = MAX_SEGMENT_BYTES - len(META_SUFFIX)
MAX_KEY_BYTES = 1024  # S3's own limit

# used with fullmatch: '$' alone would let a trailing newline through
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def check_bucket(bucket: str) -> str:
    """Return *bucket* if it is a name we can use as a directory, else raise."""
    if not isinstance(bucket, str) or not _BUCKET_RE.fullmatch(bucket) or ".." in bucket:
        raise BadBucket(f"invalid bucket name {bucket!r}")
    return bucket


def unfit_for_a_line(key: str) -> bool:
    """Would *key* not read back as itself from one line of a reply or of
    ``__list__``? A newline or carriage return splits it in two; a NUL
    ends it early for a client in C (the original's clients)."""
    return "\n" in key or "\r" in key or "\0" in key


def check_key(key: str, line_break_ok: bool = False) -> str:
    """Return *key* if it maps to exactly one path inside a BUCKETDIR.

    Refused: empty keys, leading '/', empty segments ('a//b', trailing
    '/'), '.' and '..' segments, NUL, lone surrogates (S3 keys
    are UTF-8; such a key has no file name), segments that end in __meta__
    (they would alias a meta file), our own root files, and segments too
    long for the local filesystem (the last one, with __meta__ appended).
    A newline or carriage return is refused too unless *line_break_ok*: the
    protocol's replies give one path a line, which cannot carry it, but a
    path opened on the mount can (S3 may list such keys).
    """
    if not isinstance(key, str) or not key:
        raise BadKey("empty key")
    if "\0" in key:
        raise BadKey(f"key {key!r} contains NUL")
    if not line_break_ok and unfit_for_a_line(key):
        raise BadKey(f"key {key!r} holds a newline or carriage return: replies give one "
                     "path a line and cannot carry it (open it by name on the mount)")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadKey(f"key {key!r} holds a lone surrogate at offset {exc.start}: "
                     "S3 keys are UTF-8 text") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise BadKey(f"key {key[:40]!r}... is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise BadKey(f"key {key!r} starts with '/'")
    segments = key.split("/")
    for segment in segments:
        if segment == "":
            raise BadKey(f"key {key!r} has an empty path segment")
        if segment in (".", ".."):
            raise BadKey(f"key {key!r} has a '{segment}' path segment")
        if segment.endswith(META_SUFFIX):
            raise BadKey(f"key {key!r} collides with s3pool meta files (*{META_SUFFIX})")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise BadKey(f"key {key!r} has a path segment longer than {MAX_SEGMENT_BYTES} bytes")
    if len(segments[-1].encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise BadKey(f"key {key!r} ends in a name longer than {MAX_FILE_NAME_BYTES} bytes "
                     f"(with {META_SUFFIX} appended it would not fit a file name)")
    if segments[0] in RESERVED_ROOT_NAMES:
        raise BadKey(f"key {key!r} collides with s3pool's own file {segments[0]}")
    return key


class _Below:
    """A read-only attribute of a :class:`Layout`: the path *name* under the
    layout's path *parent* (``home``, ``state_dir``...)."""

    def __init__(self, parent: str, name: str) -> None:
        self.parent, self.name = parent, name

    def __get__(self, layout: Layout, owner: type[Layout] | None = None) -> str:
        return os.path.join(getattr(layout, self.parent), self.name)


@dataclass(frozen=True)
class Layout:
    """Paths under one HOMEDIR (absolute)."""

    home: str

    log_dir = _Below("home", "log")
    tmp_dir = _Below("home", "tmp")
    data_dir = _Below("home", "data")
    state_dir = _Below("home", "state")
    pidfile = _Below("home", "s3pool.pid")
    layout_file = _Below("state_dir", LAYOUT_FILE)
    listings_dir = _Below("state_dir", "listings")

    @classmethod
    def create(cls, home: str) -> Layout:
        layout = cls(os.path.abspath(home))
        for sub in (layout.log_dir, layout.tmp_dir, layout.data_dir, layout.state_dir):
            os.makedirs(sub, exist_ok=True)
        return layout

    def bucket_dir(self, bucket: str) -> str:
        return os.path.join(self.data_dir, check_bucket(bucket))

    def object_path(self, bucket: str, key: str) -> str:
        bucket_dir = self.bucket_dir(bucket)
        # a file name may hold a line break; whether a reply can is the caller's question
        path = os.path.join(bucket_dir, check_key(key, line_break_ok=True))
        # check_key already rules out every escape; this is the belt to its braces.
        if not path.startswith(bucket_dir + os.sep):
            raise BadKey(f"key {key!r} leaves the bucket directory")
        return path

    def meta_path(self, bucket: str, key: str) -> str:
        return self.object_path(bucket, key) + META_SUFFIX

    def list_path(self, bucket: str) -> str:
        return os.path.join(self.bucket_dir(bucket), LIST_NAME)

    def listing_dir(self, bucket: str) -> str:
        """state/listings/BUCKET/: the bucket's index and its SQLite journals
        (a directory of their own: a bucket name may take all of NAME_MAX)."""
        return os.path.join(self.listings_dir, check_bucket(bucket))

    def index_path(self, bucket: str) -> str:
        return os.path.join(self.listing_dir(bucket), INDEX_FILE)

    def buckets_on_disk(self) -> list[str]:
        try:
            names = os.listdir(self.data_dir)
        except FileNotFoundError:
            return []
        return sorted(
            n for n in names
            if _BUCKET_RE.fullmatch(n) and os.path.isdir(os.path.join(self.data_dir, n))
        )

    def clear_tmp(self) -> int:
        """Remove every leftover temp file (store/files.py); return how many."""
        return sweep_temp(self.tmp_dir)

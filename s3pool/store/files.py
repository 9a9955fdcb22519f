"""Files s3pool writes: the temporary files of HOMEDIR/tmp/, and writes that cannot leave a hole.

Every file in ``tmp/`` is made here (:func:`new_temp`, :func:`temp_path`):
created with ``O_EXCL`` (never an existing file, never through a link
someone left there), private (mode 0600 unless the caller asks for the
mode of a file others will read), and named ``WHO.HINT.PID.RANDOM`` so a
leftover says which part of s3pool made it (``dl``, ``meta``, ``push``,
``put``, ``list``, ``index``, ``publish``, ``published``) and for what
(a bucket). What is made in ``tmp/`` is either renamed out of it on
success or removed on failure; whatever a crash leaves there is removed
at start-up by :func:`sweep_temp` (before anything can be writing there).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator

from s3pool.errors import NoSpace

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# who made a temp file: a short lower-case word
_WHO = re.compile(r"[a-z]{1,16}")
# what a hint may bring into a file name (a bucket name is made of these)
_HINT_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HINT_CHARS = 64  # a bucket name may take 255 characters: only its start goes in


def new_temp(tmp_dir: str, who: str, hint: str = "", mode: int = 0o600) -> tuple[int, str]:
    """A new, empty file in *tmp_dir*: (open fd for reading and writing, path).

    *who* names the part of s3pool that made it, *hint* what it is for (a
    bucket). Created with O_EXCL and *mode* (0600: private; the umask
    applies too); the caller closes the fd and renames or removes the file.
    """
    if not _WHO.fullmatch(who):
        raise ValueError(f"temp file maker {who!r} is not a short lower-case word")
    stem = who + "." + (_HINT_UNSAFE.sub("_", hint[:_HINT_CHARS]) + "." if hint else "")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        path = os.path.join(tmp_dir, f"{stem}{os.getpid()}.{secrets.token_hex(6)}")
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temp file name for {stem!r} in {tmp_dir}")


@contextlib.contextmanager
def temp_path(tmp_dir: str, who: str, hint: str = "", mode: int = 0o600) -> Iterator[str]:
    """The path of a new, empty file in *tmp_dir* (see :func:`new_temp`),
    removed when the block ends, whatever happened (a file renamed out of
    tmp/ meanwhile is gone already)."""
    fd, path = new_temp(tmp_dir, who, hint, mode)
    os.close(fd)
    try:
        yield path
    finally:
        unlink_quietly(path)


def replace_file(tmp_dir: str, who: str, path: str, data: bytes, mode: int = 0o666) -> None:
    """Blocking: *path* holds *data* whole, or what it held before (a small
    state file: a record, a version). Written to a temp file of *tmp_dir*
    (same filesystem), synced, renamed over *path*, then *path*'s directory
    synced. *mode* as open() gives it (the umask applies)."""
    fd, tmp = new_temp(tmp_dir, who, mode=mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    directory = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def unlink_quietly(path: str) -> bool:
    """Remove a file (a temp file, a leftover) if it is there; True if it was."""
    try:
        os.unlink(path)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return True


def sweep_temp(tmp_dir: str) -> int:
    """At start-up, before anything writes there: remove everything left in
    *tmp_dir* (partial downloads, listings being built); return how many."""
    removed = 0
    for entry in os.scandir(tmp_dir):
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite all of *data* at *offset*: a short write is retried, then it is an error.

    A full filesystem often shows first as a short write (part of a chunk
    fits); ignoring the count leaves a hole of zeros in the file.
    """
    while len(data):
        try:
            wrote = os.pwrite(fd, data, offset)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise NoSpace(f"no space left in the cache: {exc.strerror}") from exc
            raise
        if wrote <= 0:
            raise NoSpace(f"write made no progress at offset {offset} (disk full?)")
        data = data[wrote:]
        offset += wrote

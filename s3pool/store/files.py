"""Writes into the cache's files that cannot leave a hole: a full disk is NoSpace."""

from __future__ import annotations

import errno
import os

from s3pool.errors import NoSpace

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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

"""PUSH: a local file uploaded to S3, and the bytes uploaded cached.

The file is first copied into tmp/ (and synced): what is uploaded is then
exactly what is installed, even if the caller rewrites its file meanwhile;
a file the cache has no room for is uploaded uncached. Under the key's
lock the old cached copy is removed and any download of the old version
superseded before the upload starts, so the old bytes are never served
again, whatever happens next.

PUSH uploads only into a bucket that exists: some servers (SeaweedFS, the
embedded demo) create a bucket on upload, and a misspelled name would make
one. A HEAD of the bucket answers once, remembered BUCKET_CONFIRMED_FOR;
a "no" is not remembered, so a bucket made meanwhile is found at once.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import weakref
from typing import Any

import trio

from s3pool.errors import AccessDenied, LocalFileError, NoSpace, NoSuchBucket
from s3pool.s3.answers import ListEntry, listing_time
from s3pool.store.layout import check_bucket, check_key, unlink_quietly
from s3pool.upload.context import UploadContext
from s3pool.upload.localfile import NotRegularFile, open_regular

log = logging.getLogger(__name__)

# how long a bucket's existence, once confirmed, is taken for granted
BUCKET_CONFIRMED_FOR = 300.0
BUCKETS_REMEMBERED = 1024
# per backend: bucket -> trio time of the HEAD that found it
_confirmed_buckets: weakref.WeakKeyDictionary[Any, dict[str, float]] = \
    weakref.WeakKeyDictionary()


async def push_file(ctx: UploadContext, bucket: str, key: str, local_path: str) -> str:
    """Upload a local file to s3://bucket/key; the cache then holds the new bytes."""
    check_bucket(bucket)
    check_key(key)
    if not os.path.isabs(local_path):
        raise LocalFileError(f"path {local_path!r} is not absolute")
    await check_bucket_exists(ctx.backend, bucket)
    # one open of a regular file (never a FIFO or a device); what is copied
    # and uploaded is read through this descriptor, whatever the path names later
    try:
        fd = open_regular(local_path)
    except NotRegularFile:
        raise LocalFileError(f"{local_path!r} is not a regular file") from None
    except OSError as exc:
        raise LocalFileError(f"cannot read {local_path!r}: {exc.strerror}") from None
    try:
        return await _push_opened(ctx, bucket, key, local_path, fd)
    finally:
        os.close(fd)


async def _push_opened(ctx: UploadContext, bucket: str, key: str, local_path: str, fd: int
                       ) -> str:
    st = os.fstat(fd)
    source = f"/proc/self/fd/{fd}"
    ctx.use_bucket(bucket)
    store = ctx.store
    async with store.key_lock(bucket, key):
        ctx.check_conflict(bucket, key)
        store.lookup(bucket, key)  # raises KeyConflict for a directory on disk
        # whatever happens next, the old cached bytes are not served again (a
        # download in flight keeps its readers' version and is not installed)
        ctx.supersede(bucket, key)
        await store.remove(bucket, key)
        ctx.forget(bucket, key)
        tmp_path = await _copy_for_push(ctx, source, local_path, st.st_size)
        try:
            # upload the copy when there is one: what is uploaded is then
            # exactly what is installed, even if the caller rewrites its file
            await ctx.backend.upload_file(bucket, key, tmp_path or source)
            ctx.counters.pushes += 1
            ctx.counters.bytes_uploaded += st.st_size
            meta = await ctx.backend.head_object(bucket, key)
            if tmp_path and meta["ContentLength"] == os.path.getsize(tmp_path):
                await store.install(bucket, key, tmp_path, meta)
                ctx.mark_fresh(bucket, key)
            await ctx.add_key(bucket, ListEntry(
                key, meta["ContentLength"], listing_time(meta), meta.get("ETag") or ""))
        finally:
            if tmp_path:
                unlink_quietly(tmp_path)
    return store.layout.object_path(bucket, key)


async def check_bucket_exists(backend: Any, bucket: str) -> None:
    """Raise NoSuchBucket unless S3 has *bucket* (asked with HEAD, a yes
    remembered BUCKET_CONFIRMED_FOR). A HEAD we may not make (HeadBucket
    needs s3:ListBucket, an upload only s3:PutObject) leaves it to the upload."""
    confirmed = _confirmed_buckets.setdefault(backend, {})
    now = trio.current_time()
    if now - confirmed.get(bucket, float("-inf")) < BUCKET_CONFIRMED_FOR:
        return
    try:
        exists = await backend.bucket_exists(bucket)
    except AccessDenied:
        return
    if not exists:
        raise NoSuchBucket(f"no such bucket: {bucket}")
    if len(confirmed) >= BUCKETS_REMEMBERED:
        confirmed.clear()
    confirmed[bucket] = now


async def _copy_for_push(ctx: UploadContext, source: str, local_path: str, size: int
                         ) -> str | None:
    """A synced copy of *source* (the opened *local_path*) in tmp/, or None
    if the cache has no room."""
    try:
        await ctx.room.make_room(size)
    except NoSpace:
        log.info("%s (%d bytes) does not fit in the cache: uploading it uncached",
                 local_path, size)
        return None
    fd, tmp_path = ctx.store.new_temp("push")
    os.close(fd)
    try:
        await trio.to_thread.run_sync(_copy_and_sync, source, tmp_path,
                                      limiter=ctx.store.disk_limiter)
    except OSError as exc:
        unlink_quietly(tmp_path)
        if exc.errno == errno.ENOSPC:
            log.info("no room to cache %s: uploading it uncached", local_path)
            return None
        raise LocalFileError(f"cannot read {local_path!r}: {exc.strerror}") from None
    return tmp_path


def _copy_and_sync(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())

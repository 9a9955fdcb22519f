"""Writing through the mount (``--mount-writes``): new objects by cp and >.

The model is mountpoint-s3's, made stricter where it can be:

- ``create`` (cp, shell ``>``, ``open(O_CREAT|O_WRONLY)``) of a name that
  is not an object starts a :class:`s3pool.upload.staged.StagedUpload`; writes
  must continue where the file ends (else EINVAL) and are staged in tmp/.
- ``close()`` returns the answer to FUSE's FLUSH: the FLUSH of the
  process that opened the file (once bytes were written) uploads it and
  answers only once S3 has it (EIO if the upload failed, so cp exits
  non-zero); ``fsync`` does the same. A FLUSH while the opener still holds
  a descriptor of the file (``/proc/PID/fd``) is another process's copy
  closing (the commands of ``script > file``) and ends nothing; when the
  opener cannot be looked at, the first FLUSH after a write uploads.
  The file is then finished: later writes get EIO. A FLUSH before any
  byte was written does nothing (the shell's ``>`` opens the file, dup2s it
  and closes the first descriptor before the command writes); an empty
  file is uploaded when its last descriptor goes (RELEASE), where a
  failure can only be logged.
- Until the upload finished nobody else sees the name: lookups of it ask
  the listing and S3, which lack it, and its entry is given to the kernel
  with no cache time. Then the object is in the cache and the listing.
- An existing object: EPERM, unless ``mount_overwrite`` lets an
  ``O_TRUNC`` open replace it by a new upload of a whole file. Rename,
  hard and symbolic links, mknod, chmod and chown: EPERM (what ``cp -p``
  run by a user ignores for chown). ``touch`` of a file being written is
  accepted and changes nothing (S3 sets the time). ``rm``: only with
  ``mount_delete``. ``mkdir`` makes a directory that exists in this
  daemon's memory until a file is written in it (S3 has no directories).

Who may write is the kernel's to check (``default_permissions``): the
modes shown are 0777 for directories, 0444 for objects (0666 with
``mount_overwrite``), less ``mount_umask``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from s3pool.cache import (
    Entry,
    NotSequential,
    ObjectExists,
    StagedUpload,
    UploadFailed,
    check_key,
)
from s3pool.errors import BadKey, NoSpace, S3PoolError
from s3pool.fs.nodes import ROOT, Node, Tree

log = logging.getLogger(__name__)


@dataclass
class WriteHandle:
    upload: StagedUpload
    inode: int
    bucket: str
    key: str
    opener: int = 0  # pid of the process that opened it (FUSE's, the thread's id)


def _error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class MountWrites:
    """The write operations of :class:`S3PoolOperations` (see the module docstring)."""

    def __init__(self, ops: Tree) -> None:
        self.ops = ops
        self.cache = ops.cache
        self.settings = ops.cache.settings
        self.handles: dict[int, WriteHandle] = {}
        self.local_dirs: set[tuple[str, str]] = set()  # (bucket, path) made by mkdir
        self.uploads = 0
        self.upload_failures = 0
        self.mountpoint = ""  # set by FuseMount: where openers' descriptors point

    @property
    def enabled(self) -> bool:
        return bool(self.settings.mount_writes)

    def _require(self) -> None:
        if not self.enabled:
            raise _error(errno.EROFS)

    # --- what the kernel is told -----------------------------------------

    def mode_of(self, is_dir: bool) -> int:
        """Permission bits of a directory or of a file (default_permissions
        checks them): the same for every file, and for every directory."""
        umask = int(self.settings.mount_umask)
        if is_dir:
            return 0o777 & ~umask
        return (0o666 if self.settings.mount_overwrite else 0o444) & ~umask

    def local_entry(self, bucket: str, dir_prefix: str, name: str) -> Entry | None:
        """A directory mkdir made that has no object under it yet."""
        if (bucket, dir_prefix + name) in self.local_dirs:
            return Entry(name, True)
        return None

    def being_written(self, bucket: str, key: str) -> bool:
        return any(h.bucket == bucket and h.key == key for h in self.handles.values())

    # --- create and open ---------------------------------------------------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._require()
        ops = self.ops
        parent = ops.node(parent_inode)
        if not parent.is_dir:
            raise _error(errno.ENOTDIR)
        if parent_inode == ROOT:
            raise _error(errno.EPERM)  # a bucket is not made by the mount
        key = parent.dir_prefix + os.fsdecode(name)
        self._check_key(parent.bucket, key)
        if self.being_written(parent.bucket, key):
            raise _error(errno.EBUSY)
        if await self._exists(parent.bucket, key):
            # the kernel sends CREATE for a name it did not know: it exists by now
            raise _error(errno.EEXIST)
        return await self._start(parent.bucket, key, mode, opener=_pid(ctx))

    async def open_for_write(self, inode: int, node: Node, flags: int, ctx: Any = None
                             ) -> pyfuse3.FileInfo:
        """open() of an existing object for writing: a whole-file replace, or EPERM."""
        self._require()
        if node.is_dir:
            raise _error(errno.EISDIR)
        if not (self.settings.mount_overwrite and flags & os.O_TRUNC):
            raise _error(errno.EPERM)
        if self.being_written(node.bucket, node.path):
            raise _error(errno.EBUSY)
        info, _ = await self._start(node.bucket, node.path, 0o666, inode, replace=True,
                                    opener=_pid(ctx))
        return info

    async def _start(self, bucket: str, key: str, mode: int, inode: int | None = None,
                     replace: bool = False, opener: int = 0
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ops = self.ops
        upload = self.cache.staged_upload(bucket, key, self.settings.upload_part_size,
                                          ops.spawn or _no_spawn, only_new=not replace)
        if inode is None:
            inode = ops.remember(Node(bucket, key, False, 0, time.time()))
        node = ops.nodes[inode]
        node.size = 0
        fh = ops.new_fh()
        self.handles[fh] = WriteHandle(upload, inode, bucket, key, opener)
        attrs = ops.attrs(inode, node)
        attrs.st_mode = stat.S_IFREG | (mode & 0o666 & ~int(self.settings.mount_umask))
        # nobody else may find the name through the kernel's caches before the upload
        attrs.entry_timeout = 0
        attrs.attr_timeout = 0
        log.info("writing s3://%s/%s (staged in %s)", bucket, key, upload.path)
        return pyfuse3.FileInfo(fh=fh), attrs

    def _check_key(self, bucket: str, key: str) -> None:
        try:
            check_key(key)
        except BadKey:
            raise _error(errno.EINVAL) from None
        if self.cache.is_hidden(key):
            raise _error(errno.EPERM)

    async def _exists(self, bucket: str, key: str) -> bool:
        return await self.cache.key_exists(bucket, key)

    # --- write, flush, fsync, release -----------------------------------

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self.handles[fh]
        try:
            written = await handle.upload.write(offset, data)
        except NotSequential:
            raise _error(errno.EINVAL) from None
        except NoSpace as exc:
            log.warning("write of s3://%s/%s refused: %s", handle.bucket, handle.key, exc)
            raise _error(errno.ENOSPC) from None
        except UploadFailed:
            raise _error(errno.EIO) from None
        except OSError as exc:
            raise _error(exc.errno or errno.EIO) from None
        except S3PoolError as exc:  # starting the multipart upload failed
            log.warning("write of s3://%s/%s failed: %s", handle.bucket, handle.key, exc)
            raise _error(errno.EIO) from None
        node = self.ops.nodes.get(handle.inode)
        if node is not None:
            node.size = handle.upload.size
        return written

    async def flush(self, fh: int) -> None:
        handle = self.handles[fh]
        upload = handle.upload
        if upload.committed:
            return
        if upload.size == 0 and upload.error is None:
            return  # nothing written yet: the shell's > closes its first descriptor
        if upload.error is None and await trio.to_thread.run_sync(self._opener_holds, handle):
            # a copy of the descriptor closed (a child of the shell that opened the
            # file exited): the file ends when the opener closes its own
            return
        await self._commit(handle)

    def _opener_holds(self, handle: WriteHandle) -> bool:
        """Worker thread: True if the process that opened the file still has a
        descriptor of it (this FLUSH is then another process's, or a dup's).
        False when that cannot be told (the process is gone, or its /proc
        entry is not ours to read): the close then uploads."""
        if not handle.opener or not self.mountpoint:
            return False
        target = os.path.join(self.mountpoint, handle.bucket, handle.key)
        fd_dir = f"/proc/{handle.opener}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return False
        for name in names:
            try:
                if os.readlink(os.path.join(fd_dir, name)) == target:
                    return True
            except OSError:
                continue
        return False

    async def fsync(self, fh: int) -> None:
        handle = self.handles[fh]
        if not handle.upload.committed:
            await self._commit(handle)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        upload = handle.upload
        if upload.committed or upload.closed:
            return
        if upload.error is None:
            # an empty file (its flushes had nothing to upload), or a descriptor
            # that was never flushed: upload it now; a failure can only be logged
            try:
                await self._commit(handle)
            except pyfuse3.FUSEError:
                pass
            return
        await upload.abort()

    async def _commit(self, handle: WriteHandle) -> None:
        upload = handle.upload
        started = time.monotonic()
        try:
            meta = await upload.commit()
        except NoSpace:
            self.upload_failures += 1
            raise _error(errno.ENOSPC) from None
        except ObjectExists:  # made meanwhile by another writer: theirs stays
            self.upload_failures += 1
            raise _error(errno.EEXIST) from None
        except S3PoolError:
            self.upload_failures += 1
            raise _error(errno.EIO) from None
        self.uploads += 1
        log.info("uploaded s3://%s/%s: %d bytes in %.2fs%s", handle.bucket, handle.key,
                 upload.size, time.monotonic() - started,
                 " (multipart)" if upload.parts else "")
        node = self.ops.nodes.get(handle.inode)
        if node is not None:
            node.size = upload.size
        self.ops.drop_kernel_pages(handle.inode)
        self._drop_local_dirs(handle.bucket, handle.key)
        del meta

    def _drop_local_dirs(self, bucket: str, key: str) -> None:
        """The directories mkdir made above *key* exist on S3 now."""
        parts = key.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.local_dirs.discard((bucket, "/".join(parts[:i])))

    # --- the rest ---------------------------------------------------------

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None
                      ) -> pyfuse3.EntryAttributes:
        self._require()
        ops = self.ops
        node = ops.node(inode)
        writing = [h for h in self.handles.values() if h.inode == inode]
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise _error(errno.EPERM)
        if fields.update_size:
            # O_TRUNC of a file just created or being replaced: its size is already 0
            if not writing or attr.st_size != writing[0].upload.size:
                raise _error(errno.EPERM)
        elif not writing and not node.is_dir:
            raise _error(errno.EPERM)  # the times of an object are S3's
        attrs = ops.attrs(inode, node)
        if writing:
            attrs.entry_timeout = attrs.attr_timeout = 0
        return attrs

    async def mkdir(self, parent_inode: int, name: bytes, mode: int
                    ) -> pyfuse3.EntryAttributes:
        self._require()
        ops = self.ops
        parent = ops.node(parent_inode)
        if parent_inode == ROOT:
            raise _error(errno.EPERM)
        path = parent.dir_prefix + os.fsdecode(name)
        self._check_key(parent.bucket, path + "/x")
        if (parent.bucket, path) in self.local_dirs or await self._exists(parent.bucket, path) \
                or self.cache.dir_entry(parent.bucket, parent.dir_prefix,
                                        os.fsdecode(name)) is not None:
            raise _error(errno.EEXIST)
        self.local_dirs.add((parent.bucket, path))
        inode = ops.remember(Node(parent.bucket, path, True, mtime=time.time()))
        return ops.attrs(inode, ops.nodes[inode])

    async def rmdir(self, parent_inode: int, name: bytes) -> None:
        self._require()
        parent = self.ops.node(parent_inode)
        path = parent.dir_prefix + os.fsdecode(name)
        if (parent.bucket, path) not in self.local_dirs:
            raise _error(errno.EPERM)
        if any(h.bucket == parent.bucket and h.key.startswith(path + "/")
               for h in self.handles.values()) or any(
                b == parent.bucket and p.startswith(path + "/") for b, p in self.local_dirs):
            raise _error(errno.ENOTEMPTY)
        self.local_dirs.discard((parent.bucket, path))

    async def unlink(self, parent_inode: int, name: bytes) -> None:
        self._require()
        if not self.settings.mount_delete:
            raise _error(errno.EPERM)
        parent = self.ops.node(parent_inode)
        key = parent.dir_prefix + os.fsdecode(name)
        if self.being_written(parent.bucket, key):
            raise _error(errno.EBUSY)
        bucket = parent.bucket
        if not await self._exists(bucket, key):
            raise _error(errno.ENOENT)
        await self.cache.delete(bucket, key)
        log.info("deleted s3://%s/%s (rm in the mount)", bucket, key)

    def refuse(self) -> None:
        """rename, link, symlink, mknod: EROFS without writes, EPERM with them."""
        self._require()
        raise _error(errno.EPERM)

    # --- shutdown -----------------------------------------------------------

    async def abort_all(self) -> None:
        """At shutdown: what is still being written is not uploaded, and its
        multipart upload (if any) is aborted."""
        # the handles stay: their writer's next write and its close get EIO
        for handle in list(self.handles.values()):
            if not handle.upload.committed and not handle.upload.closed:
                log.warning("s3://%s/%s was still being written at shutdown: not uploaded",
                            handle.bucket, handle.key)
                await handle.upload.abort()

    def status_lines(self) -> list[tuple[str, Any]]:
        return [("mount_files_writing", len(self.handles)),
                ("mount_uploads", self.uploads),
                ("mount_upload_failures", self.upload_failures)]


def _pid(ctx: Any) -> int:
    return int(getattr(ctx, "pid", 0) or 0)


def _no_spawn(fn: Any, *args: Any) -> None:
    raise RuntimeError("no nursery to run uploads in")


__all__ = ["MountWrites", "WriteHandle"]

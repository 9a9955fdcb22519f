"""Mounting and unmounting the FUSE view inside the daemon's trio run."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import pyfuse3
import trio

from s3pool.cache import Cache
from s3pool.errors import EXIT_MOUNT, StartupError
from s3pool.fs.ops import S3PoolOperations

log = logging.getLogger(__name__)


class FuseMount:
    def __init__(self, cache: Cache, mountpoint: str, buckets: list[str],
                 allow_other: bool = False) -> None:
        self.cache = cache
        self.mountpoint = mountpoint
        self.buckets = buckets
        self.allow_other = allow_other
        self.ops: S3PoolOperations | None = None
        self._nursery: trio.Nursery | None = None
        self._mounted = False
        self._kernel_read_ahead: int | None = None  # KiB, before we set ours

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.ops = S3PoolOperations(self.cache, self.buckets, spawn=self._spawn)
        # what descriptors of files written in the mount point to (/proc/PID/fd)
        self.ops.writes.mountpoint = os.path.realpath(self.mountpoint)
        options = set(pyfuse3.default_options)
        options |= {"fsname=s3pool", "subtype=s3pool"}
        if self.cache.settings.mount_writes:
            # new files can be written (fs/writes.py); who may is the kernel's
            # to check, from the modes the mount shows
            options.add("default_permissions")
        else:
            options.add("ro")
        if self.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(self.ops, self.mountpoint, options)
        except RuntimeError as exc:
            raise StartupError(f"cannot mount FUSE at {self.mountpoint}: {exc}",
                               EXIT_MOUNT) from exc
        self._mounted = True
        log.info("FUSE view mounted at %s", self.mountpoint)
        # the kernel sets the mount's read-ahead from the answer to its INIT
        # request, which pyfuse3.main sends: ours goes in right after that
        self.ops.on_init = lambda: self._spawn(self._read_ahead_after_init)
        self.cache.settings.on_change(self._set_read_ahead)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                # multipart uploads a killed daemon left are aborted (upload/staged.py)
                nursery.start_soon(self._abort_leftover_uploads)
                await pyfuse3.main(min_tasks=4, max_tasks=64)
                with trio.move_on_after(30, shield=True):
                    await self.ops.writes.abort_all()  # files still being written
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._unmount()

    async def _abort_leftover_uploads(self) -> None:
        try:
            await self.cache.abort_leftover_uploads()
        except Exception:  # noqa: BLE001 (the records stay for the next start)
            log.exception("aborting leftover multipart uploads failed")

    async def _read_ahead_after_init(self) -> None:
        self._set_read_ahead("fuse_read_ahead", self.cache.settings.fuse_read_ahead)

    def _set_read_ahead(self, name: str, value: Any) -> None:
        """Set the kernel's read-ahead for the mount (its backing device's
        read_ahead_kb in sysfs; root only). Found through mountinfo, not a
        stat of the mount point, which would ask this very process."""
        if name != "fuse_read_ahead" or not self._mounted:
            return
        if not value and self._kernel_read_ahead is None:
            return  # 0 from the start: the kernel's own value, never touched
        try:
            device = mount_device(self.mountpoint)
            if device is None:
                raise OSError(f"{self.mountpoint} not in /proc/self/mountinfo")
            path = f"/sys/class/bdi/{device}/read_ahead_kb"
            if self._kernel_read_ahead is None:
                with open(path) as f:
                    self._kernel_read_ahead = int(f.read())
            # 0 (a SET at run time) puts the kernel's own value back
            kib = max(4, value >> 10) if value else self._kernel_read_ahead
            with open(path, "w") as f:
                f.write(str(kib))
        except (OSError, ValueError) as exc:
            log.info("kernel read-ahead of %s left as it is (cannot set it: %s)",
                     self.mountpoint, getattr(exc, "strerror", None) or exc)
            return
        log.info("kernel read-ahead of %s: %d KiB", self.mountpoint, kib)

    def _unmount(self) -> None:
        if self._mounted:
            self._mounted = False
            try:
                pyfuse3.close(unmount=True)
                log.info("FUSE view unmounted from %s", self.mountpoint)
            except Exception:
                log.exception("unmounting %s failed", self.mountpoint)

    async def abort_writes(self) -> None:
        """At shutdown, before S3 requests are cut off: nothing half-written is uploaded."""
        if self.ops is not None:
            with trio.move_on_after(30):
                await self.ops.writes.abort_all()

    async def stop(self) -> None:
        if self._mounted:
            pyfuse3.terminate()

    def status_lines(self) -> list[tuple[str, Any]]:
        return self.ops.status_lines() if self.ops else []


def mount_device(mountpoint: str) -> str | None:
    """'major:minor' of the s3pool mount at *mountpoint*, from mountinfo."""
    # never a stat of the mount point itself: that would ask this very process
    parent, name = os.path.split(os.path.abspath(mountpoint).rstrip("/") or "/")
    wanted = os.path.join(os.path.realpath(parent), name)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # mount point (octal escapes for spaces and the like) and the type after " - "
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            kind = fields[fields.index("-") + 1] if "-" in fields else ""
            if point == wanted and kind.startswith("fuse"):
                found = fields[2]  # the last one mounted there is the one seen
    return found

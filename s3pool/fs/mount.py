"""Mounting and unmounting the FUSE view inside the daemon's trio run."""

from __future__ import annotations

import logging
from typing import Any

import pyfuse3
import trio

from ..cache import Cache
from ..errors import EXIT_MOUNT, StartupError
from .ops import S3PoolOperations

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

    def _spawn(self, fn: Any, *args: Any) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.ops = S3PoolOperations(self.cache, self.buckets, spawn=self._spawn)
        options = set(pyfuse3.default_options)
        options |= {"fsname=s3pool", "subtype=s3pool", "ro"}
        if self.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(self.ops, self.mountpoint, options)
        except RuntimeError as exc:
            raise StartupError(f"cannot mount FUSE at {self.mountpoint}: {exc}", EXIT_MOUNT) from exc
        self._mounted = True
        log.info("FUSE view mounted at %s", self.mountpoint)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await pyfuse3.main(min_tasks=4, max_tasks=64)
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._unmount()

    def _unmount(self) -> None:
        if self._mounted:
            self._mounted = False
            try:
                pyfuse3.close(unmount=True)
                log.info("FUSE view unmounted from %s", self.mountpoint)
            except Exception:
                log.exception("unmounting %s failed", self.mountpoint)

    async def stop(self) -> None:
        if self._mounted:
            pyfuse3.terminate()

    def status_lines(self) -> list[tuple[str, Any]]:
        return self.ops.status_lines() if self.ops else []

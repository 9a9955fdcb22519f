"""The crash checkpoint: objects are installed without an fsync each.

s3pool's crash promise is about the process and the machine. A SIGKILL of
the daemon loses nothing ``write()`` returned for (the bytes are in the
kernel's page cache), and a download is renamed into ``data/`` only once
every byte of it was written and checked, so a killed daemon never leaves
a half file that is served. Only a power loss or a kernel crash can lose
written bytes, and against those one ``syncfs`` of the cache filesystem
every ``checkpoint_interval`` seconds (when something was installed)
stands in for two fsyncs per object.

``state/checkpoint`` holds the boot id of the machine and the time the
last sync began. At start-up, if the boot id differs (the machine
rebooted since) the objects installed after that time may be torn: they
are dropped before anything is served, and fetched again when asked for.
The daemon syncs once more as it exits, so a clean stop then a reboot
drops nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import time
from typing import Any

import trio

from s3pool.store.files import replace_file
from s3pool.store.layout import Layout

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# file times come from the kernel's coarse clock, which may lag time.time()
CLOCK_SLACK = 1.0

_libc: Any = None


def boot_id() -> str:
    """This boot of the machine (S3POOL_BOOT_ID overrides it: tests fake a reboot)."""
    fake = os.environ.get("S3POOL_BOOT_ID")
    if fake:
        return fake
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def syncfs(path: str) -> None:
    """Flush the filesystem holding *path* (blocking); os.sync() where syncfs is missing."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if getattr(_libc, "syncfs", None) is None:
            os.sync()
        elif _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


class Checkpoint:
    """Syncs data/ now and then and remembers when, for the boot after a crash."""

    def __init__(self, layout: Layout, settings: Any) -> None:
        self.layout = layout
        self.settings = settings
        self.path = os.path.join(layout.state_dir, "checkpoint")
        self.boot_id = boot_id()
        self.dirty = False
        self.syncs = 0
        self.last_sync = 0.0  # wall clock when the last sync began
        self.limiter = trio.CapacityLimiter(1)

    def suspect_after(self) -> float | None:
        """At start-up: objects installed after this time may be torn (the
        machine went down since the last checkpoint); None: all are sound."""
        try:
            with open(self.path) as f:
                state = json.load(f)
            previous_boot, synced = str(state["boot_id"]), float(state["time"])
        except FileNotFoundError:
            return None  # first start: earlier versions synced every object
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is unreadable: treating every object as unchecked", self.path)
            return 0.0
        if previous_boot == self.boot_id:
            return None  # the process stopped, the machine did not: the page cache held
        return synced - CLOCK_SLACK

    def installed(self) -> None:
        """Something was installed unsynced."""
        self.dirty = True

    def sync(self) -> None:
        """Blocking: sync the cache filesystem, then record the checkpoint."""
        self.dirty = False
        began = time.time()
        syncfs(self.layout.data_dir)
        record = json.dumps({"boot_id": self.boot_id, "time": began}) + "\n"
        replace_file(self.layout.tmp_dir, "checkpoint", self.path, record.encode())
        self.last_sync = began
        self.syncs += 1

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background: a sync every checkpoint_interval seconds when something changed."""
        await trio.to_thread.run_sync(self.sync, limiter=self.limiter)
        task_status.started()
        while True:
            await trio.sleep(max(0.05, self.settings.checkpoint_interval))
            if not self.dirty:
                continue
            try:
                await trio.to_thread.run_sync(self.sync, limiter=self.limiter)
            except OSError as exc:
                self.dirty = True
                log.warning("checkpoint sync of %s failed: %s; retrying", self.layout.data_dir,
                            exc)

    def status_lines(self) -> list[tuple[str, Any]]:
        age = round(time.time() - self.last_sync, 1) if self.last_sync else "-"
        return [("checkpoints", self.syncs), ("checkpoint_age", age)]

"""Bytes on their way from S3: the progress of each download and its stall deadline.

A :class:`Transfer` is the byte counter of one download. The worker
threads that copy a body to disk add to it after each chunk, and the same
counter drives three things: STATUS (one ``download`` line per transfer in
flight), the INFO line logged when a download finishes, and the stall
deadline (a download that takes longer than ``download_stall_timeout``
seconds to receive ``download_stall_bytes`` bytes fails, so a trickling S3
cannot hold a download slot forever). A worker thread cannot be
cancelled, so it calls :meth:`Transfer.check` between chunks and gives up
itself; every socket read is bounded by botocore's read timeout.

What the bytes must hash to (a :class:`Digest`: a full-object
``x-amz-checksum-*`` or the ETag's MD5) is s3pool/s3/checksums.py's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from s3pool.client import format_download
from s3pool.errors import BackendError

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What a body's copy to disk tells and asks of its counter: a
    :class:`Transfer`, or a stand-in that passes part of it on (the shared
    tier's parts of a download keep their failures to themselves)."""

    @property
    def url(self) -> str: ...

    @property
    def done(self) -> int: ...

    def add(self, count: int) -> None: ...

    def check(self) -> None: ...

    def fail(self, message: str) -> None: ...

class Transfer:
    """The progress of one download; updated from worker threads."""

    def __init__(self, bucket: str, key: str, total: int, stall_timeout: float,
                 stall_bytes: int, stopping: threading.Event | None = None,
                 source: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket = bucket
        self.key = key
        self.total = total
        self.source = source
        self.done = 0
        self._clock = clock  # seconds, any thread (a test's trio MockClock)
        self.started = clock()
        self.stall_timeout = stall_timeout
        self.stall_bytes = max(1, stall_bytes)
        self.stopping = stopping
        self._lock = threading.Lock()
        # the stall clock: when the current run of stall_bytes bytes began
        self._run_started = self.started
        self._run_base = 0
        self._failed: str | None = None  # set when one part failed: the others stop too

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def elapsed(self) -> float:
        return self._clock() - self.started

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self.done - self._run_base >= self.stall_bytes:
                self._run_started = self._clock()
                self._run_base = self.done

    def resume(self) -> None:
        """The download starts fetching again after an idle spell (nobody wanted
        more bytes): the stall clock starts now."""
        with self._lock:
            self._run_started = self._clock()
            self._run_base = self.done

    def check(self) -> None:
        """Raise if the download must stop: shutdown, a failed sibling part, a stall."""
        if self.stopping is not None and self.stopping.is_set():
            raise BackendError("download abandoned: s3pool is shutting down")
        if self._failed is not None:
            raise BackendError(self._failed)
        if self.stall_timeout <= 0:
            return
        with self._lock:
            waited = self._clock() - self._run_started
            if waited <= self.stall_timeout:
                return
            got = self.done - self._run_base
            need = min(self.stall_bytes, self.total - self._run_base)
        if got < need:
            raise BackendError(
                f"download of {self.url} stalled: {got} bytes in the last {waited:.1f}s "
                f"(download_stall_bytes {self.stall_bytes} in download_stall_timeout "
                f"{self.stall_timeout:g}s), {self.done} of {self.total} bytes done"
            )

    def fail(self, message: str) -> None:
        """One part failed: the other parts of the same download stop at their next chunk."""
        if self._failed is None:
            self._failed = message

    def status_value(self) -> str:
        return format_download(self.bucket, self.key, self.done, self.total, self.elapsed())


class Transfers:
    """The downloads in flight, for STATUS; each one built with the current settings."""

    def __init__(self, settings: Any, stopping: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.stopping = stopping
        self.clock = clock
        self._active: dict[int, Transfer] = {}

    def begin(self, bucket: str, key: str, total: int, source: str = "") -> Transfer:
        transfer = Transfer(bucket, key, total, self.settings.download_stall_timeout,
                            self.settings.download_stall_bytes, self.stopping, source,
                            self.clock)
        self._active[id(transfer)] = transfer
        return transfer

    def end(self, transfer: Transfer) -> None:
        self._active.pop(id(transfer), None)

    def __len__(self) -> int:
        return len(self._active)

    def status_lines(self) -> list[tuple[str, str]]:
        return [("download", t.status_value())
                for t in sorted(self._active.values(), key=lambda t: t.started)]


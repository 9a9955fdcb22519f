"""A progress bar for long pulls, drawn on a terminal's stderr.

While a pull is outstanding, :class:`ProgressReporter` polls STATUS on a
second connection; the daemon lists each download in flight as
``download s3://BUCKET/KEY DONE TOTAL ELAPSED``. :class:`PullProgress`
turns those polls, and the objects the pull has completed, into one line:
objects done of total, bytes, rate. Nothing is drawn in the first second
(most pulls are cache hits), nothing when stderr is not a terminal, and
never anything on stdout, which carries the paths.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TextIO

from s3pool.client import Download

RATE_WINDOW = 5.0  # seconds of samples the rate is averaged over
DEFAULT_WIDTH = 80  # columns when the terminal reports none
UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'; below 1 KiB the exact count."""
    value = float(count)
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """3723 -> '1h 02m 03s'; under a minute: '12.3s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


class PullProgress:
    """What a pull of *keys* from *bucket* has done, from STATUS polls and completions."""

    def __init__(self, bucket: str, keys: Iterable[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket = bucket
        self.wanted = set(keys)
        self.total_objects = len(self.wanted)
        self.objects_done = 0
        self.clock = clock
        self.started = clock()
        self.in_flight: dict[str, Download] = {}
        self.finished_bytes = 0  # bytes of downloads we saw in flight that have ended
        # downloads that ended whose PULL reply has not come yet: each counts
        # as a whole object meanwhile, or the bar would fall back between the two
        self.ended_unreplied = 0
        self.samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self.lock = threading.Lock()

    def completed(self, count: int) -> None:
        """*count* more objects are pulled (called by the pulling threads)."""
        with self.lock:
            self.objects_done = min(self.total_objects, self.objects_done + count)
            self.ended_unreplied = max(0, self.ended_unreplied - count)

    def update(self, downloads: Iterable[Download]) -> None:
        """One poll of STATUS: the downloads in flight on the daemon (anyone's)."""
        current = {d.key: d for d in downloads
                   if d.bucket == self.bucket and d.key in self.wanted}
        with self.lock:
            for key, previous in self.in_flight.items():
                if key not in current:
                    self.finished_bytes += previous.total
                    self.ended_unreplied += 1
            self.in_flight = current
            now = self.clock()
            self.samples.append((now, self._bytes_done()))
            while len(self.samples) > 2 and self.samples[1][0] < now - RATE_WINDOW:
                self.samples.popleft()

    def _bytes_done(self) -> int:
        return self.finished_bytes + sum(d.done for d in self.in_flight.values())

    @property
    def bytes_done(self) -> int:
        with self.lock:
            return self._bytes_done()

    @property
    def bytes_known(self) -> int:
        """Total bytes of the downloads seen so far (cache hits never show up)."""
        with self.lock:
            return self.finished_bytes + sum(d.total for d in self.in_flight.values())

    def rate(self) -> float:
        """Bytes a second over the last few seconds."""
        with self.lock:
            (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def fraction(self) -> float:
        with self.lock:
            partial = sum(d.done / d.total for d in self.in_flight.values() if d.total > 0)
            done = self.objects_done + self.ended_unreplied
        if not self.total_objects:
            return 1.0
        return min(1.0, (done + partial) / self.total_objects)

    def render(self, width: int = 80) -> str:
        """One line, at most *width* characters."""
        fraction = self.fraction()
        done, known = self.bytes_done, self.bytes_known
        text = f" {fraction * 100:3.0f}%  {self.objects_done}/{self.total_objects} objects"
        if known:  # a daemon that lists no downloads in STATUS gives objects only
            size = human_bytes(done) + (f" / {human_bytes(known)}" if known > done else "")
            text += f"  {size}  {human_bytes(self.rate())}/s"
        bar_width = max(0, min(30, width - len(text) - 3))
        if bar_width >= 5:
            filled = int(fraction * bar_width)
            text = "[" + "#" * filled + "." * (bar_width - filled) + "]" + text
        return text[:max(1, width - 1)]

    def summary(self) -> str:
        elapsed = self.clock() - self.started
        done = self.bytes_done
        text = f"{self.objects_done}/{self.total_objects} objects"
        if done:
            text += f", {human_bytes(done)} downloaded"
        text += f" in {human_duration(elapsed)}"
        if done and elapsed > 0:
            text += f" ({human_bytes(done / elapsed)}/s)"
        return text


class ProgressReporter:
    """Polls STATUS in a thread and redraws the bar on *stream* (a terminal)."""

    def __init__(self, progress: PullProgress, poll: Callable[[], list[Download]],
                 stream: TextIO, delay: float = 1.0, interval: float = 0.3) -> None:
        self.progress = progress
        self.poll = poll
        self.stream = stream
        self.delay = delay
        self.interval = interval
        self.stop = threading.Event()
        self.shown = False
        self.thread = threading.Thread(target=self._run, name="s3pool-progress", daemon=True)

    def __enter__(self) -> ProgressReporter:
        self.thread.start()
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.stop.set()
        self.thread.join()
        if self.shown:
            if kind is None:
                self._poll()  # the downloads that ended since the last poll count whole
                self._draw(self.progress.summary() + "\n")
            else:
                self._draw("")  # the error message gets a clean line

    def _width(self) -> int:
        """The terminal's width; 80 when it has none (a pty nobody sized says 0)."""
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return DEFAULT_WIDTH
        return columns if columns > 0 else DEFAULT_WIDTH

    def _draw(self, text: str) -> None:
        try:
            self.stream.write("\r\x1b[K" + text)  # back to the line's start, clear it, draw
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _poll(self) -> None:
        try:
            self.progress.update(self.poll())
        except Exception:  # noqa: BLE001 - a failed poll only leaves the bar as it was
            pass

    def _run(self) -> None:
        if self.stop.wait(self.delay):
            return  # done within the first second: no bar at all
        while True:
            self._poll()
            if self.stop.is_set():
                return
            self.shown = True
            self._draw(self.progress.render(self._width()))
            if self.stop.wait(self.interval):
                return

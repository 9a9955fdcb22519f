"""Logging: HOMEDIR/log/s3pool.log (rotated) plus stderr, and the request log.

The request log, HOMEDIR/log/requests.log, gets one line per control
request: time, request, status, milliseconds. It is written in batches (at
most a second late, and at shutdown) because a logging call per request
costs a tenth of a cached PULL.

Log files are created 0640 (less if the umask says so) and older ones are
narrowed to that at start: at verbosity 3 they hold signed S3 request
headers, and at any level they show who asked for what.

Every logged value passes :func:`escape_controls`: keys, paths, errors and
peers come from clients and from S3, and a newline in one would write a
line that reads like another record, a terminal escape would reach
whoever reads the log with ``cat``. One record stays one line (a
traceback's lines are indented, so none reads as a record).
"""

from __future__ import annotations

import io
import logging
import logging.handlers
import os
import stat
import sys
import time
from typing import cast

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}
LOG_FILE_MODE = 0o640


def escape_controls(text: str) -> str:
    """*text* with every character str.isprintable() refuses written as a
    Python escape: control characters (newline, CR, ESC, DEL, C1), line and
    paragraph separators, format characters such as bidi overrides, lone
    surrogates, unassigned code points; a space stays."""
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class EscapingFormatter(logging.Formatter):
    """A Formatter whose records are one line each (see escape_controls); an
    exception's traceback follows on lines indented by two spaces."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for extra in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if extra:
                text += "".join("\n  " + escape_controls(line) for line in extra.split("\n"))
        return text


def private_opener(path: str, flags: int) -> int:
    """An ``open(..., opener=)`` that creates the file LOG_FILE_MODE and
    narrows an existing one to it."""
    fd = os.open(path, flags | os.O_CLOEXEC, LOG_FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & ~LOG_FILE_MODE:
            os.fchmod(fd, mode & LOG_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def restrict_log_files(log_dir: str) -> None:
    """Narrow every file in *log_dir* (logs of older versions, rotations) to LOG_FILE_MODE."""
    with os.scandir(log_dir) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                if mode & ~LOG_FILE_MODE:
                    os.chmod(entry.path, mode & LOG_FILE_MODE)
            except OSError as exc:
                logging.getLogger(__name__).warning("cannot restrict %s: %s", entry.path, exc)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose files (the first and each after a rollover)
    are not world-readable."""

    def _open(self) -> io.TextIOWrapper:
        # self.mode is a text mode ("a"): open() gives a TextIOWrapper, as the base class's
        return cast(io.TextIOWrapper,
                    open(self.baseFilename, self.mode, encoding=self.encoding,
                         errors=self.errors, opener=private_opener))

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        """The file's size alone decides: the library's version stats the
        path twice and formats every record a second time (a download's log
        line cost more than the rest of a small miss's bookkeeping)."""
        if self.stream is None:
            self.stream = self._open()
        return self.maxBytes > 0 and self.stream.tell() >= self.maxBytes


def setup_logging(log_dir: str | None, verbose: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = EscapingFormatter(LOG_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
        restrict_log_files(log_dir)
        rotating = PrivateRotatingFileHandler(
            os.path.join(log_dir, "s3pool.log"), maxBytes=16 << 20, backupCount=5
        )
        rotating.setFormatter(formatter)
        root.addHandler(rotating)
    apply_verbosity(verbose)


def apply_verbosity(verbose: int) -> None:
    """Set levels for a verbosity 0..3 (SET verbose calls this at run time)."""
    logging.getLogger().setLevel(LEVELS.get(verbose, logging.DEBUG))
    # the libraries' debug output only at the highest level
    quiet = logging.DEBUG if verbose >= 3 else logging.WARNING
    for name in ("botocore", "boto3", "urllib3", "s3transfer", "pyfuse3"):
        logging.getLogger(name).setLevel(quiet)


ROTATE_BYTES = 16 << 20
ROTATE_KEEP = 5


class RequestLog:
    """Buffered, size-rotated log of control requests; one line per request,
    whatever the request held (see escape_controls)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.enabled = path is not None
        self._lines: list[str] = []
        self._stamp_second = -1
        self._stamp = ""

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        self._lines.append(f"{self._stamp},{int(now % 1 * 1000):03d} {escape_controls(text)}\n")
        if len(self._lines) >= 512:
            self.flush()

    def flush(self) -> None:
        if not self._lines or self.path is None:
            return
        lines, self._lines = self._lines, []
        try:
            with open(self.path, "a", encoding="utf-8", errors="replace",
                      opener=private_opener) as f:
                f.writelines(lines)
                size = f.tell()
            if size > ROTATE_BYTES:
                self._rotate()
        except OSError as exc:
            logging.getLogger(__name__).warning("cannot write %s: %s", self.path, exc)

    def _rotate(self) -> None:
        assert self.path is not None
        for i in range(ROTATE_KEEP - 1, 0, -1):
            older = f"{self.path}.{i}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")

"""The daemon log's rotation (s3pool/logs.py): by size, files private."""

import logging
import os
import stat

import pytest

from s3pool.logs import PrivateRotatingFileHandler

pytestmark = pytest.mark.unit


def test_the_log_rotates_by_size_and_stays_private(tmp_path):
    path = tmp_path / "s3pool.log"
    handler = PrivateRotatingFileHandler(str(path), maxBytes=4096, backupCount=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test-rotation")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(300):
            logger.warning("line %04d %s", i, "x" * 40)
    finally:
        logger.removeHandler(handler)
        handler.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["s3pool.log", "s3pool.log.1", "s3pool.log.2"]
    for name in names:
        size = os.path.getsize(tmp_path / name)
        assert size <= 4096 + 60, (name, size)  # at most one line past the mark
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) & 0o007 == 0
    # nothing lost at a rollover: the newest lines, in order, across the files
    text = "".join((tmp_path / n).read_text() for n in ["s3pool.log.2", "s3pool.log.1",
                                                        "s3pool.log"])
    numbers = [int(line.split()[1]) for line in text.splitlines()]
    assert numbers == list(range(numbers[0], 300))


def test_a_logged_value_cannot_start_a_line_or_reach_the_terminal():
    from s3pool.logs import LOG_FORMAT, EscapingFormatter, escape_controls

    assert escape_controls("plain key/with spaces é") == "plain key/with spaces é"
    assert escape_controls("a\nb\r\t\x1b[31m\x7f\x85\u2028\u202e\U000e0001") == (
        "a\\nb\\r\\t\\x1b[31m\\x7f\\x85\\u2028\\u202e\\U000e0001")
    formatter = EscapingFormatter(LOG_FORMAT)
    forged = "k\n2026-12-06 14:00:00,000 uid 0 PUSH /etc/shadow -> OK\x1b[2J"
    record = logging.LogRecord("s3pool.cache", logging.WARNING, __file__, 1,
                               "cannot fetch %s", (forged,), None)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line and line.endswith("-> OK\\x1b[2J")
    try:
        raise ValueError(forged)
    except ValueError:
        import sys
        record = logging.LogRecord("s3pool.x", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first.endswith("failed") and rest
    # the traceback follows, every line indented: none reads as a record
    assert all(line.startswith("  ") for line in rest), text
    assert "\x1b" not in text

"""The daemon log's rotation (s3pool/logs.py): by size, files private."""

import logging
import os
import stat

from s3pool.logs import PrivateRotatingFileHandler


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

"""Logging: a rotated file under HOMEDIR/log/ plus stderr (systemd keeps it)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


def setup_logging(log_dir: str | None, verbose: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter = logging.Formatter(LOG_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    if log_dir is not None:
        os.makedirs(log_dir, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
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

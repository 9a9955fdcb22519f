"""The ``download`` STATUS line has one owner of its format (client.py's
format_download / parse_download): the daemon writes it with one, and
every reader (s3poolctl's status table and progress bar through the client,
the Prometheus exporter) reads it with the other, so they agree on every
line."""

from __future__ import annotations

import threading

import pytest

from s3pool.client import Download, parse_download
from s3pool.control.metrics import PREFIX, StatusCollector
from s3pool.s3.progress import Transfer, Transfers

pytestmark = pytest.mark.unit


def transfer(key: str, total: int, done: int) -> Transfer:
    now = [100.0]
    t = Transfer("bkt", key, total, 30.0, 1, threading.Event(), clock=lambda: now[0])
    t.add(done)
    now[0] = 102.25
    return t


def exported(values: list[str]) -> tuple[float, float]:
    """(bytes done, bytes expected) the exporter reports for these download lines."""
    collector = StatusCollector()
    collector.lines = [("download", v) for v in values]
    found = {m.name: m.samples[0].value for m in collector.collect()
             if m.name.startswith(PREFIX + "download_bytes")}
    return found[PREFIX + "download_bytes_done"], found[PREFIX + "download_bytes_expected"]


@pytest.mark.parametrize("key", ["plain.bin", "dir/with space.bin", "ends in 1 2 3", "ü/ä"])
def test_what_the_daemon_writes_reads_back_whole(key):
    t = transfer(key, 4096, 1024)
    assert parse_download(t.status_value()) == Download("bkt", key, 1024, 4096, 2.2)


def test_transfers_list_each_download_in_the_shared_format():
    class Settings:
        download_stall_timeout = 30.0
        download_stall_bytes = 1

    transfers = Transfers(Settings())
    transfers.begin("bkt", "a b", 10)
    transfers.begin("bkt", "c", 20).add(5)
    lines = transfers.status_lines()
    assert [name for name, _ in lines] == ["download", "download"]
    parsed = [parse_download(value) for _, value in lines]
    assert [(d.key, d.done, d.total) for d in parsed if d] == [("a b", 0, 10), ("c", 5, 20)]


def test_the_exporter_and_the_client_agree_on_every_line():
    written = [transfer("x y", 300, 100).status_value(), transfer("z", 50, 50).status_value()]
    others = ["s3://bkt/k 1 2", "/local/path 7 8 9.0", "s3://bkt/k x 2 3.0",
              "s3://bkt/k 1000 2000 soon", "s3://bkt/k 1 2 3.0 extra", ""]
    for values in (written, others, written + others):
        parsed = [d for d in map(parse_download, values) if d is not None]
        assert exported(values) == (sum(d.done for d in parsed), sum(d.total for d in parsed))
    assert exported(written) == (150, 350)

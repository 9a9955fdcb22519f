"""Download (s3pool/download/download.py) under trio's fake clock.

A real Store in a tmp HOMEDIR, the registry of downloads in flight, and
tests/fakes.py's FakeBackend scripted per range through its hook: parts
that land out of order, a slow part, a body cut mid-way, downloads
stopped, a reader of a far part, the stall deadline, a digest mismatch.
Every check is on what a user of a Download sees (bytes read, the error
raised, what was installed, GETs per range), never on wall-clock time:
the delays are virtual (``autojump_clock``).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any

import pytest
import trio

from fakes import FakeBackend
from s3pool.download.download import Download, DownloadCancelled, DownloadDeps, Reader
from s3pool.download.registry import Downloads
from s3pool.errors import BackendError, DigestMismatch
from s3pool.s3.checksums import Verifications
from s3pool.s3.progress import Transfers
from s3pool.settings import Settings
from s3pool.store.layout import Layout
from s3pool.store.objects import CachedObject, Store

pytestmark = pytest.mark.unit

BUCKET = "bucket"
PART = 64 << 10  # download_part_size
CHUNK = 16 << 10  # bytes per fake socket read: four chunks a part


def payload(parts: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(parts * PART)


class Rig:
    """One Download's world: store, registry, counters, a scripted FakeBackend."""

    def __init__(self, home: str, clock: trio.testing.MockClock, concurrency: int = 4,
                 stall_timeout: float = 0, stall_bytes: int = PART) -> None:
        self.store = Store(Layout.create(home))
        self.settings = Settings(download_part_size=PART,
                                 download_part_concurrency=concurrency,
                                 download_stall_timeout=stall_timeout,
                                 download_stall_bytes=stall_bytes)
        self.backend = FakeBackend(buckets=(BUCKET,))
        self.backend.chunk = CHUNK
        self.backend.hook = self._hook
        # the transfers' stall clock is trio's fake one: a virtual minute is a minute
        self.transfers = Transfers(self.settings, self.backend.stopping,
                                   clock=clock.current_time)
        self.verifications = Verifications()
        self.registry = Downloads(2, self._install)
        self.deps = DownloadDeps(store=self.store, backend=self.backend, settings=self.settings,
                                 registry=self.registry, checks=self.verifications,
                                 transfers=self.transfers)
        self.installs: list[CachedObject] = []
        self.gates: dict[int, trio.Event] = {}  # offset -> a range/body read waits for it
        self.slow: dict[int, float] = {}  # part -> virtual seconds before each chunk
        self.requests: Counter[tuple[str, int]] = Counter()  # (kind, offset) of each GET/read

    async def _hook(self, kind: str, bucket: str, key: str | None, **info: Any) -> None:
        offset: Any = info.get("offset")  # given for the kinds below
        if kind in ("get_range", "read_body"):
            self.requests[(kind, offset)] += 1
            gate = self.gates.get(offset)
            if gate is not None:
                await gate.wait()
        elif kind == "chunk" and offset // PART in self.slow:
            await trio.sleep(self.slow[offset // PART])

    def ranges(self) -> dict[int, int]:
        """Ranged GETs per part index."""
        return {offset // PART: n for (kind, offset), n in self.requests.items()
                if kind == "get_range"}

    def body_parts(self) -> list[int]:
        """Parts the first GET's body carried (read on, part after part)."""
        return sorted(offset // PART for (kind, offset) in self.requests if kind == "read_body")

    def gate(self, part: int) -> trio.Event:
        return self.gates.setdefault(part * PART, trio.Event())

    async def _install(self, download: Download) -> CachedObject:
        obj = await self.store.install(download.bucket, download.key, download.tmp_path,
                                       download.meta)
        self.installs.append(obj)
        return obj

    async def start(self, nursery: trio.Nursery, key: str, data: bytes,
                    etag: str | None = None, first_part: int = 0) -> Download:
        """The cache's miss path in short: the GET, a temp file, the run."""
        self.backend.put(BUCKET, key, data, etag=etag)
        # streamed: read_up_to 0
        response = await self.backend.get_object(BUCKET, key, first_part=first_part)
        assert response is not None and response.data is None
        fd, tmp_path = self.store.new_temp("dl")
        transfer = self.transfers.begin(BUCKET, key, len(data), "test")
        download = Download(self.deps, BUCKET, key, response, fd, tmp_path, transfer, "test")
        self.registry.add(download)
        nursery.start_soon(download.run)
        return download

    async def opened(self, nursery: trio.Nursery, data: bytes) -> tuple[Download, Reader]:
        """A download of *data* started, and a reader of it (as an open() of the mount)."""
        download = await self.start(nursery, "k", data)
        return download, download.attach_reader()

    def close(self) -> None:
        self.store.access.close()


@pytest.fixture
def rig(tmp_path, autojump_clock):
    made = Rig(str(tmp_path / "home"), autojump_clock)
    yield made
    made.close()


@pytest.fixture
def stall_rig(tmp_path, autojump_clock):
    """A rig whose downloads must bring a part every 30 (virtual) seconds."""
    made = Rig(str(tmp_path / "home"), autojump_clock, stall_timeout=30, stall_bytes=PART)
    yield made
    made.close()


def assert_gone(rig: Rig, download: Download, reader: Reader | None = None) -> None:
    """A download that ended (its reader, if any, closed now): nothing left in
    flight or reserved, its temp file gone; if it failed, nothing installed."""
    if reader is not None:
        reader.close()
    assert download.done.is_set()
    if download.error is not None:
        assert rig.installs == [] and rig.store.lookup(BUCKET, download.key) is None
    assert rig.registry.get(BUCKET, download.key) is None
    assert len(rig.registry) == 0 and not rig.registry.busy()
    assert len(rig.transfers) == 0
    assert rig.store.reserved == 0
    assert not os.path.exists(download.tmp_path)


def pull_in(nursery: trio.Nursery, download: Download) -> list[CachedObject]:
    """A PULL of *download* in the background: the list gets the installed object."""
    installed: list[CachedObject] = []

    async def pull() -> None:
        installed.append(await download.wait_installed())

    nursery.start_soon(pull)
    return installed


# every test takes autojump_clock itself: pytest-trio runs a test under a clock
# only when the test function names it (the rig's stall clock is the same one)


async def until(condition: Any) -> None:
    """Wait (virtual time) for an observable condition."""
    with trio.fail_after(3600):
        while not condition():
            await trio.sleep(0.01)


async def test_parts_landing_out_of_order_are_read_and_installed_in_order(rig, autojump_clock):
    data = payload(4)
    for part in (0, 2, 3):  # the body (parts 0 and 1), ranges for 2 and 3
        rig.gate(part)
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data)
        installed = pull_in(nursery, download)
        reader = download.attach_reader()
        await until(lambda: rig.ranges() == {2: 1, 3: 1})  # both ranges asked, held
        rig.gate(3).set()  # the last part lands first...
        assert await reader.read(3 * PART + 5, 100) == data[3 * PART + 5:3 * PART + 105]
        assert not download.has(0, 1) and not download.has(2 * PART, 2 * PART + 1)
        rig.gate(2).set()  # ... then the third ...
        assert await reader.read(2 * PART, 10) == data[2 * PART:2 * PART + 10]
        assert not download.has(0, 1)
        rig.gate(0).set()  # ... then the body brings parts 0 and 1
        assert await reader.read(0, 10) == data[:10]
    assert await reader.read(PART - 5, 10) == data[PART - 5:PART + 5]
    assert installed and open(installed[0].path, "rb").read() == data
    assert rig.installs == installed
    assert rig.ranges() == {2: 1, 3: 1}  # each part fetched once, 0 and 1 by the body
    assert rig.body_parts() == [0, 1]
    assert rig.backend.calls["get_object"] == 1
    assert rig.verifications.failures == 0
    assert_gone(rig, download, reader)


async def test_a_slow_part_holds_up_only_the_reads_of_its_bytes(rig, autojump_clock):
    data = payload(4)
    rig.slow[2] = 30.0  # part 2 trickles: two virtual minutes for its four chunks
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data)
        installed = pull_in(nursery, download)
        reader = download.attach_reader()
        assert await reader.read(3 * PART, PART) == data[3 * PART:]  # past the slow part
        assert await reader.read(0, 2 * PART) == data[:2 * PART]
        assert download.progress[2] < PART  # still on its way
        assert not installed
        assert await reader.read(2 * PART, PART) == data[2 * PART:3 * PART]  # waits for it
    assert open(installed[0].path, "rb").read() == data
    ranges = rig.ranges()
    assert ranges[2] == 1 and set(ranges.values()) == {1}  # nothing asked twice
    assert_gone(rig, download, reader)


async def test_a_body_cut_midway_fails_every_waiter_and_keeps_what_landed(rig, autojump_clock):
    data = payload(4)
    cut = PART + PART // 2  # S3's connection breaks in part 1 (the body's)
    rig.backend.cut(BUCKET, "k", cut)
    rig.gate(2)  # parts 2 and 3 wait until the body has broken
    rig.gate(3)
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data)
        download.want_everything()  # a PULL: the body carries parts 0 and 1
        reader = download.attach_reader()
        assert await reader.read(0, 100) == data[:100]
        with pytest.raises(BackendError, match="cut at byte"):
            await download.wait_installed()
        rig.gate(2).set()
        rig.gate(3).set()
        # bytes that landed before the cut stay readable; past it: an error, no hang
        assert await reader.read(PART - 10, 10) == data[PART - 10:PART]
        with pytest.raises(BackendError):
            await reader.read(cut - 1, 10)
        with pytest.raises(BackendError):
            await reader.read(3 * PART, 10)
    assert rig.body_parts() == [0, 1] and 1 not in rig.ranges()  # the cut was the body's
    assert_gone(rig, download, reader)


async def test_the_last_reader_leaving_stops_a_download_far_from_done(rig, autojump_clock):
    data = payload(8)
    async with trio.open_nursery() as nursery:
        download, reader = await rig.opened(nursery, data)
        assert await reader.read(0, 10) == data[:10]  # `head -c 10`: part 0 alone
        reader.close()
        await download.done.wait()
    assert isinstance(download.error, DownloadCancelled)
    assert rig.ranges() == {} and rig.body_parts() == [0]  # nothing fetched beyond part 0
    assert_gone(rig, download)


async def test_the_last_reader_leaving_a_download_nearly_done_lets_it_finish(rig, autojump_clock):
    # the positive control of the test above: two parts or fewer missing
    data = payload(3)
    async with trio.open_nursery() as nursery:
        download, reader = await rig.opened(nursery, data)
        assert await reader.read(0, 10) == data[:10]
        await until(lambda: download.landed_bytes == PART)  # two parts to go
        reader.close()
        await download.done.wait()
    assert download.error is None
    assert [open(obj.path, "rb").read() for obj in rig.installs] == [data]
    assert_gone(rig, download)


async def test_a_download_stopped_midway_cancels_its_parts_and_wakes_its_reads(rig, autojump_clock):
    data = payload(8)
    rig.gate(6)  # the ranged GET a far read waits for never answers
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        download, reader = await rig.opened(nursery, data)
        assert await reader.read(0, 10) == data[:10]

        async def far_read() -> None:
            try:
                await reader.read(6 * PART, 10)
            except BackendError as exc:
                errors.append(exc)

        nursery.start_soon(far_read)
        await until(lambda: rig.ranges() == {6: 1} and rig.registry.waiting_reads == 1)
        rig.registry.stop_all("download abandoned: s3pool is shutting down")
        await download.done.wait()
    assert [str(e) for e in errors] == ["download abandoned: s3pool is shutting down"]
    assert rig.backend.count("get_range") == 1  # the one in flight, cancelled; none after
    assert rig.registry.running == 0 and rig.registry.waiting_reads == 0
    assert_gone(rig, download, reader)


async def test_a_reader_of_a_far_part_costs_one_ranged_get_and_no_body(rig, autojump_clock):
    data = payload(8)
    async with trio.open_nursery() as nursery:
        download, reader = await rig.opened(nursery, data)
        footer = len(data) - 64 * 1024 + 100  # a Parquet footer, in the last part
        assert await reader.read(footer, 4096) == data[footer:footer + 4096]
        await until(lambda: download.stream_done)
        assert rig.ranges() == {7: 1}
        assert rig.body_parts() == []
        assert download.response.body.closed and download.response.body.pos == 0
        # then the start of the file: part 0 by a ranged GET now, once
        assert await reader.read(0, 100) == data[:100]
        assert rig.ranges() == {7: 1, 0: 1}
        reader.close()
        await download.done.wait()
    assert isinstance(download.error, DownloadCancelled)
    assert_gone(rig, download)


async def test_a_part_that_stalls_past_the_deadline_fails_the_download(stall_rig, autojump_clock):
    rig = stall_rig
    data = payload(4)
    rig.slow[2] = 100.0  # a chunk every 100 virtual seconds: under PART in 30s
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data)
        with pytest.raises(BackendError, match="stalled"):
            await download.wait_installed()
    assert rig.ranges() == {2: 1, 3: 1}
    assert_gone(rig, download)


async def test_a_slow_part_within_the_deadline_is_not_a_stall(stall_rig, autojump_clock):
    # the positive control of the test above: the same trickle, fast enough
    rig = stall_rig
    data = payload(4)
    rig.slow[2] = 5.0  # a part in 20 virtual seconds
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data)
        obj = await download.wait_installed()
    assert open(obj.path, "rb").read() == data
    assert trio.current_time() >= 20  # the trickle did take its (virtual) time
    assert_gone(rig, download)


async def test_bytes_that_fail_the_digest_are_never_installed_nor_read_whole(rig, autojump_clock):
    data = payload(4)
    other = '"' + "0" * 32 + '"'  # an MD5 ETag the bytes do not have
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data, etag=other)
        reader = download.attach_reader()
        for offset in range(0, 3 * PART, PART):  # a `cat`: every read but the last ...
            assert await reader.read(offset, PART) == data[offset:offset + PART]
        with pytest.raises(DigestMismatch):  # ... which would complete it: EIO
            await reader.read(3 * PART, PART)
        with pytest.raises(DigestMismatch):  # a PULL too
            await download.wait_installed()
        with pytest.raises(DigestMismatch):  # and no byte of it any more
            await reader.read(0, 10)
    assert rig.verifications.failures == 1
    assert_gone(rig, download, reader)


async def test_a_reader_of_an_installed_download_reads_its_file(rig, autojump_clock):
    data = payload(2)
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data)
        obj = await download.wait_installed()
    reader = Reader(None, os.open(obj.path, os.O_RDONLY), obj.meta)
    assert await reader.read(PART - 3, 6) == data[PART - 3:PART + 3]
    assert_gone(rig, download, reader)


async def test_a_body_of_the_first_part_only_is_read_to_its_end(rig, autojump_clock):
    # the first GET asked for part 0 alone (issue 22): the other parts come from
    # ranged GETs, and the body ends where S3 ended it, never closed midway
    data = payload(4)
    async with trio.open_nursery() as nursery:
        download = await rig.start(nursery, "k", data, first_part=PART)
        assert download.response.body_length == PART
        obj = await download.wait_installed()
    assert open(obj.path, "rb").read() == data
    assert rig.body_parts() == [0] and rig.ranges() == {1: 1, 2: 1, 3: 1}
    body = download.response.body
    assert body.closed and body.pos == len(body.data) == PART
    assert_gone(rig, download)

"""StagedUpload (s3pool/upload/staged.py) with a real Store in a temp HOMEDIR and a
fake S3 backend that records its calls; the end-to-end tests through a real
mount and moto are in test_mount_writes_e2e.py."""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from fakes import FakeBackend
from s3pool.cache import NoEviction
from s3pool.errors import BackendError, NoSpace, NoSuchBucket
from s3pool.settings import Settings
from s3pool.store.layout import Layout
from s3pool.store.objects import Store
from s3pool.upload.context import UploadContext
from s3pool.upload.push import push_file
from s3pool.upload.staged import (
    NotSequential,
    StagedUpload,
    UploadFailed,
    UploadRecords,
    abort_leftovers,
)

pytestmark = pytest.mark.unit


def bkt_cache(tmp_path):
    """A FakeBackend with the bucket bkt, and a cache over it."""
    backend = FakeBackend(buckets=("bkt",))
    return backend, make_cache(tmp_path, backend)


def staged(cache, spawn) -> StagedUpload:
    """A file being written to bkt/k, uploaded in parts of 100 bytes."""
    return StagedUpload(cache.ctx, "bkt", "k", 100, spawn)


def make_cache(tmp_path, backend):
    """A real Store in a temp HOMEDIR and the UploadContext uploads are given."""
    layout = Layout.create(str(tmp_path / "home"))
    store = Store(layout)
    added = []

    async def add_key(bucket, entry):
        added.append(entry)

    ctx = UploadContext(
        store=store, backend=backend, settings=Settings(), room=NoEviction(),
        counters=SimpleNamespace(pushes=0, bytes_uploaded=0), add_key=add_key,
        supersede=lambda b, k: None, forget=lambda b, k: None, mark_fresh=lambda b, k: None,
        forget_missing=lambda b, k: None, check_conflict=lambda b, k: None,
        use_bucket=lambda b: None, installed=lambda: None)
    return SimpleNamespace(ctx=ctx, store=store, layout=layout, added=added)


async def _run_with_nursery(fn):
    async with trio.open_nursery() as nursery:
        await fn(nursery.start_soon)


def test_parts_go_up_as_they_fill_and_the_object_is_installed(tmp_path):
    backend, cache = bkt_cache(tmp_path)
    data = bytes(range(256)) * 4  # 1024 bytes, parts of 100

    async def main(spawn):
        upload = staged(cache, spawn)
        for start in range(0, 1000, 50):
            await upload.write(start, data[start:start + 50])
        await trio.testing.wait_all_tasks_blocked()
        # ten full parts sent while the file is open; nothing of it is an object yet
        assert backend.parts_of(upload.upload_id) == list(range(1, 11))
        assert backend.data("bkt", "k") is None
        assert not os.path.exists(cache.layout.object_path("bkt", "k"))
        await upload.write(1000, data[1000:])
        meta = await upload.commit()
        assert backend.data("bkt", "k") == data
        etag = backend.objects[("bkt", "k")].etag
        assert etag.endswith('-11"')  # eleven parts, S3's multipart ETag
        assert meta["ETag"] == etag and meta["ContentLength"] == 1024
        with open(cache.layout.object_path("bkt", "k"), "rb") as f:
            assert f.read() == data
        assert cache.store.lookup("bkt", "k").etag == etag
        assert [e.key for e in cache.added] == ["k"]
        assert cache.store.reserved == 0
        assert not os.listdir(UploadRecords(cache.layout).dir)
        assert cache.ctx.counters.pushes == 1 and cache.ctx.counters.bytes_uploaded == 1024

    trio.run(_run_with_nursery, main)


def test_a_write_elsewhere_than_the_end_is_refused(tmp_path):
    backend, cache = bkt_cache(tmp_path)

    async def main(spawn):
        upload = staged(cache, spawn)
        await upload.write(0, b"abc")
        with pytest.raises(NotSequential):
            await upload.write(1, b"x")
        with pytest.raises(NotSequential):
            await upload.write(10, b"x")
        await upload.write(3, b"d")
        await upload.commit()

    trio.run(_run_with_nursery, main)
    assert backend.data("bkt", "k") == b"abcd"


def test_two_closes_at_once_upload_once_and_later_writes_fail(tmp_path):
    backend, cache = bkt_cache(tmp_path)

    async def main(spawn):
        upload = staged(cache, spawn)
        await upload.write(0, b"hello")
        gate = backend.gate("put_object")  # the PUT waits until both commits are in
        results = []

        async def commit():
            results.append(await upload.commit())

        async def late_write():
            with pytest.raises(UploadFailed):
                await upload.write(5, b" more")  # waits for the commit, then refused
            results.append("refused")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(commit)
            nursery.start_soon(commit)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(late_write)
            await trio.testing.wait_all_tasks_blocked()
            assert gate.waiting == 1
            gate.open()
        assert results.pop() == "refused"
        assert [kind for kind, _, _ in backend.log] == ["put_object"]
        assert results[0] == results[1]
        assert results[0]["ETag"] == backend.objects[("bkt", "k")].etag

    async def outer(spawn):
        with trio.fail_after(10):
            await main(spawn)

    trio.run(_run_with_nursery, outer)
    assert backend.data("bkt", "k") == b"hello"


def test_a_failed_part_aborts_and_nothing_is_left(tmp_path):
    backend = FakeBackend(buckets=("bkt",))

    async def fail_part_2(kind, bucket, key, **info):
        if kind == "upload_part" and info["number"] == 2:
            raise BackendError("injected part failure")

    backend.hook = fail_part_2
    cache = make_cache(tmp_path, backend)

    async def main(spawn):
        upload = staged(cache, spawn)
        await upload.write(0, b"x" * 350)
        with pytest.raises(UploadFailed):
            await upload.commit()
        assert backend.data("bkt", "k") is None
        assert backend.uploads_in_progress() == []  # aborted
        assert backend.calls["abort_multipart"] == 1
        assert backend.calls["complete_multipart"] == 0
        assert not os.listdir(cache.layout.tmp_dir)
        assert cache.store.reserved == 0
        assert not os.listdir(UploadRecords(cache.layout).dir)

    trio.run(_run_with_nursery, main)


def test_leftover_uploads_are_aborted_only_if_recorded(tmp_path):
    backend, cache = bkt_cache(tmp_path)
    records = UploadRecords(cache.layout)

    async def main():
        ours = await backend.create_multipart_upload("bkt", "k")
        others = await backend.create_multipart_upload("bkt", "k")  # another program's
        records.write("r1", {"bucket": "bkt", "key": "k", "started": 1.0, "upload_id": ours})
        with open(os.path.join(records.dir, "torn.json.tmp"), "w") as f:
            f.write("{")
        assert await abort_leftovers(cache.ctx) == 1
        assert backend.uploads_in_progress() == [others]

    trio.run(main)
    assert not os.listdir(records.dir)


class Full:
    """Room for nothing: the evictor's answer when the cache cannot take the bytes."""

    async def make_room(self, nbytes):
        raise NoSpace(f"no room for {nbytes} bytes")


def test_push_uploads_a_copy_and_installs_it(tmp_path):
    backend, cache = bkt_cache(tmp_path)
    local = tmp_path / "local.bin"
    local.write_bytes(b"pushed bytes")

    async def main():
        path = await push_file(cache.ctx, "bkt", "dir/k", str(local))
        assert path == cache.layout.object_path("bkt", "dir/k")
        with open(path, "rb") as f:
            assert f.read() == b"pushed bytes"

    trio.run(main)
    assert backend.data("bkt", "dir/k") == b"pushed bytes"
    assert backend.calls["upload_file"] == 1
    assert cache.store.lookup("bkt", "dir/k").etag == backend.objects[("bkt", "dir/k")].etag
    assert [e.key for e in cache.added] == ["dir/k"]
    assert cache.ctx.counters.pushes == 1 and cache.ctx.counters.bytes_uploaded == 12
    assert not os.listdir(cache.layout.tmp_dir)  # the copy was renamed into data/


def test_push_without_room_uploads_uncached_and_into_no_missing_bucket(tmp_path):
    backend, cache = bkt_cache(tmp_path)
    ctx = dataclasses.replace(cache.ctx, room=Full())
    local = tmp_path / "local.bin"
    local.write_bytes(b"too big for the cache")

    async def main():
        await push_file(ctx, "bkt", "k", str(local))
        with pytest.raises(NoSuchBucket):
            await push_file(ctx, "typo", "k", str(local))

    trio.run(main)
    assert backend.data("bkt", "k") == b"too big for the cache"
    assert cache.store.lookup("bkt", "k") is None  # uploaded, not cached
    assert backend.count("upload_file") == 1  # nothing went to the bucket that is not there
    assert "typo" not in backend.buckets

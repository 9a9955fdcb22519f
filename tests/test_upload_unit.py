"""StagedUpload (s3pool/upload/staged.py) with a real Store in a temp HOMEDIR and a
fake S3 backend that records its calls; the end-to-end tests through a real
mount and moto are in test_mount_writes_e2e.py."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from s3pool.cache import NoEviction
from s3pool.errors import BackendError
from s3pool.store.layout import Layout
from s3pool.store.objects import Store
from s3pool.upload.staged import NotSequential, StagedUpload, UploadFailed, UploadRecords, \
    abort_leftovers

pytestmark = pytest.mark.unit


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.fail_part: int | None = None
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.objects: dict[str, bytes] = {}
        self.gate = trio.Event()  # PUTs and parts wait for it
        self.gate.set()

    async def put_object_from(self, bucket, key, path, only_new=False):
        await self.gate.wait()
        with open(path, "rb") as f:
            self.objects[key] = f.read()
        self.calls.append(("put", key))
        return {"ETag": '"etag-put"', "LastModified": "Sun, 06 Dec 2026 12:00:00 GMT"}

    async def create_multipart_upload(self, bucket, key):
        upload_id = f"up{len(self.uploads)}"
        self.uploads[upload_id] = {}
        self.calls.append(("create", key))
        return upload_id

    async def upload_part_from(self, bucket, key, upload_id, number, path, offset, length):
        await self.gate.wait()
        if number == self.fail_part:
            raise BackendError("injected part failure")
        with open(path, "rb") as f:
            self.uploads[upload_id][number] = os.pread(f.fileno(), length, offset)
        self.calls.append(("part", number))
        return f'"p{number}"'

    async def complete_multipart_upload(self, bucket, key, upload_id, parts, only_new=False):
        assert [n for n, _ in parts] == sorted(self.uploads[upload_id])
        sent = self.uploads.pop(upload_id)
        self.objects[key] = b"".join(sent[n] for n, _ in parts)
        self.calls.append(("complete", key))
        return {"ETag": '"etag-mp-2"', "LastModified": "Sun, 06 Dec 2026 12:00:00 GMT"}

    async def abort_multipart_upload(self, bucket, key, upload_id):
        self.uploads.pop(upload_id, None)
        self.calls.append(("abort", upload_id))

    async def list_multipart_uploads(self, bucket, prefix):
        return [(prefix, upload_id, 1e12) for upload_id in self.uploads]


def make_cache(tmp_path, backend):
    layout = Layout.create(str(tmp_path / "home"))
    store = Store(layout)
    added = []

    async def add_key(bucket, entry):
        added.append(entry)

    return SimpleNamespace(
        store=store, layout=layout, push_backend=backend,
        settings=SimpleNamespace(max_cache_size=0), room=NoEviction(),
        supersede=lambda b, k: None, checkpoint_needed=lambda: None,
        freshness=SimpleNamespace(forget=lambda b, k: None, mark=lambda b, k: None,
                                  missing={}),
        listings=SimpleNamespace(add_key=add_key, added=added),
        stats=SimpleNamespace(pushes=0, bytes_uploaded=0))


async def _run_with_nursery(fn):
    async with trio.open_nursery() as nursery:
        await fn(nursery.start_soon)


def test_parts_go_up_as_they_fill_and_the_object_is_installed(tmp_path):
    backend = FakeBackend()
    cache = make_cache(tmp_path, backend)
    data = bytes(range(256)) * 4  # 1024 bytes, parts of 100

    async def main(spawn):
        upload = StagedUpload(cache, "bkt", "k", 100, spawn)
        for start in range(0, 1000, 50):
            await upload.write(start, data[start:start + 50])
        await trio.testing.wait_all_tasks_blocked()
        # ten full parts sent while the file is open; nothing of it is an object yet
        assert sorted(n for kind, n in backend.calls if kind == "part") == list(range(1, 11))
        assert "k" not in backend.objects
        assert not os.path.exists(cache.layout.object_path("bkt", "k"))
        await upload.write(1000, data[1000:])
        meta = await upload.commit()
        assert backend.objects["k"] == data
        assert meta["ETag"] == '"etag-mp-2"' and meta["ContentLength"] == 1024
        with open(cache.layout.object_path("bkt", "k"), "rb") as f:
            assert f.read() == data
        assert cache.store.lookup("bkt", "k").etag == '"etag-mp-2"'
        assert [e.key for e in cache.listings.added] == ["k"]
        assert cache.store.reserved == 0
        assert not os.listdir(UploadRecords(cache.layout.state_dir).dir)

    trio.run(_run_with_nursery, main)


def test_a_write_elsewhere_than_the_end_is_refused(tmp_path):
    cache = make_cache(tmp_path, FakeBackend())

    async def main(spawn):
        upload = StagedUpload(cache, "bkt", "k", 100, spawn)
        await upload.write(0, b"abc")
        with pytest.raises(NotSequential):
            await upload.write(1, b"x")
        with pytest.raises(NotSequential):
            await upload.write(10, b"x")
        await upload.write(3, b"d")
        await upload.commit()

    trio.run(_run_with_nursery, main)
    assert cache.push_backend.objects["k"] == b"abcd"


def test_two_closes_at_once_upload_once_and_later_writes_fail(tmp_path):
    backend = FakeBackend()
    cache = make_cache(tmp_path, backend)

    async def main(spawn):
        upload = StagedUpload(cache, "bkt", "k", 100, spawn)
        await upload.write(0, b"hello")
        backend.gate = trio.Event()  # the PUT waits until both commits are in
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
            backend.gate.set()
        assert results.pop() == "refused"
        assert [kind for kind, _ in backend.calls] == ["put"]
        assert results[0] == results[1] and results[0]["ETag"] == '"etag-put"'

    async def outer(spawn):
        with trio.fail_after(10):
            await main(spawn)

    trio.run(_run_with_nursery, outer)
    assert backend.objects["k"] == b"hello"


def test_a_failed_part_aborts_and_nothing_is_left(tmp_path):
    backend = FakeBackend()
    backend.fail_part = 2
    cache = make_cache(tmp_path, backend)

    async def main(spawn):
        upload = StagedUpload(cache, "bkt", "k", 100, spawn)
        await upload.write(0, b"x" * 350)
        with pytest.raises(UploadFailed):
            await upload.commit()
        assert "k" not in backend.objects
        assert not backend.uploads  # aborted
        assert ("abort", "up0") in backend.calls
        assert not os.listdir(cache.layout.tmp_dir)
        assert cache.store.reserved == 0
        assert not os.listdir(UploadRecords(cache.layout.state_dir).dir)

    trio.run(_run_with_nursery, main)


def test_leftover_uploads_are_aborted_only_if_recorded(tmp_path):
    backend = FakeBackend()
    cache = make_cache(tmp_path, backend)
    backend.uploads = {"ours": {}, "another-program's": {}}
    records = UploadRecords(cache.layout.state_dir)
    records.write("r1", {"bucket": "bkt", "key": "k", "started": 1.0, "upload_id": "ours"})
    with open(os.path.join(records.dir, "torn.json.tmp"), "w") as f:
        f.write("{")

    async def main():
        assert await abort_leftovers(cache) == 1

    trio.run(main)
    assert list(backend.uploads) == ["another-program's"]
    assert not os.listdir(records.dir)




"""The cache over a real store in tmp_path and moto's S3 server over HTTP."""

import os
import stat

import pytest
import trio

from s3pool.cache import Cache
from s3pool.errors import KeyConflict, VersionChanged
from s3pool.s3.backend import Backend
from s3pool.settings import Settings
from s3pool.store.evictor import Evictor
from s3pool.store.layout import Layout
from s3pool.store.objects import Store

pytestmark = pytest.mark.unit


@pytest.fixture
def make_cache(tmp_path, moto_server):
    made = []

    def make(**settings):
        layout = Layout.create(str(tmp_path / f"home{len(made)}"))
        store = Store(layout)
        settings = Settings(**settings)
        backend = Backend(endpoint_url=moto_server.endpoint,
                          credentials={"aws_access_key_id": "testing",
                                       "aws_secret_access_key": "testing"})
        cache = Cache(store, backend, settings, room=Evictor(store, settings))
        made.append(store)
        return cache

    yield make
    for store in made:
        store.access.close()


async def test_within_the_freshness_window_no_request_reaches_s3(make_cache, s3, bucket,
                                                                 moto_server):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v1")
    cache = make_cache(freshness_window=60)
    path = await cache.pull(bucket, "k")
    assert open(path, "rb").read() == b"v1"
    for _ in range(5):
        assert await cache.pull(bucket, "k") == path
    assert moto_server.app.gets(bucket, "k") == 1


async def test_after_the_window_a_conditional_get_confirms_or_replaces(make_cache, s3, bucket,
                                                                       moto_server):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v1")
    cache = make_cache(freshness_window=0)
    path = await cache.pull(bucket, "k")
    await cache.pull(bucket, "k")
    assert moto_server.app.gets(bucket, "k", status=304) == 1
    s3.put_object(Bucket=bucket, Key="k", Body=b"version 2")
    assert await cache.pull(bucket, "k") == path
    assert open(path, "rb").read() == b"version 2"


async def test_concurrent_pulls_of_one_key_download_once(make_cache, s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="one", Body=os.urandom(300_000))
    cache = make_cache()
    paths = []

    async def pull():
        paths.append(await cache.pull(bucket, "one"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(pull)
    assert len(set(paths)) == 1
    # one GET, of the first part (the whole of this object): a 206
    gets = moto_server.app.gets
    assert gets(bucket, "one") == gets(bucket, "one", status=206) == 1


async def test_installed_files_follow_the_umask_and_meta_comes_last(make_cache, s3, bucket):
    s3.put_object(Bucket=bucket, Key="dir/k", Body=b"data")
    cache = make_cache()
    old = os.umask(0o022)
    os.umask(old)
    path = await cache.pull(bucket, "dir/k")
    expected = 0o666 & ~old
    assert stat.S_IMODE(os.stat(path).st_mode) == expected
    assert stat.S_IMODE(os.stat(path + "__meta__").st_mode) == expected
    # nothing left behind in tmp/
    assert os.listdir(cache.layout.tmp_dir) == []


async def test_the_meta_just_installed_is_not_read_back(make_cache, s3, bucket, monkeypatch):
    """The open after a read-ahead's install finds the meta in memory; a meta
    file changed on disk afterwards is read again."""
    import json as json_module

    import s3pool.store.objects as store_module

    s3.put_object(Bucket=bucket, Key="dir/k", Body=b"data", Metadata={"a": "1"})
    cache = make_cache()
    path = await cache.pull(bucket, "dir/k")
    reads = []
    real_loads = json_module.loads
    monkeypatch.setattr(store_module.json, "loads",
                        lambda text: reads.append(1) or real_loads(text))
    obj = cache.store.lookup(bucket, "dir/k")
    assert obj.meta == real_loads(open(path + "__meta__").read())
    assert obj.meta["Metadata"] == {"a": "1"} and reads == []
    meta = real_loads(open(path + "__meta__").read())
    meta["ContentType"] = "text/changed"
    with open(path + "__meta__.new", "w") as f:
        json_module.dump(meta, f)
    os.rename(path + "__meta__.new", path + "__meta__")
    assert cache.store.lookup(bucket, "dir/k").meta["ContentType"] == "text/changed"
    assert reads == [1]


async def test_data_without_meta_is_never_served_and_old_orphans_are_swept(make_cache, s3,
                                                                          bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="k", Body=b"fresh bytes")
    cache = make_cache()
    # a crash between the data rename and the meta rename left this
    path = cache.layout.object_path(bucket, "k")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(b"stale bytes")
    assert cache.store.lookup(bucket, "k") is None
    orphan = cache.layout.object_path(bucket, "orphan")
    open(orphan, "wb").write(b"x")
    os.utime(orphan, (1, 1))
    cache.store.reconcile()
    assert not os.path.exists(orphan)
    assert open(await cache.pull(bucket, "k"), "rb").read() == b"fresh bytes"


async def test_a_truncated_data_file_is_fetched_again(make_cache, s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    cache = make_cache(freshness_window=60)
    path = await cache.pull(bucket, "k")
    os.truncate(path, 3)
    assert open(await cache.pull(bucket, "k"), "rb").read() == b"0123456789"
    assert moto_server.app.gets(bucket, "k") == moto_server.app.gets(bucket, "k", status=206) == 2


async def test_a_directory_in_the_keys_place_is_a_conflict(make_cache, s3, bucket):
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"x")
    s3.put_object(Bucket=bucket, Key="a", Body=b"y")
    cache = make_cache()
    await cache.pull(bucket, "a/b")
    with pytest.raises(KeyConflict):
        await cache.pull(bucket, "a")


@pytest.fixture
def small_ranges():
    return {"download_part_size": 256 << 10}


async def test_a_large_object_comes_in_ranged_parts(make_cache, s3, bucket, moto_server,
                                                    small_ranges):
    body = os.urandom((3 << 20) + 12345)
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    cache = make_cache(**small_ranges)
    path = await cache.pull(bucket, "big")
    assert open(path, "rb").read() == body
    # part 0 (and the next, when no ranged GET took it) from the first GET,
    # each other part from one ranged GET
    parts = len(range(0, len(body), 256 << 10))
    assert parts - 1 <= moto_server.app.gets(bucket, "big") <= parts


async def test_an_etag_change_between_ranges_fails_and_installs_nothing(make_cache, s3, bucket,
                                                                        small_ranges):
    s3.put_object(Bucket=bucket, Key="big", Body=b"a" * (2 << 20))
    cache = make_cache(**small_ranges)
    original = cache.backend.get_range_into
    versions = iter(b"bcdefgh")
    changes = []
    pinned = set()  # the versions (ETags) whose downloads saw a change

    async def change_then_get(bucket_, key_, etag, *args, **kwargs):
        # a new version before the first range of each download, *limit* times
        if len(changes) < limit and etag not in pinned:
            pinned.add(etag)
            body = bytes([next(versions)]) * (2 << 20)
            changes.append(body)
            await trio.to_thread.run_sync(
                lambda: s3.put_object(Bucket=bucket, Key="big", Body=body))
        return await original(bucket_, key_, etag, *args, **kwargs)

    cache.backend.get_range_into = change_then_get
    # changed once under the PULL: it fetches the new version once, whole, unmixed
    limit = 1
    assert open(await cache.pull(bucket, "big"), "rb").read() == b"b" * (2 << 20)
    # changed again under that refetch: the PULL fails, nothing is installed
    await cache.store.remove(bucket, "big")
    cache.freshness.forget(bucket, "big")
    limit = 3
    with pytest.raises(VersionChanged):  # ESTALE for a reader of the mount
        await cache.pull(bucket, "big")
    assert len(changes) == 3
    assert cache.store.lookup(bucket, "big") is None
    assert not os.path.exists(cache.layout.object_path(bucket, "big"))
    assert os.listdir(cache.layout.tmp_dir) == []
    # the next PULL gets the newest version whole
    cache.backend.get_range_into = original
    assert open(await cache.pull(bucket, "big"), "rb").read() == changes[-1]

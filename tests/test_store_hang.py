"""Eviction under pressure while PULLs and PUSHes of its victims arrive."""

import pytest
import trio

from conftest import put_many
from s3pool.cache import Cache
from s3pool.s3.backend import Backend
from s3pool.settings import Settings
from s3pool.store.evictor import Evictor
from s3pool.store.layout import Layout
from s3pool.store.objects import Store

pytestmark = pytest.mark.unit


async def test_eviction_with_pulls_and_pushes_of_its_victims_never_hangs(tmp_path, moto_server,
                                                                        s3, bucket):
    layout = Layout.create(str(tmp_path / "home"))
    store = Store(layout)
    settings = Settings(max_cache_size=64 * 1024, high_water=90, low_water=50,
                        freshness_window=0)
    evictor = Evictor(store, settings, poll_interval=60, grace=0)
    cache = Cache(store, Backend(endpoint_url=moto_server.endpoint,
                                 credentials={"aws_access_key_id": "testing",
                                              "aws_secret_access_key": "testing"}),
                  settings, room=evictor)
    keys = [f"k{i}" for i in range(8)]
    local = tmp_path / "local"
    local.write_bytes(b"p" * 8192)
    for rnd in range(50):
        put_many(bucket, ((key, bytes([65 + (rnd + i) % 26]) * 8192)
                          for i, key in enumerate(keys)))
        if rnd == 0:
            for key in keys:
                await cache.pull(bucket, key)
            continue
        # every cached object has changed on S3: each PULL downloads and needs room
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(evictor.evict, 40 * 1024)
                await trio.sleep(0)  # the eviction pass is under way
                for key in keys[:6]:
                    nursery.start_soon(cache.pull, bucket, key)
                for key in keys[6:]:
                    nursery.start_soon(cache.push, bucket, key, str(local))
    # nothing is left locked
    assert not any(cache.is_busy(bucket, k) for k in keys)
    store.access.close()

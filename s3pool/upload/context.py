"""What uploads are given: the narrow interface PUSH and staged uploads use.

PUSH (``push.py``) and the files written in the mount (``staged.py``) do not
know the cache (``s3pool/cache.py``, a layer above): they are handed an
:class:`UploadContext` naming exactly what they use, the store they install
into, the S3 endpoint they upload to, room for their bytes, and the few
things of the cache's bookkeeping an upload changes (a download of the old
version superseded, the key's freshness, the listing index, the counters).
The cache builds one, once (``Cache._uploads``); unit tests build their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from s3pool.s3.answers import ListEntry
from s3pool.settings import Settings
from s3pool.store.objects import Store


class PushBackend(Protocol):
    """The S3 calls uploads make (an ``s3.backend.Backend``: --push-endpoint's)."""

    async def bucket_exists(self, bucket: str) -> bool: ...

    async def upload_file(self, bucket: str, key: str, path: str,
                          extra_args: dict[str, Any] | None = None) -> None: ...

    async def head_object(self, bucket: str, key: str) -> dict[str, Any]: ...

    async def put_object_from(self, bucket: str, key: str, path: str,
                              only_new: bool = False) -> dict[str, Any]: ...

    async def create_multipart_upload(self, bucket: str, key: str) -> str: ...

    async def upload_part_from(self, bucket: str, key: str, upload_id: str, number: int,
                               path: str, offset: int, length: int) -> str: ...

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]],
                                        only_new: bool = False) -> dict[str, Any]: ...

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None: ...

    async def list_multipart_uploads(self, bucket: str, prefix: str
                                     ) -> list[tuple[str, str, float]]: ...


class Room(Protocol):
    """What makes room for bytes about to be written (the evictor)."""

    def make_room(self, nbytes: int) -> Awaitable[None]: ...


class UploadCounters(Protocol):
    """The STATUS counters an upload adds to."""

    pushes: int
    bytes_uploaded: int


@dataclass(frozen=True)
class UploadContext:
    """Everything an upload may touch beyond its own files (see the module docstring)."""

    store: Store  # where the uploaded bytes are installed; its key locks and tmp/
    backend: PushBackend  # where uploads go
    settings: Settings  # max_cache_size
    room: Room
    counters: UploadCounters
    # the listing index learns the version just uploaded (GLOB and the mount show it)
    add_key: Callable[[str, ListEntry], Awaitable[None]]
    # the key is being replaced (caller holds its lock): a download of the old
    # version in flight keeps its readers but is never installed
    supersede: Callable[[str, str], None]
    # freshness: the next request asks S3 again / the key was checked just now /
    # S3 no longer lacks the name
    forget: Callable[[str, str], None]
    mark_fresh: Callable[[str, str], None]
    forget_missing: Callable[[str, str], None]
    # raises KeyConflict when keys under KEY/ shadow the key (the listing knows)
    check_conflict: Callable[[str, str], None]
    use_bucket: Callable[[str], None]  # the bucket shows at the mount's root
    installed: Callable[[], None]  # something was installed unsynced (checkpoint)

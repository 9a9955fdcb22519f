"""The FUSE operations in-process (as s3ql's tests/t3_fs_api.py tests its fs.py).

S3PoolOperations over a real Cache and Store in a temp HOMEDIR, with
tests/fakes.py's FakeBackend for S3: every op is called directly under trio,
as pyfuse3 would call it, and the tests look at what a user would see (bytes,
errnos, attributes) and at which S3 requests it cost. What pyfuse3 needs a
kernel request for is a small double: readdir_reply collects entries into a
:class:`Token` (as s3ql does), invalidate_inode is recorded, a request's
context is a :class:`Ctx`. The same behaviours through a real mount, moto and
the daemon are tested end to end in test_fuse_e2e.py, test_mount_writes_e2e.py
and test_first_lookup_e2e.py.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import pytest
import trio

from fakes import FakeBackend
from s3pool.cache import Cache
from s3pool.errors import BackendError
from s3pool.fs.nodes import ROOT, inode_for, inodes_in
from s3pool.fs.ops import S3PoolOperations
from s3pool.settings import Settings
from s3pool.store.layout import Layout
from s3pool.store.objects import Store

pytestmark = pytest.mark.unit

PART = 256 << 10  # download_part_size: a file of a few parts is small here


@dataclass
class Token:
    """A readdir request: room for *room* entries, then readdir_reply says no."""

    room: int = 1000
    entries: list[tuple[str, int, int]] = field(default_factory=list)  # name, mode, next_id


@dataclass
class Ctx:
    """A request's context (pyfuse3.RequestContext): who asks."""

    uid: int = os.getuid()
    gid: int = os.getgid()
    pid: int = 0
    umask: int = 0o022


def readdir_reply(token: Token, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int
                  ) -> bool:
    if len(token.entries) >= token.room:
        return False
    token.entries.append((os.fsdecode(name), attr.st_mode, next_id))
    return True


class Mount:
    """The ops over a real cache, and helpers that act as a user of the mount."""

    def __init__(self, tmp_path, nursery: trio.Nursery, backend: FakeBackend,
                 **settings) -> None:
        self.backend = backend
        self.store = Store(Layout.create(str(tmp_path / "home")))
        self.settings = Settings(download_part_size=PART, **settings)
        s3: Any = backend  # a Backend in all but name
        self.cache = Cache(self.store, s3, self.settings)
        self.ops = S3PoolOperations(self.cache, ["bucket"], spawn=nursery.start_soon)
        self.ops.writes.mountpoint = str(tmp_path / "mnt")

    async def lookup(self, path: str) -> pyfuse3.EntryAttributes:
        """The attributes of BUCKET/PATH, looked up name by name as the kernel does."""
        inode = ROOT
        attrs = await self.ops.getattr(ROOT)
        for name in path.split("/"):
            attrs = await self.ops.lookup(inode, name.encode())
            inode = attrs.st_ino
        return attrs

    async def errno_of(self, op, *args) -> int:
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await op(*args)
        return caught.value.errno

    async def listdir(self, path: str, room: int = 1000) -> list[str]:
        """Names in the directory, read in calls of *room* entries as getdents does."""
        inode = ROOT if not path else (await self.lookup(path)).st_ino
        fh = await self.ops.opendir(inode, Ctx())
        names: list[str] = []
        start = 0
        try:
            while True:
                token = Token(room)
                await self.ops.readdir(fh, start, token)
                if not token.entries:
                    return names
                names += [name for name, _, _ in token.entries]
                start = token.entries[-1][2]
        finally:
            await self.ops.releasedir(fh)

    async def read_file(self, path: str, chunk: int = 128 << 10) -> bytes:
        attrs = await self.lookup(path)
        info = await self.ops.open(attrs.st_ino, os.O_RDONLY, Ctx())
        data = b""
        try:
            while True:
                got = await self.ops.read(info.fh, len(data), chunk)
                if not got:
                    return data
                data += got
        finally:
            await self.ops.release(info.fh)

    async def write_file(self, path: str, data: bytes, chunk: int = 64 << 10) -> None:
        """cp: create, write in order, close (FLUSH then RELEASE)."""
        parent_path, _, name = path.rpartition("/")
        parent = await self.lookup(parent_path)
        info, attrs = await self.ops.create(parent.st_ino, name.encode(), 0o644,
                                            os.O_WRONLY | os.O_CREAT, Ctx())
        assert attrs.entry_timeout == 0  # nobody finds it before it is uploaded
        for offset in range(0, len(data), chunk):
            assert await self.ops.write(info.fh, offset, data[offset:offset + chunk]) == \
                len(data[offset:offset + chunk])
        await self.ops.flush(info.fh)
        await self.ops.release(info.fh)


@pytest.fixture
def backend() -> FakeBackend:
    fake = FakeBackend(buckets=("bucket",))
    fake.put("bucket", "top.txt", b"at the top\n")
    fake.put("bucket", "dir/a.txt", b"a" * 1000)
    fake.put("bucket", "dir/b.bin", bytes(range(256)) * 4096)  # 1 MiB: four parts
    fake.put("bucket", "dir/sub/c.txt", b"c")
    return fake


@pytest.fixture
async def make_mount(tmp_path, nursery, monkeypatch, backend):
    monkeypatch.setattr(pyfuse3, "readdir_reply", readdir_reply)
    invalidated: list[int] = []
    monkeypatch.setattr(pyfuse3, "invalidate_inode",
                        lambda inode, attr_only=False: invalidated.append(inode))
    made: list[Mount] = []

    async def make(**settings) -> Mount:
        mount = Mount(tmp_path / str(len(made)), nursery, backend, **settings)
        await nursery.start(mount.cache.run)
        made.append(mount)
        return mount

    yield make
    for mount in made:
        mount.cache.stop_downloads("the test ended")
        mount.store.access.close()


# --- names and attributes ---------------------------------------------------


async def test_lookup_and_getattr_show_the_listing_s_names_and_sizes(make_mount, backend):
    m = await make_mount()
    bucket = await m.lookup("bucket")
    assert stat.S_ISDIR(bucket.st_mode) and bucket.st_mode & 0o777 == 0o555
    top = await m.lookup("bucket/top.txt")
    assert stat.S_ISREG(top.st_mode) and top.st_mode & 0o777 == 0o444
    assert top.st_size == len(b"at the top\n")
    assert top.st_uid == os.getuid()
    sub = await m.lookup("bucket/dir/sub")
    assert stat.S_ISDIR(sub.st_mode)
    assert (await m.ops.getattr(top.st_ino)).st_size == top.st_size
    # inodes are stable: the same name, the same number
    assert (await m.lookup("bucket/top.txt")).st_ino == top.st_ino
    # names come from HEADs and LISTs, never from GETs
    assert backend.count("get_object", "get_range") == 0


async def test_a_missing_name_is_enoent_and_asked_of_s3_once(make_mount, backend):
    m = await make_mount()
    dir_inode = (await m.lookup("bucket/dir")).st_ino
    await m.listdir("bucket/dir")  # the directory's listing is in
    asked = backend.count("head_object", "first_keys")
    assert await m.errno_of(m.ops.lookup, dir_inode, b"nope") == errno.ENOENT
    after_first = backend.count("head_object", "first_keys")
    assert after_first > asked  # a name the listing lacks is asked of S3 (written since?)
    assert await m.errno_of(m.ops.lookup, dir_inode, b"nope") == errno.ENOENT
    assert backend.count("head_object", "first_keys") == after_first  # remembered
    assert await m.errno_of(m.ops.lookup, ROOT, b"no-such-bucket") == errno.ENOENT
    assert await m.errno_of(m.ops.getattr, 12345) == errno.ENOENT


async def test_a_key_written_since_the_listing_is_found_by_its_lookup(make_mount, backend):
    m = await make_mount()
    assert await m.listdir("bucket/dir") == ["a.txt", "b.bin", "sub"]
    backend.put("bucket", "dir/new.txt", b"new")
    attrs = await m.lookup("bucket/dir/new.txt")
    assert attrs.st_size == 3
    assert await m.read_file("bucket/dir/new.txt") == b"new"


async def test_forget_drops_what_the_kernel_no_longer_knows(make_mount):
    m = await make_mount()
    attrs = await m.lookup("bucket/top.txt")
    assert attrs.st_ino in m.ops.nodes
    await m.ops.forget([(attrs.st_ino, 1)])
    assert attrs.st_ino not in m.ops.nodes
    assert await m.errno_of(m.ops.getattr, attrs.st_ino) == errno.ENOENT


# --- directories --------------------------------------------------------------


async def test_readdir_lists_buckets_files_and_directories(make_mount, backend):
    m = await make_mount()
    assert await m.listdir("") == ["bucket"]
    assert await m.listdir("bucket") == ["dir", "top.txt"]
    assert await m.listdir("bucket/dir") == ["a.txt", "b.bin", "sub"]
    assert await m.listdir("bucket/dir/sub") == ["c.txt"]
    token = Token()
    fh = await m.ops.opendir((await m.lookup("bucket/dir")).st_ino, Ctx())
    await m.ops.readdir(fh, 0, token)
    await m.ops.releasedir(fh)
    modes = {name: mode for name, mode, _ in token.entries}
    assert stat.S_ISDIR(modes["sub"]) and stat.S_ISREG(modes["a.txt"])
    assert backend.count("get_object", "get_range") == 0


FIELDS = ("st_ino", "generation", "entry_timeout", "attr_timeout", "st_mode", "st_nlink",
          "st_size", "st_uid", "st_gid", "st_blksize", "st_blocks", "st_atime_ns",
          "st_mtime_ns", "st_ctime_ns")


@pytest.mark.parametrize("settings", [{}, {"mount_writes": True},
                                      {"mount_writes": True, "mount_umask": 0o027}],
                         ids=["read-only", "writes", "writes-umask"])
async def test_readdir_tells_the_kernel_what_lookup_does(make_mount, monkeypatch, settings):
    """readdir's replies carry attributes (readdirplus): the same, field by
    field, as a lookup of each name gives (readdir works out what every
    file shares once per call)."""
    m = await make_mount(**settings)
    told: dict[str, dict[str, Any]] = {}

    def keep(token, name, attr, next_id):
        told[os.fsdecode(name)] = {f: getattr(attr, f) for f in FIELDS}  # copied, as pyfuse3 does
        return readdir_reply(token, name, attr, next_id)

    monkeypatch.setattr(pyfuse3, "readdir_reply", keep)
    assert await m.listdir("bucket/dir") == ["a.txt", "b.bin", "sub"]
    assert len({fields["st_ino"] for fields in told.values()}) == 3
    for name, fields in told.items():
        looked = await m.lookup(f"bucket/dir/{name}")
        assert fields == {f: getattr(looked, f) for f in FIELDS}


async def test_readdir_in_small_calls_resumes_where_the_last_one_ended(make_mount, backend):
    for i in range(30):
        backend.put("bucket", f"many/f{i:02d}", b"x")
    m = await make_mount()
    expected = [f"f{i:02d}" for i in range(30)]
    assert await m.listdir("bucket/many", room=7) == expected
    # and from an older offset (the kernel went back): the walk goes forward to it
    fh = await m.ops.opendir((await m.lookup("bucket/many")).st_ino, Ctx())
    token = Token(5)
    await m.ops.readdir(fh, 12, token)
    await m.ops.releasedir(fh)
    assert [name for name, _, _ in token.entries] == expected[12:17]


async def test_opendir_of_a_file_is_enotdir_and_readdir_of_no_handle_ebadf(make_mount):
    m = await make_mount()
    attrs = await m.lookup("bucket/top.txt")
    assert await m.errno_of(m.ops.opendir, attrs.st_ino, Ctx()) == errno.ENOTDIR
    assert await m.errno_of(m.ops.readdir, 999, 0, Token()) == errno.EBADF
    assert await m.errno_of(m.ops.lookup, attrs.st_ino, b"x") == errno.ENOTDIR


async def test_a_listing_s3_refuses_is_eio_not_an_empty_directory(make_mount, backend):
    m = await make_mount()
    backend.fail("list_page", BackendError("S3 is down (injected)"), times=100)
    backend.fail("iter_listing", BackendError("S3 is down (injected)"), times=100)
    dir_inode = (await m.lookup("bucket/dir")).st_ino
    fh = await m.ops.opendir(dir_inode, Ctx())
    assert await m.errno_of(m.ops.readdir, fh, 0, Token()) == errno.EIO


# --- reading ------------------------------------------------------------------


async def test_read_gives_the_object_s_bytes_and_a_second_open_costs_no_get(make_mount,
                                                                            backend):
    m = await make_mount()
    assert await m.read_file("bucket/top.txt") == b"at the top\n"
    assert backend.calls["get_object"] == 1
    assert await m.read_file("bucket/top.txt") == b"at the top\n"  # fresh: no request
    assert backend.calls["get_object"] == 1
    # the installed copy is the cache's: a PULL finds it too
    assert open(await m.cache.pull("bucket", "top.txt"), "rb").read() == b"at the top\n"
    assert backend.calls["get_object"] == 1


async def test_a_large_file_streams_in_parts_read_at_any_offset(make_mount, backend):
    m = await make_mount()
    data = backend.data("bucket", "dir/b.bin")
    attrs = await m.lookup("bucket/dir/b.bin")
    assert attrs.st_size == len(data) == 4 * PART
    info = await m.ops.open(attrs.st_ino, os.O_RDONLY, Ctx())
    # a read far into the file first (a reader seeking), then the start
    assert await m.ops.read(info.fh, 3 * PART + 10, 100) == data[3 * PART + 10:3 * PART + 110]
    assert await m.ops.read(info.fh, 0, 4096) == data[:4096]
    assert await m.ops.read(info.fh, len(data) - 5, 100) == data[-5:]  # short at the end
    assert await m.ops.read(info.fh, len(data), 100) == b""
    await m.ops.release(info.fh)
    assert backend.calls["get_object"] == 1
    assert backend.calls["get_range"] >= 1  # the far part came by a ranged GET
    assert await m.read_file("bucket/dir/b.bin") == data


async def test_open_of_a_key_deleted_on_s3_is_enoent_and_s3_failing_is_eio(make_mount,
                                                                          backend):
    m = await make_mount()
    gone = await m.lookup("bucket/top.txt")
    backend.remove("bucket", "top.txt")
    assert await m.errno_of(m.ops.open, gone.st_ino, os.O_RDONLY, Ctx()) == errno.ENOENT
    sick = await m.lookup("bucket/dir/a.txt")
    backend.fail("get_object", BackendError("S3 answered 500 (injected)"))
    assert await m.errno_of(m.ops.open, sick.st_ino, os.O_RDONLY, Ctx()) == errno.EIO
    assert not m.ops.files  # nothing left open
    assert await m.read_file("bucket/dir/a.txt") == b"a" * 1000  # S3 is back


async def test_a_version_replaced_while_a_reader_reads_is_estale(make_mount, backend):
    m = await make_mount()
    old = backend.data("bucket", "dir/b.bin")
    attrs = await m.lookup("bucket/dir/b.bin")
    gate = backend.gate("get_range")  # the far parts wait until the object changed
    info = await m.ops.open(attrs.st_ino, os.O_RDONLY, Ctx())
    assert await m.ops.read(info.fh, 0, 100) == old[:100]
    backend.put("bucket", "dir/b.bin", b"new" * 1000)
    gate.open()
    assert await m.errno_of(m.ops.read, info.fh, 3 * PART, 100) == errno.ESTALE
    await m.ops.release(info.fh)
    assert await m.errno_of(m.ops.read, info.fh, 0, 100) == errno.EIO  # a handle let go


async def test_release_of_a_read_handle_frees_it(make_mount):
    m = await make_mount()
    attrs = await m.lookup("bucket/top.txt")
    info = await m.ops.open(attrs.st_ino, os.O_RDONLY, Ctx())
    assert info.fh in m.ops.files
    assert await m.errno_of(m.ops.flush, info.fh) == errno.ENOSYS  # read-only: no FLUSHes
    await m.ops.release(info.fh)
    assert info.fh not in m.ops.files
    assert await m.errno_of(m.ops.open, (await m.lookup("bucket/dir")).st_ino,
                            os.O_RDONLY, Ctx()) == errno.EISDIR


# --- writing --------------------------------------------------------------------


async def test_without_mount_writes_every_write_is_erofs(make_mount, backend):
    m = await make_mount()
    bucket = await m.lookup("bucket")
    top = await m.lookup("bucket/top.txt")
    assert await m.errno_of(m.ops.create, bucket.st_ino, b"new", 0o644,
                            os.O_WRONLY | os.O_CREAT, Ctx()) == errno.EROFS
    assert await m.errno_of(m.ops.open, top.st_ino, os.O_WRONLY, Ctx()) == errno.EROFS
    assert await m.errno_of(m.ops.write, 1, 0, b"x") == errno.EROFS
    assert await m.errno_of(m.ops.mkdir, bucket.st_ino, b"d", 0o755, Ctx()) == errno.EROFS
    assert await m.errno_of(m.ops.unlink, bucket.st_ino, b"top.txt", Ctx()) == errno.EROFS
    assert await m.errno_of(m.ops.rename, bucket.st_ino, b"top.txt", bucket.st_ino,
                            b"moved", 0, Ctx()) == errno.EROFS
    assert backend.count("put_object", "upload_file", "create_multipart",
                         "delete_object") == 0
    assert backend.data("bucket", "top.txt") == b"at the top\n"


async def test_a_file_written_is_uploaded_at_close_then_served_from_the_cache(make_mount,
                                                                             backend):
    m = await make_mount(mount_writes=True)
    data = os.urandom(200_000)
    await m.write_file("bucket/dir/written.bin", data)
    assert backend.data("bucket", "dir/written.bin") == data
    assert backend.calls["put_object"] == 1
    assert m.ops.writes.uploads == 1
    attrs = await m.lookup("bucket/dir/written.bin")
    assert attrs.st_size == len(data)
    assert attrs.st_mode & 0o777 == 0o444 & ~0o022  # an object: read-only
    assert "written.bin" in await m.listdir("bucket/dir")
    gets = backend.count("get_object", "get_range")
    assert await m.read_file("bucket/dir/written.bin") == data
    assert backend.count("get_object", "get_range") == gets  # installed by the upload


async def test_writes_must_follow_each_other_and_a_failed_upload_is_eio(make_mount, backend):
    m = await make_mount(mount_writes=True)
    bucket = await m.lookup("bucket")
    info, _ = await m.ops.create(bucket.st_ino, b"f.txt", 0o644, os.O_WRONLY | os.O_CREAT,
                                 Ctx())
    assert await m.ops.write(info.fh, 0, b"hello") == 5
    assert await m.errno_of(m.ops.write, info.fh, 2, b"x") == errno.EINVAL
    backend.fail("put_object", BackendError("S3 answered 500 (injected)"))
    assert await m.errno_of(m.ops.flush, info.fh) == errno.EIO  # cp exits non-zero
    await m.ops.release(info.fh)
    assert backend.data("bucket", "f.txt") is None
    assert m.ops.writes.upload_failures == 1
    assert not os.listdir(m.store.layout.tmp_dir)  # nothing staged is left


async def test_create_of_an_existing_name_is_eexist_and_rename_eperm(make_mount, backend):
    m = await make_mount(mount_writes=True)
    bucket = await m.lookup("bucket")
    assert await m.errno_of(m.ops.create, bucket.st_ino, b"top.txt", 0o644,
                            os.O_WRONLY | os.O_CREAT, Ctx()) == errno.EEXIST
    assert await m.errno_of(m.ops.create, ROOT, b"newbucket", 0o644,
                            os.O_WRONLY | os.O_CREAT, Ctx()) == errno.EPERM
    assert await m.errno_of(m.ops.rename, bucket.st_ino, b"top.txt", bucket.st_ino,
                            b"moved", 0, Ctx()) == errno.EPERM
    top = await m.lookup("bucket/top.txt")
    # replacing an object needs mount_overwrite
    assert await m.errno_of(m.ops.open, top.st_ino, os.O_WRONLY | os.O_TRUNC,
                            Ctx()) == errno.EPERM
    assert backend.data("bucket", "top.txt") == b"at the top\n"
    assert backend.count("put_object") == 0


async def test_mkdir_then_a_file_in_it_makes_the_directory_real(make_mount, backend):
    m = await make_mount(mount_writes=True)
    bucket = await m.lookup("bucket")
    made = await m.ops.mkdir(bucket.st_ino, b"newdir", 0o755, Ctx())
    assert stat.S_ISDIR(made.st_mode)
    assert stat.S_ISDIR((await m.lookup("bucket/newdir")).st_mode)
    assert await m.errno_of(m.ops.mkdir, bucket.st_ino, b"newdir", 0o755,
                            Ctx()) == errno.EEXIST
    assert "dir" in await m.listdir("bucket")  # a directory S3 has (keys under dir/)
    assert await m.errno_of(m.ops.mkdir, bucket.st_ino, b"dir", 0o755, Ctx()) == errno.EEXIST
    assert backend.count("put_object") == 0  # S3 has no directories
    await m.write_file("bucket/newdir/inside.txt", b"inside")
    assert backend.data("bucket", "newdir/inside.txt") == b"inside"
    assert ("bucket", "newdir") not in m.ops.writes.local_dirs


async def test_unlink_deletes_on_s3_only_with_mount_delete(make_mount, backend):
    m = await make_mount(mount_writes=True)
    bucket = await m.lookup("bucket")
    assert await m.errno_of(m.ops.unlink, bucket.st_ino, b"top.txt", Ctx()) == errno.EPERM
    assert backend.data("bucket", "top.txt") is not None
    m.settings.set("mount_delete", True)
    assert await m.read_file("bucket/top.txt") == b"at the top\n"  # cached
    await m.ops.unlink(bucket.st_ino, b"top.txt", Ctx())
    assert backend.data("bucket", "top.txt") is None
    assert backend.calls["delete_object"] == 1
    assert await m.errno_of(m.ops.lookup, bucket.st_ino, b"top.txt") == errno.ENOENT
    assert m.store.lookup("bucket", "top.txt") is None  # the cached copy went too
    assert await m.errno_of(m.ops.unlink, bucket.st_ino, b"top.txt", Ctx()) == errno.ENOENT


@pytest.mark.parametrize("bucket,dir_prefix", [("bucket", ""), ("bucket", "dir/"),
                                               ("b", "été/中文 x/"), ("b", "bad\udcff/")])
def test_inodes_in_a_directory_are_inode_for(bucket, dir_prefix):
    """readdir numbers a directory's entries with the directory's part hashed
    once: the same numbers as inode_for (lookup, getattr, forget use it)."""
    of = inodes_in(bucket, dir_prefix)
    for name in ("a", "a.txt", "ü", "x\udcfey", "sub"):
        for is_dir in (False, True):
            assert of(name, is_dir) == inode_for(bucket, dir_prefix + name, is_dir)
    assert of("a", False) != of("a", True)

"""What the kernel knows of the tree: nodes and their inode numbers.

Shared by the read operations (``ops``) and the writes (``writes``), so
neither imports the other: :class:`Node` is one name the kernel looked up,
:func:`inode_for` its stable inode number, and :class:`Tree` what the
writes use of the operations that hold the nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pyfuse3

from s3pool.cache import Cache

ROOT = pyfuse3.ROOT_INODE


def inode_for(bucket: str, path: str, is_dir: bool) -> int:
    """Stable for as long as the name exists, across refreshes and mounts."""
    digest = hashlib.blake2b(f"{bucket}\0{path}\0{'d' if is_dir else 'f'}".encode(
        "utf-8", "surrogateescape"), digest_size=8).digest()
    ino = int.from_bytes(digest, "little") & ((1 << 63) - 1)
    return ino if ino > ROOT else ino + 2


def inodes_in(bucket: str, dir_prefix: str) -> Callable[[str, bool], int]:
    """inode_for of the names of one directory (``inodes_in(b, p)(name,
    is_dir) == inode_for(b, p + name, is_dir)``), the directory's part
    hashed once: readdir asks it for every entry."""
    base = hashlib.blake2b(f"{bucket}\0{dir_prefix}".encode("utf-8", "surrogateescape"),
                           digest_size=8)
    mask = (1 << 63) - 1

    def of(name: str, is_dir: bool) -> int:
        digest = base.copy()
        digest.update((name + ("\0d" if is_dir else "\0f")).encode("utf-8", "surrogateescape"))
        ino = int.from_bytes(digest.digest(), "little") & mask
        return ino if ino > ROOT else ino + 2

    return of


@dataclass
class Node:
    bucket: str  # '' for the root
    path: str  # key for a file; directory path without trailing '/' ('' = bucket root)
    is_dir: bool
    size: int = 0  # what the kernel was last told
    mtime: float = 0.0
    lookups: int = 0

    @property
    def dir_prefix(self) -> str:
        return self.path + "/" if self.path else ""


class Tree(Protocol):
    """What the writes (``writes.MountWrites``) use of the operations (``ops``)."""

    cache: Cache
    nodes: dict[int, Node]
    spawn: Callable[..., None] | None

    def node(self, inode: int) -> Node: ...

    def remember(self, node: Node, inode: int | None = None) -> int: ...

    def attrs(self, inode: int, node: Node) -> pyfuse3.EntryAttributes: ...

    def new_fh(self) -> int: ...

    def drop_kernel_pages(self, inode: int) -> None: ...

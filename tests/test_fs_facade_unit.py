"""The mount (s3pool/fs/) talks to one facade, the Cache (issue 18).

tests/test_layers_unit.py lets a layer import anything below it; the mount
is held to less: of s3pool it imports only the facade module
(``s3pool.cache``), the errors and settings every layer shares, and its own
package, and it never reaches *through* the facade into what the cache
holds (``cache.backend.X``, ``cache.store.X``, ``cache.listings.X``...):
what it wants is a method of Cache. Read from the source with ``ast``, so
imports inside functions and under TYPE_CHECKING count too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.unit

FS = pathlib.Path(__file__).resolve().parent.parent / "s3pool" / "fs"

# what fs/ may import of s3pool
ALLOWED = ("s3pool.cache", "s3pool.errors", "s3pool.settings", "s3pool.fs")
# what the Cache holds that the mount must not reach through
HELD = {"backend", "push_backend", "store", "layout", "listings", "freshness", "downloads",
        "transfers", "tier", "room"}


def violations(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            targets = [node.module or ""] if not node.level else []
        else:
            targets = []
        for target in targets:
            if target.startswith("s3pool") and not any(
                    target == ok or target.startswith(ok + ".") for ok in ALLOWED):
                found.append(f"{name}:{getattr(node, 'lineno', 0)}: imports {target}")
        # cache.X where X is held by the cache, or private: self.cache.store, cache._y
        if isinstance(node, ast.Attribute) and (node.attr in HELD or node.attr.startswith("_")):
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else \
                owner.id if isinstance(owner, ast.Name) else ""
            if owner_name == "cache":
                found.append(f"{name}:{node.lineno}: reaches through the facade: "
                             f"cache.{node.attr}")
    return found


def test_the_checker_finds_imports_and_reaching_through() -> None:
    # positive control: what the mount did before the facade
    source = ("from s3pool.listing.listings import Entry\n"
              "def f(self):\n"
              "    from s3pool.s3.backend import ListEntry\n"
              "    self.cache.store.touch('b', 'k')\n"
              "    return cache._note_version, self.cache.backend.bucket_exists\n")
    found = violations(source, "x.py")
    assert len(found) == 5, found
    assert violations("from s3pool.cache import Cache\nself.cache.touch('b', 'k')\n",
                      "y.py") == []


def test_the_mount_talks_to_the_cache_facade_only() -> None:
    found = []
    paths = sorted(FS.glob("*.py"))
    assert {p.name for p in paths} >= {"ops.py", "writes.py", "prefetch.py", "mount.py"}
    for path in paths:
        found += violations(path.read_text(), path.name)
    assert found == [], "\n".join(found)

"""Unit tests of the published listing's format, hidden keys and ETag validators
(real files, no S3)."""

from __future__ import annotations

import gzip
import io
import json
import time
import tracemalloc
import zlib

import pytest

from s3pool.errors import BackendError
from s3pool.listing.build import write_listing
from s3pool.listing.fleet import Fleet, FleetListings
from s3pool.listing.listings import Listings
from s3pool.listing.published import DEFAULT_KEY, PublishedListing, is_hidden, write_published
from s3pool.s3.answers import ListEntry, validator
from s3pool.store.layout import Layout

pytestmark = pytest.mark.unit

ODD_KEYS = ["a", "dir/b", "tab\there", "new\nline", "quote\"s", "ünï/ç", "z" * 900]


def test_published_listing_round_trips_every_key(tmp_path):
    layout = Layout.create(str(tmp_path))
    entries = [ListEntry(k, i, 1.7e9 + i, f'"{i:032x}"') for i, k in enumerate(ODD_KEYS)]
    entries.append(ListEntry(DEFAULT_KEY, 9, 0.0, '"p"'))  # our own: left out
    write_listing(layout, "bkt", [entries])
    out = tmp_path / "pub.gz"
    assert write_published(layout.index_path("bkt"), str(out), "bkt", 1234.5) == len(ODD_KEYS)
    with open(out, "rb") as f:
        published = PublishedListing(f, "s3://bkt/x")
        assert published.listed_at == 1234.5 and published.count == len(ODD_KEYS)
        got = [e for page in published.pages() for e in page]
    assert got == sorted(entries[:-1])
    # the same listing gives the same bytes (and so the same ETag)
    again = tmp_path / "again.gz"
    write_published(layout.index_path("bkt"), str(again), "bkt", 1234.5)
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.parametrize("body", [
    b"plain text",
    gzip.compress(b'{"format": "other"}\n'),
    gzip.compress(b'{"format": "s3pool-listing", "version": 99, "listed_at": 1}\n'),
    gzip.compress(b'{"format": "s3pool-listing", "version": 1, "listed_at": 1, "count": 2}\n'
                  b'["a", 1, 0, "e"]\n'),
    gzip.compress(b'{"format": "s3pool-listing", "version": 1, "listed_at": 1, "count": 1}\n'
                  b'["a", 1]\n'),
], ids=["not_gzip", "other_format", "version_99", "fewer_rows_than_count", "short_row"])
def test_damaged_published_listings_are_refused(body):
    with pytest.raises(BackendError):
        published = PublishedListing(io.BytesIO(body), "s3://bkt/x")
        for _ in published.pages():
            pass


def test_hidden_keys():
    assert is_hidden(".s3pool/listing.jsonl.gz") and is_hidden(".s3pool/other")
    assert not is_hidden(".s3poolx/a") and not is_hidden("a/.s3pool/b")
    assert is_hidden("meta/listing.gz", "meta/listing.gz")


async def test_hidden_keys_never_enter_the_index(tmp_path):
    layout = Layout.create(str(tmp_path))
    write_listing(layout, "bkt", [[ListEntry(".s3pool/x", 1, 0.0, ""),
                                   ListEntry("a", 1, 0.0, "")]])
    listings = Listings(layout, backend=None)
    await listings.add_key("bkt", ListEntry(".s3pool/y", 1, 0.0, ""))
    assert await listings.glob("bkt", "**") == ["a"]
    assert (tmp_path / "data" / "bkt" / "__list__").read_text() == "a\n"
    assert listings.lookup("bkt", "", ".s3pool") is None


def test_etag_validators():
    assert validator('"abc"') == '"abc"'
    assert validator("abc") == '"abc"'  # a tier that drops the quotes
    assert validator('""') is None and validator("") is None and validator(None) is None


async def test_keys_added_here_outlive_an_older_published_listing(tmp_path):
    layout = Layout.create(str(tmp_path))
    listings = Listings(layout, backend=None)
    fleet = FleetListings(listings, Fleet(use_published=True))
    write_listing(layout, "bkt", [[ListEntry("old", 1, 0.0, "")]])
    await listings.add_key("bkt", ListEntry("pushed", 1, 0.0, ""))
    # a listing published before the PUSH, installed after it
    write_listing(layout, "other", [[ListEntry("old", 1, 0.0, ""),
                                     ListEntry("gone", 1, 0.0, "")]])
    pub = tmp_path / "pub.gz"
    write_published(layout.index_path("other"), str(pub), "bkt", time.time() - 60)
    assert fleet._install_published("bkt", str(pub), '"e"', 900.0) == 2
    assert await listings.glob("bkt", "*") == ["gone", "old", "pushed"]
    # taken after the PUSH: the publisher's word stands
    write_published(layout.index_path("other"), str(pub), "bkt", time.time() + 60)
    fleet._install_published("bkt", str(pub), '"f"', 900.0)
    assert await listings.glob("bkt", "*") == ["gone", "old"]
    # too old: not installed
    write_published(layout.index_path("other"), str(pub), "bkt", time.time() - 1000)
    assert fleet._install_published("bkt", str(pub), '"g"', 900.0) is None


# --- poisoned listings (issue 17, point 3) ----------------------------------

def _listing(*lines: bytes, count: int = 1, **header) -> bytes:
    head = {"format": "s3pool-listing", "version": 1, "bucket": "bkt", "listed_at": 1.7e9,
            "count": count, **header}
    body = b"".join(line + b"\n" for line in lines)
    return gzip.compress(json.dumps(head).encode() + b"\n" + body)


@pytest.mark.parametrize("line", [
    b'[["a"], 1, 0, "e"]', b'["a", [1], 0, "e"]', b'["a", 1, {"t": 0}, "e"]',
    b'["a", 1, 0, ["e"]]', b"[" * 20000 + b"]" * 20000, b'["a", 1e400, 0, "e"]',
    b'["a", 1180591620717411303424, 0, "e"]', b'["a", -1, 0, "e"]', b'["a", 1.5, 0, "e"]',
    b'["a", true, 0, "e"]', b'["a", "1", 0, "e"]', b'["a", 1, NaN, "e"]',
    b'["a", 1, Infinity, "e"]', b'["a", 1, -Infinity, "e"]', b'["a", 1, 1e300, "e"]',
    b'["a", 1, -5, "e"]', b'[5, 1, 0, "e"]', b'[null, 1, 0, "e"]', b'["", 1, 0, "e"]',
    b'["' + b"k" * 1025 + b'", 1, 0, "e"]', b'["a", 1, 0, 7]',
    b'["a", 1, 0, "' + b"e" * 1025 + b'"]', b'["a", 1, 0, "e", 1]', b'{"key": "a"}', b"",
    b'["\xff", 1, 0, "e"]', b'["' + b"x" * (1 << 20) + b'", 1, 0, "e"]',
])
def test_every_field_of_an_entry_is_range_checked(line):
    published = PublishedListing(io.BytesIO(_listing(line)), "s3://bkt/x")
    with pytest.raises(BackendError):
        for _ in published.pages():
            pass


@pytest.mark.parametrize("header", [
    {"listed_at": float("nan")}, {"listed_at": float("inf")}, {"listed_at": [1]},
    {"listed_at": -1.0}, {"listed_at": True}, {"count": 2 ** 70}, {"count": -1},
    {"count": 1.5}, {"count": True}, {"bucket": ["bkt"]}, {"version": True},
    {"pad": "x" * (1 << 20)},
])
def test_every_field_of_the_header_is_range_checked(header):
    body = _listing(b'["a", 1, 0, "e"]', **header)
    with pytest.raises(BackendError):
        PublishedListing(io.BytesIO(body), "s3://bkt/x")


def test_a_sound_entry_at_the_bounds_is_read():
    key = "k" * 1024
    body = _listing(json.dumps([key, 2 ** 53 - 1, 0, "e" * 1024]).encode(),
                    json.dumps(["\u00e9" * 512, 0, 1.7e9, ""]).encode(), count=2)
    entries = [e for page in PublishedListing(io.BytesIO(body), "u").pages() for e in page]
    assert entries == [ListEntry(key, 2 ** 53 - 1, 0.0, "e" * 1024),
                       ListEntry("\u00e9" * 512, 0, 1.7e9, "")]


def _bomb(prefix: bytes, filler: bytes, total: int, suffix: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = filler * ((1 << 20) // len(filler))
    parts = [packer.compress(prefix)]
    parts += [packer.compress(chunk) for _ in range(total // len(chunk))]
    return b"".join([*parts, packer.compress(suffix), packer.flush()])


def test_a_gzip_bomb_is_read_with_bounded_memory():
    head = json.dumps({"format": "s3pool-listing", "version": 1, "bucket": "bkt",
                       "listed_at": 1.7e9, "count": 1}).encode() + b"\n"
    one_line = _bomb(head + b'["', b"a" * 4096, 256 << 20, b'", 1, 0, "e"]\n')
    many_lines = _bomb(head + b'["a", 1, 0, "e"]\n', b'["x", 1, 0, "e"]\n', 256 << 20, b"")
    header_line = _bomb(b'{"format": "s3pool-listing", "pad": "', b"x" * 4096, 256 << 20,
                        b'"}\n')
    for body in (one_line, many_lines, header_line):
        assert len(body) < 1 << 20
        tracemalloc.start()
        try:
            with pytest.raises(BackendError):
                published = PublishedListing(io.BytesIO(body), "s3://bkt/x")
                for _ in published.pages():
                    pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, f"{peak >> 20} MiB held while reading a gzip bomb"

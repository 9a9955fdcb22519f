"""ListObjectsV2 pages parsed without botocore's parser.

:func:`parse_listing_fast` is registered on botocore's ``before-parse`` of
ListObjectsV2: it reads the page's XML once and hands the entries on as
:class:`~s3pool.s3.answers.ListEntry` tuples under ``FAST_ENTRIES`` (and the
common prefixes under ``FAST_PREFIXES``); see bench/RESULTS.md, Listings.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus
from xml.sax.saxutils import escape

import botocore.handlers
from botocore.utils import parse_timestamp
from lxml import etree

from s3pool.s3.answers import ListEntry

FAST_ENTRIES = "S3PoolEntries"


FAST_PREFIXES = "S3PoolPrefixes"


_KEEP_FOR_BOTOCORE = ("IsTruncated", "NextContinuationToken", "KeyCount", "MaxKeys", "Name",
                      "Prefix", "EncodingType", "ContinuationToken", "StartAfter")


def install_listing_parser(events: Any) -> None:
    """Register :func:`parse_listing_fast` on a client's *events*, ahead of
    botocore's check for an error inside a 200 answer.

    That check (``_handle_200_error``, first on every S3 ``before-parse``)
    parses the whole body to look at its root element: a second parse of
    every LIST page, about a third of a listing's CPU (bench/RESULTS.md,
    Listings). Here it runs after the fast parser, on the few paging fields
    left in the body, or on the body untouched when the fast parser left it
    alone (an ``<Error>`` root, a cut or malformed body: botocore's check
    then sees it as it always did). A botocore without that function keeps
    its own order, only slower."""
    check = getattr(botocore.handlers, "_handle_200_error", None)
    if check is None:
        events.register("before-parse.s3.ListObjectsV2", parse_listing_fast)
        return
    events.unregister("before-parse.s3.*", check)

    def parse_then_check(operation_model: Any, response_dict: dict[str, Any],
                         customized_response_dict: dict[str, Any], **kwargs: Any) -> None:
        if operation_model.name == "ListObjectsV2":
            parse_listing_fast(response_dict, customized_response_dict)
        check(operation_model=operation_model, response_dict=response_dict,
              customized_response_dict=customized_response_dict, **kwargs)

    events.register_first("before-parse.s3.*", parse_then_check)


def parse_listing_fast(response_dict: dict[str, Any], customized_response_dict: dict[str, Any],
                       **_: Any) -> None:
    """botocore ``before-parse`` hook for ListObjectsV2.

    botocore's XML parser costs about 60 us a key, a minute for a
    million-key bucket. lxml (libxml2) reads the entries here: it parses
    with the GIL released, so a page parses on one core while the mount
    serves the page before on the other, and XPath hands the columns over
    in C (bench/RESULTS.md, Listings). The body handed on to botocore keeps
    only the paging fields, so signing, retries, redirects and pagination
    stay botocore's. Anything unexpected leaves the response untouched for
    botocore to parse.
    """
    if response_dict.get("status_code") != 200:
        return
    read = _read(response_dict.get("body"))
    if read is None:
        return
    entries, prefixes, fields = read
    customized_response_dict[FAST_PREFIXES] = prefixes
    kept = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in fields.items())
    response_dict["body"] = f"<ListBucketResult>{kept}</ListBucketResult>".encode()
    customized_response_dict[FAST_ENTRIES] = entries


def read_page(body: bytes) -> dict[str, Any] | None:
    """A ListObjectsV2 answer's body read into the shape list_objects_v2
    returns with the fast parser's hook (FAST_ENTRIES, FAST_PREFIXES,
    IsTruncated, NextContinuationToken...); None if it is not a listing
    this parser reads (an ``<Error>``, a DTD, a cut or malformed body):
    boto3 is to ask again."""
    read = _read(body)
    if read is None:
        return None
    entries, prefixes, fields = read
    page: dict[str, Any] = {FAST_ENTRIES: entries, FAST_PREFIXES: prefixes, **fields}
    truncated = fields.get("IsTruncated")
    if truncated not in ("true", "false"):
        return None  # botocore would read a missing or odd flag as false: not guessed here
    page["IsTruncated"] = truncated == "true"
    return page


def _read(body: Any) -> tuple[list[ListEntry], list[str], dict[str, str]] | None:
    """(entries, common prefixes, the paging fields by name) of a listing's
    XML, or None if it is not one this parser reads."""
    try:
        root = etree.fromstring(body, parser=_parser())
    except (etree.XMLSyntaxError, ValueError, TypeError):
        return None
    if root is None or not isinstance(root.tag, str) or root.getroottree().docinfo.doctype:
        return None  # no element, or a DTD: S3 sends none
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{ns}ListBucketResult":
        return None  # an <Error> in a 200 answer: botocore's check makes it one
    encoded = root.findtext(f"{ns}EncodingType") == "url"
    paths = _paths(ns)
    try:
        entries = _by_columns(root, paths, encoded)
        if entries is None:
            entries = _by_items(root, ns, encoded)
    except ValueError:
        return None
    # a delimiter LIST's subdirectories (listing/listings.py's directory listings)
    prefixes = [_decoded(text) if encoded else text for text in paths.prefixes(root) if text]
    fields = {name: value for name in _KEEP_FOR_BOTOCORE
              if (value := root.findtext(f"{ns}{name}")) is not None}
    return entries, prefixes, fields


# lxml's parsers are not to be shared between threads: one each
_local = threading.local()


def _parser() -> Any:
    parser = getattr(_local, "parser", None)
    if parser is None:
        # S3's answers have no DTD and no entities of their own: none is
        # loaded or resolved, nothing is fetched, no tree is unbounded
        parser = _local.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
            remove_comments=True, remove_pis=True)
    return parser


class _Paths:
    """The XPath queries of one namespace (compiled once)."""

    def __init__(self, ns: str) -> None:
        space = {"s": ns[1:-1]} if ns else None
        step = "s:" if ns else ""

        def column(path: str) -> Any:
            return etree.XPath(path.replace("$", step), namespaces=space, smart_strings=False)

        self.count = column("count($Contents)")
        self.columns = [column(f"$Contents/${name}/text()")
                        for name in ("Key", "Size", "LastModified", "ETag")]
        self.prefixes = column("$CommonPrefixes/$Prefix/text()")


_paths_by_ns: dict[str, _Paths] = {}


def _paths(ns: str) -> _Paths:
    paths = _paths_by_ns.get(ns)
    if paths is None:
        paths = _paths_by_ns[ns] = _Paths(ns)
    return paths


def _by_columns(root: Any, paths: _Paths, encoded: bool) -> list[ListEntry] | None:
    """The entries from the four columns, or None unless every entry has
    each of the four exactly once (then :func:`_by_items` reads them)."""
    count = int(paths.count(root))
    keys, sizes, stamps, etags = (column(root) for column in paths.columns)
    if not len(keys) == len(sizes) == len(stamps) == len(etags) == count:
        return None
    times: dict[str, float] = {}  # listings repeat timestamps a lot
    entries = []
    new = tuple.__new__  # a NamedTuple made without its Python-level __new__ (half the cost)
    for key, size, stamp, etag in zip(keys, sizes, stamps, etags, strict=True):
        mtime = times.get(stamp)
        if mtime is None:
            mtime = times[stamp] = _timestamp(stamp)
        entries.append(new(ListEntry, (_decoded(key) if encoded else key, int(size), mtime,
                                       etag)))
    return entries


def _by_items(root: Any, ns: str, encoded: bool) -> list[ListEntry]:
    """The entries one ``Contents`` at a time: a field missing or empty
    takes its default."""
    entries = []
    key_tag, size_tag, time_tag, etag_tag = (f"{ns}Key", f"{ns}Size", f"{ns}LastModified",
                                             f"{ns}ETag")
    for item in root.iterfind(f"{ns}Contents"):
        key, size, stamp, etag = "", "0", "", ""
        for child in item:
            tag = child.tag
            if tag == key_tag:
                key = child.text or ""
            elif tag == size_tag:
                size = child.text or "0"
            elif tag == time_tag:
                stamp = child.text or ""
            elif tag == etag_tag:
                etag = child.text or ""
        entries.append(ListEntry(_decoded(key) if encoded else key, int(size),
                                 _timestamp(stamp), etag))
    return entries


def _decoded(text: str) -> str:
    """A name of a listing asked with encoding-type=url: most have nothing
    to decode, and the test is cheaper than unquote_plus (a tenth of a
    listing's CPU when it ran on every key)."""
    return unquote_plus(text) if "%" in text or "+" in text else text


def _timestamp(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return float(parse_timestamp(text).timestamp())

"""listings.fetched_ahead: the next LIST page is fetched in a thread while
the caller merges the last one; errors come where the item would have, a
caller that stops early stops the thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from s3pool.listing.listings import fetched_ahead

pytestmark = [pytest.mark.unit]


def test_items_come_in_order_and_all():
    assert list(fetched_ahead(iter(range(50)))) == list(range(50))


def test_an_error_comes_where_its_item_would_have():
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("page 3 failed")

    got: list[int] = []
    with pytest.raises(ValueError, match="page 3 failed"):
        for item in fetched_ahead(items()):
            got.append(item)
    assert got == [1, 2]


def test_a_caller_that_stops_early_stops_the_thread():
    made: list[int] = []

    def items() -> Iterator[int]:
        for i in range(1000):
            made.append(i)
            yield i

    ahead = fetched_ahead(items())
    assert next(ahead) == 0
    ahead.close()  # joins the thread
    # one item handed over, at most one waiting, one being made: never the rest
    assert len(made) <= 3, made
    assert not [t for t in threading.enumerate() if t.name == "s3pool-list-ahead"]


def test_a_single_page_is_made_in_the_callers_thread_with_no_thread_started():
    made_in: list[str] = []

    def items() -> Iterator[tuple[int, bool]]:
        made_in.append(threading.current_thread().name)
        yield 1, True  # the last page

    before = threading.active_count()
    got = []
    for item in fetched_ahead(items(), more=lambda page: not page[1]):
        got.append(item)
        assert threading.active_count() == before
    assert got == [(1, True)]
    assert made_in == [threading.current_thread().name]


def test_pages_after_the_first_are_made_in_the_thread():
    made_in: list[str] = []

    def items() -> Iterator[tuple[int, bool]]:
        for i in range(3):
            made_in.append(threading.current_thread().name)
            yield i, i == 2

    got = list(fetched_ahead(items(), more=lambda page: not page[1]))
    assert got == [(0, False), (1, False), (2, True)]
    me = threading.current_thread().name
    assert made_in[0] == me and made_in[1:] == ["s3pool-list-ahead"] * 2

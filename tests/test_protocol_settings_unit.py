"""Unit tests of request parsing and setting values against hostile input
(issue 7): every bad input is a BadRequest / ValueError with a short,
clear message, never another exception."""

import json

import pytest

from s3pool.control.protocol import MAX_ERROR_CHARS, format_error, parse_request
from s3pool.errors import BadRequest
from s3pool.settings import MAX_SIZE, SPECS, Settings, parse_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("line, words", [
    (b'["PULL", "b", "\\ud800"]', "item 2 of the request holds a lone surrogate '\\ud800'"),
    (b'["GLOB", "b", "ok\\udfff*"]', "at offset 2"),
    (b'["\\udc80"]', "item 0"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "nested too deeply"),
    (b'[["PULL"]]', "item 0 of the request is list"),
    (b"[" + b"9" * 5000 + b"]", "malformed JSON"),
])
def test_hostile_requests_are_bad_requests(line, words):
    with pytest.raises(BadRequest) as caught:
        parse_request(line)
    assert words in str(caught.value)
    assert len(str(caught.value)) < 300


def test_valid_non_ascii_strings_pass():
    request = parse_request(json.dumps(["PULL", "b", "ключ/😀"]).encode())
    assert request.args == ["b", "ключ/😀"]


def test_error_lines_are_one_line_and_capped():
    reply = format_error("x" * 1_000_000 + "\nsecond line")
    assert reply.count(b"\n") == 2
    assert len(reply) < MAX_ERROR_CHARS + 20


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("1048576", 1 << 20), ("512M", 512 << 20), ("10GiB", 10 << 30),
    ("1.5g", 3 << 29), ("1.5", 1), ("  2 k ", 2048), ("8191P", 8191 << 50),
    ("0000000000000000000000000000001k", 1024),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", [
    "9" * 400, "9" * 400 + ".5k", "9" * 20, "99999999P", "8192P", "1e400", "-1", "inf", "nan",
    "1.2.3", "", "k", "1 2",
])
def test_parse_size_refuses_with_a_short_message(text):
    with pytest.raises(ValueError) as caught:
        parse_size(text)
    assert len(str(caught.value)) < 200


def test_parse_size_limit_is_exact():
    assert parse_size(str(MAX_SIZE)) == MAX_SIZE
    with pytest.raises(ValueError, match="too large"):
        parse_size(str(MAX_SIZE + 1))


@pytest.mark.parametrize("name, text", [
    ("max_cache_size", "9" * 400),
    ("max_cache_size", "9" * 400 + ".5k"),
    ("freshness_window", "9" * 400),
    ("freshness_window", "1e999"),
    ("freshness_window", "-inf"),
    ("refresh_interval", "nan"),
    ("high_water", "9" * 400),
    ("pull_concurrency", "9" * 5000),
    ("pull_concurrency", "1.5"),
    ("verbose", "9" * 400),
    ("x" * 100_000, "1"),
])
def test_set_refuses_hostile_values_with_a_short_bad_request(name, text):
    settings = Settings()
    before = settings.items()
    with pytest.raises(BadRequest) as caught:
        settings.set(name, text)
    # short: the hostile text is cut, whatever the list of settable names adds
    assert len(str(caught.value)) < 200 + len(", ".join(s.name for s in SPECS))
    assert settings.items() == before

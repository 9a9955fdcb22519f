"""Unit tests of the GLOB pattern compiler (no daemon)."""

import fnmatch

import pytest

from s3pool.errors import BadRequest
from s3pool.globpattern import compile_glob, expand_braces


def matches(pattern, key):
    return any(m.match(key) for m in compile_glob(pattern))


@pytest.mark.parametrize("pattern, key, expected", [
    ("*.txt", "a.txt", True),
    ("*.txt", "d/a.txt", False),
    ("?", "a", True),
    ("?", "/", False),
    ("a/**", "a/b/c/d", True),
    ("a/**/z", "a/z", True),
    ("a/**/z", "a/b/c/z", True),
    ("a/**/z", "a/bz", False),
    ("**", "anything/at/all", True),
    ("[abc]x", "bx", True),
    ("[abc]x", "dx", False),
    ("[!abc]x", "dx", True),
    ("[^abc]x", "ax", False),
    ("[a-c]", "b", True),
    ("[a-c]", "/", False),
    ("[!a]", "/", False),
    ("x{1,2,3}", "x2", True),
    ("x{1,2,3}", "x4", False),
    ("{a,b{c,d}}e", "bde", True),
    ("\\*", "*", True),
    ("\\*", "x", False),
    ("a.b", "axb", False),
    ("(x)+", "(x)+", True),
    ("[", "[", True),
    ("{a", "{a", True),
])
def test_glob_semantics(pattern, key, expected):
    assert matches(pattern, key) is expected


def test_literal_prefix_is_extracted_per_alternative():
    prefixes = sorted(m.prefix for m in compile_glob("logs/{2025,2026}/*.gz"))
    assert prefixes == ["logs/2025/", "logs/2026/"]
    assert compile_glob("*.gz")[0].prefix == ""
    assert compile_glob("a\\*b*")[0].prefix == "a*b"


def test_brace_expansion_is_bounded():
    assert len(expand_braces("{a,b}{c,d}{e,f}")) == 8
    with pytest.raises(BadRequest):
        compile_glob("{a,b}" * 12)


def test_agrees_with_fnmatch_where_fnmatch_rules_apply():
    keys = ["a.txt", "b.csv", "ab.txt", "x1", "x22"]
    for pattern in ["*.txt", "?.csv", "x?", "x[0-9]", "[!a]*"]:
        ours = [k for k in keys if matches(pattern, k)]
        theirs = [k for k in keys if fnmatch.fnmatchcase(k, pattern.replace("[!", "[!"))]
        assert ours == theirs, pattern

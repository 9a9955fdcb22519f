"""Unit tests of the GLOB pattern compiler and matchers (no daemon)."""

import fnmatch
import random
import time

import pytest

from s3pool.errors import BadRequest
from s3pool.listing.globmatch import BitNfa
from s3pool.listing.globpattern import compile_glob, expand_braces

pytestmark = pytest.mark.unit


def matches(pattern, key):
    """Both engines must agree; the answer is theirs."""
    by_nfa = compile_glob(pattern, engine="nfa").match(key)
    by_re = compile_glob(pattern, engine="re").match(key)
    assert by_nfa is by_re, (pattern, key, by_nfa, by_re)
    return by_nfa


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
    ("\\[", "[", True),
    ("\\{a", "{a", True),
    ("a}", "a}", None),
    ("[]]", "]", True),
    ("[]-a]", "^", True),
    ("[!]a]", "b", True),
    ("[a-]", "-", True),
    ("[-a]", "-", True),
    ("[a-b-c]", "-", True),
    ("[\\]]", "]", True),
    ("[\\--z]", "-", True),
    ("[/a]", "/", False),
    ("a**b", "a/x/yb", True),
    ("a/**b", "a/b", True),
    ("a/**/", "a/", True),
    ("a/**/", "a/b/c/", True),
    ("**/b", "b", True),
    ("**/b", "xb", False),
    ("**/*", "a/b/c", True),
    ("x***/y", "x/a/y", True),
    ("x***/y", "xy", False),
    ("{}a", "a", True),
    ("{x}", "x", True),
    ("{a,}b", "b", True),
    ("{[,],x}y", ",y", True),
    ("{a\\,b,c}", "a,b", True),
    ("é*ü", "éxyü", True),
])
def test_glob_semantics(pattern, key, expected):
    if expected is None:
        with pytest.raises(BadRequest):
            compile_glob(pattern)
        return
    assert matches(pattern, key) is expected


def test_literal_prefixes_are_disjoint_and_in_key_order():
    assert compile_glob("logs/{2026,2025}/*.gz").prefixes == ("logs/2025/", "logs/2026/")
    assert compile_glob("*.gz").prefixes == ("",)
    assert compile_glob("a\\*b*").prefixes == ("a*b",)
    # one alternative's range holds the other's: read it once
    assert compile_glob("{logs/a/*,logs/*}").prefixes == ("logs/",)
    assert compile_glob("{b*,a?,*c}").prefixes == ("",)


def test_runs_of_wildcards_fold_into_one():
    from s3pool.listing.globpattern import tokenize

    assert tokenize("a/**/**/**/b")[1] == tokenize("a/**/b")[1]
    assert tokenize("**/**")[1] == tokenize("**")[1]
    assert len(tokenize("**/" * 1000 + "x")[1]) == 2
    compiled = compile_glob("**/" * 1000 + "*x*y", engine="nfa")
    assert compiled.match("a/b/zxzy") and not compiled.match("a/b/zx/y")


def test_brace_expansion_is_bounded():
    assert len(expand_braces("{a,b}{c,d}{e,f}")) == 8
    with pytest.raises(BadRequest):
        compile_glob("{a,b}" * 12)
    with pytest.raises(BadRequest, match="nested"):
        compile_glob("{" * 2000 + "}" * 2000)
    with pytest.raises(BadRequest, match="too complex"):
        compile_glob("{a,b}" * 10 + "x" * 100)


def test_a_long_malformed_pattern_gets_a_short_message():
    with pytest.raises(BadRequest) as caught:
        compile_glob("a" * 4000 + "[")
    assert "unclosed '[' at offset 4000" in str(caught.value) and len(str(caught.value)) < 400


@pytest.mark.parametrize("pattern, words", [
    ("[abc", "unclosed '[' at offset 0"),
    ("ab[!c", "unclosed '[' at offset 2"),
    ("[a\\]", "unclosed '['"),
    ("[!]", "unclosed '['"),
    ("{a,b", "unclosed '{' at offset 0"),
    ("x{a,{b,c}", "unclosed '{' at offset 1"),
    ("{[}]", "unclosed '{'"),
    ("a}", "unmatched '}' at offset 1"),
    ("{a}}", "unmatched '}' at offset 3"),
    ("a\\", "lone backslash"),
    ("{a,b\\}", "unclosed '{'"),
    ("[z-a]", "bad range z-a"),
])
def test_malformed_patterns_are_errors_naming_the_problem(pattern, words):
    with pytest.raises(BadRequest) as caught:
        compile_glob(pattern)
    assert words in str(caught.value) and repr(pattern) in str(caught.value)


def test_agrees_with_fnmatch_where_fnmatch_rules_apply():
    keys = ["a.txt", "b.csv", "ab.txt", "x1", "x22"]
    for pattern in ["*.txt", "?.csv", "x?", "x[0-9]", "[!a]*"]:
        ours = [k for k in keys if matches(pattern, k)]
        theirs = [k for k in keys if fnmatch.fnmatchcase(k, pattern.replace("[!", "[!"))]
        assert ours == theirs, pattern


PIECES = ["a", "b", "/", "*", "**", "**/", "?", "[ab]", "[!a]", "[a-b]", "{a,b/}", "{*,?}"]


def test_the_nfa_agrees_with_the_regex_on_random_patterns():
    rng = random.Random(7)
    keys = ["".join(rng.choice("ab/c") for _ in range(rng.randrange(0, 9)))
            for _ in range(300)] + ["", "/", "//", "a/", "/a"]
    for _ in range(400):
        pattern = "".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 6)))
        nfa = compile_glob(pattern, engine="nfa")
        regex = compile_glob(pattern, engine="re")
        for key in keys:
            assert nfa.match(key) is regex.match(key), (pattern, key)
            # matching under a prefix gives the same answer
            for prefix in nfa.prefixes:
                if key.startswith(prefix):
                    assert bool(nfa.matcher_under(prefix)(key)) is regex.match(key), (pattern, key)


@pytest.mark.parametrize("pattern", [
    "*a" * 12 + "b",
    "*a" * 60 + "b",
    "**a" * 12 + "b",
    "**/" + "*a" * 12 + "b",
    "?*" * 30 + "b",
    "*[a]" * 20 + "[!a]",
    "{*a*a*a*a*a*a*a,a*a*a*a*a*a*a*a}*a*a*a*a*a*b",
])
def test_hostile_patterns_match_in_time_linear_in_the_key(pattern, monkeypatch):
    compiled = compile_glob(pattern)
    assert compiled.engine == "nfa"
    # a backtracking matcher needs minutes to hours for each of these; this one
    # takes at most one NFA step per character it reads (counted, not timed)
    steps = 0
    real_step = BitNfa.step

    def counted_step(nfa: BitNfa, state: int, char: str) -> int:
        nonlocal steps
        steps += 1
        return real_step(nfa, state, char)

    monkeypatch.setattr(BitNfa, "step", counted_step)
    keys = ["a" * n for n in (60, 200, 1024)] + ["x/" + "a" * 500, ("a" * 30 + "/") * 30]
    for key in keys:
        assert compiled.match(key) is False
    # with the last character the patterns want, the whole key is read
    for key in keys:
        compiled.match(key + "b")
    assert 0 < steps <= sum(len(key) + len(key + "b") for key in keys), steps


def star_glob(pattern: str, key: str) -> bool:
    """Reference for patterns of literals, '?' and '*' only: a table over
    (pattern position, key position), no backtracking."""
    reachable = {0}
    for char in key:
        reachable = {j for j in _skip_stars(pattern, reachable)}
        following = set()
        for j in reachable:
            if j < len(pattern):
                if pattern[j] == "*" and char != "/":
                    following.add(j)
                elif pattern[j] == "?" and char != "/" or pattern[j] == char:
                    following.add(j + 1)
        reachable = following
    return len(pattern) in _skip_stars(pattern, reachable)


def _skip_stars(pattern, positions):
    out = set(positions)
    for j in sorted(positions):
        while j < len(pattern) and pattern[j] == "*":
            j += 1
            out.add(j)
    return out


def test_the_dfa_cache_is_bounded_and_still_right_after_it_is_dropped(monkeypatch):
    from s3pool.listing import globmatch

    # a small cache, so that keys walk through more states than it holds
    monkeypatch.setattr(globmatch, "DFA_MAX_STATES", 16)
    pattern = "*a?" * 40 + "b"
    compiled = compile_glob(pattern, engine="nfa")
    rng = random.Random(3)
    keys = ["".join(rng.choice("ab") for _ in range(200)) for _ in range(20)]
    keys += ["a" * 80 + "b", "a" * 80 + "b/", "ab" * 40 + "b", "ab" * 39 + "b"]
    dropped = 0
    for key in keys:
        before = compiled._dfa.sets
        assert compiled.match(key) is star_glob(pattern, key), key
        dropped += compiled._dfa.sets is not before
        assert len(compiled._dfa.sets) <= globmatch.DFA_MAX_STATES
    assert dropped, "the test should make the cache overflow"
    assert compiled.match("a" * 80 + "b") is True
    # a scan under a prefix survives the cache being dropped mid-scan
    under = compiled.matcher_under("")
    assert [bool(under(key)) for key in keys] == [star_glob(pattern, key) for key in keys]


def test_simple_patterns_keep_the_regex_fast_path():
    for pattern in ["logs/2026/*.gz", "img/*.{png,jpg}", "a/b?/[0-9]", "a/**/b*", "**/*.json",
                    "logs/*/*/x?/*.json", "*/*", "a*/**/b*c", "{2021,2022,2023,2024,2025}/*.csv",
                    "a/**/**/**/b*", "**/***", "a/**/**"]:
        assert compile_glob(pattern).engine == "re", pattern
    for pattern in ["*a*", "a*b*/c", "**a*", "**/a/*", "x**/y*", "a/**/b/**/c", "*/**/*/*",
                    "{*a*,b}", "{a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q}*", "x/" + "*/" * 200]:
        assert compile_glob(pattern).engine == "nfa", pattern


def test_patterns_left_to_the_regex_do_not_backtrack_much():
    rng = random.Random(11)
    keys = ["a" * 1024, ("a" * 30 + "/") * 33, "/" * 1000, ("a/" * 500)[:-1]]
    chosen = 0
    for _ in range(3000):
        pattern = "".join(rng.choice(PIECES + ["a*", "*a", "/*/"])
                          for _ in range(rng.randrange(2, 9)))
        try:
            compiled = compile_glob(pattern)
        except BadRequest:
            continue
        if compiled.engine != "re":
            continue
        chosen += 1
        for key in keys:
            # this thread's CPU time: backtracking burns CPU, while a worker
            # descheduled on a loaded machine does not count against the bound
            started = time.thread_time()
            compiled.match(key)
            compiled.match(key + "b")
            assert time.thread_time() - started < 0.05, (pattern, key[:20])
    assert chosen > 300

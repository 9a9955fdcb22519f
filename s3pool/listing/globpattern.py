"""GLOB patterns over S3 keys, matched in time linear in the key.

Rules (SPEC): ``*`` and ``?`` do not cross ``/``; ``**`` does (and
``**/`` also matches no directory at all, so ``a/**/b`` matches ``a/b``);
``[...]`` classes with ``!`` or ``^`` negation (a class never matches
``/``); ``{a,b}`` alternatives, nested; a backslash escapes the next
character. A malformed pattern (an unclosed ``[`` or ``{``, a ``}`` with
no ``{``, a lone trailing backslash, a reversed range) is a BadRequest
naming the problem, never an empty success.

Any user can PUSH a key, so a pattern must not be able to make matching
slow: translated into a regular expression for Python's backtracking
``re``, ``*a*a*a*a*a*a*a*a*b`` against sixty ``a`` took seconds and each
more star multiplied that. So a pattern is compiled into a small NFA,
one bit per position, run as a lazily built DFA (Thompson's construction
with the subset states cached, as RE2 does; see :mod:`s3pool.listing.globmatch`):
each character of a key costs one dictionary lookup once the states it
meets are known, and at worst one step over the pattern's bit set;
nothing backtracks.
Only patterns whose regular expression provably cannot backtrack much (at
most one wildcard, or at most one ``*`` per ``/``-separated segment; see
:func:`_regex_is_linear`) still go to ``re``, which is faster for them.

A pattern is first expanded into its brace alternatives; each one's
literal prefix (the text before its first wildcard) lets the listing
index read only the keys under it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from s3pool.errors import BadRequest
from s3pool.listing.globmatch import (
    CLASS,
    DSTAR,
    DSTAR_SLASH,
    LIT,
    ONE,
    STAR,
    WILDCARDS,
    BitNfa,
    CharClass,
    LazyDfa,
    Token,
)

MAX_ALTERNATIVES = 1024
MAX_PATTERN_LENGTH = 4096
MAX_BRACE_DEPTH = 32
# Characters and wildcards of all alternatives together: the width of the
# NFA's bit set, so of every cached DFA state.
MAX_POSITIONS = 65536
# Patterns small enough for the `re` fast path: its worst case is one pass
# of the fixed part per split point of the key, (key length) x (this).
_RE_MAX_TOKENS = 128
_RE_MAX_ALTERNATIVES = 16
_RE_MAX_TOTAL_TOKENS = 512

# --- syntax: check the pattern, expand its braces ---------------------------


def _shown(pattern: str) -> str:
    """*pattern* quoted for an error message, cut if it is long."""
    if len(pattern) <= 200:
        return repr(pattern)
    return f"{pattern[:200]!r}... ({len(pattern)} characters)"


def _where(pattern: str, index: int) -> str:
    return f"at offset {index} of glob pattern {_shown(pattern)}"


def _class_end(pattern: str, start: int) -> int:
    """Index of the ']' closing the class that opens at *start*, or -1."""
    i = start + 1
    if i < len(pattern) and pattern[i] in "!^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1  # a ']' first in a class is a member
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return -1


def _parse_class(pattern: str, start: int, end: int) -> CharClass:
    """The class between the '[' at *start* and the ']' at *end*."""
    i = start + 1
    negate = pattern[i] in "!^"
    if negate:
        i += 1
    # atoms: a member character, or None for a '-' that can join a range
    atoms: list[str | None] = []
    first = i
    while i < end:
        c = pattern[i]
        if c == "\\":
            atoms.append(pattern[i + 1])
            i += 2
        elif c == "-" and first < i < end - 1:
            atoms.append(None)
            i += 1
        else:
            atoms.append(c)
            i += 1
    ranges: list[tuple[str, str]] = []
    j = 0
    while j < len(atoms):
        atom = atoms[j]
        if atom is None:  # a '-' that joins nothing is a member
            ranges.append(("-", "-"))
            j += 1
        elif j + 2 < len(atoms) and atoms[j + 1] is None and (hi := atoms[j + 2]) is not None:
            lo = atom
            if lo > hi:
                raise BadRequest(f"bad range {lo}-{hi} in {pattern[start:end + 1]} "
                                 + _where(pattern, start))
            ranges.append((lo, hi))
            j += 3
        else:
            ranges.append((atom, atom))
            j += 1
    return CharClass(negate, tuple(ranges))


class _Alt:
    """``{a,b,...}``: a list of alternatives, each a sequence of parts."""

    def __init__(self, choices: list[list[str | _Alt]]) -> None:
        self.choices = choices


def _parse_braces(pattern: str) -> list[str | _Alt]:
    """The pattern as a sequence of raw text chunks and _Alt groups.

    Checks the whole syntax on the way: escapes, classes and braces.
    """
    pos = 0
    n = len(pattern)

    def sequence(opened_at: int | None, depth: int) -> list[str | _Alt]:
        nonlocal pos
        parts: list[str | _Alt] = []
        chunk: list[str] = []
        while pos < n:
            c = pattern[pos]
            if c == "\\":
                if pos + 1 >= n:
                    raise BadRequest(f"glob pattern {_shown(pattern)} ends with a lone backslash "
                                     "(escape it as \\\\)")
                chunk.append(pattern[pos:pos + 2])
                pos += 2
            elif c == "[":
                end = _class_end(pattern, pos)
                if end < 0:
                    raise BadRequest(f"unclosed '[' {_where(pattern, pos)} "
                                     "(escape a literal one as \\[)")
                _parse_class(pattern, pos, end)  # checks its ranges
                chunk.append(pattern[pos:end + 1])
                pos = end + 1
            elif c == "{":
                if chunk:
                    parts.append("".join(chunk))
                    chunk = []
                start = pos
                if depth >= MAX_BRACE_DEPTH:
                    raise BadRequest(f"braces nested more than {MAX_BRACE_DEPTH} deep "
                                     + _where(pattern, start))
                pos += 1
                choices = [sequence(start, depth + 1)]
                while pattern[pos] == ",":
                    pos += 1
                    choices.append(sequence(start, depth + 1))
                pos += 1  # the '}'
                parts.append(_Alt(choices))
            elif c == "}":
                if opened_at is None:
                    raise BadRequest(f"unmatched '}}' {_where(pattern, pos)} "
                                     "(escape a literal one as \\})")
                break
            elif c == "," and opened_at is not None:
                break
            else:
                chunk.append(c)
                pos += 1
        else:
            if opened_at is not None:
                raise BadRequest(f"unclosed '{{' {_where(pattern, opened_at)} "
                                 "(escape a literal one as \\{)")
        if chunk:
            parts.append("".join(chunk))
        return parts

    return sequence(None, 0)


def _count(parts: list[str | _Alt]) -> int:
    total = 1
    for part in parts:
        if isinstance(part, _Alt):
            total *= sum(_count(choice) for choice in part.choices)
            if total > MAX_ALTERNATIVES:
                return total
    return total


def _expand(parts: list[str | _Alt]) -> list[str]:
    out = [""]
    for part in parts:
        if isinstance(part, _Alt):
            options = [text for choice in part.choices for text in _expand(choice)]
            out = [head + option for head in out for option in options]
        else:
            out = [head + part for head in out]
    return out


def expand_braces(pattern: str) -> list[str]:
    """``a{b,c{d,e}}f`` -> ``[abf, acdf, acef]``; raise BadRequest if malformed."""
    parts = _parse_braces(pattern)
    if _count(parts) > MAX_ALTERNATIVES:
        raise BadRequest(f"glob pattern expands to more than {MAX_ALTERNATIVES} alternatives")
    return _expand(parts)


def tokenize(alternative: str) -> tuple[str, list[Token]]:
    """One brace-free, checked pattern -> (literal prefix, tokens)."""
    tokens: list[Token] = []
    prefix: list[str] = []
    literal_so_far = True
    i, n = 0, len(alternative)
    while i < n:
        c = alternative[i]
        if c == "\\":
            tokens.append((LIT, alternative[i + 1]))
            i += 2
        elif c == "*":
            if i + 1 < n and alternative[i + 1] == "*":
                if i + 2 < n and alternative[i + 2] == "/":
                    tokens.append((DSTAR_SLASH,))
                    i += 3
                else:
                    tokens.append((DSTAR,))
                    i += 2
                    while i < n and alternative[i] == "*":
                        i += 1
            else:
                tokens.append((STAR,))
                i += 1
        elif c == "?":
            tokens.append((ONE,))
            i += 1
        elif c == "[":
            end = _class_end(alternative, i)
            tokens.append((CLASS, _parse_class(alternative, i, end)))
            i = end + 1
        else:
            tokens.append((LIT, c))
            i += 1
        if len(tokens) > 1 and tokens[-1][0] in WILDCARDS and tokens[-2][0] in WILDCARDS:
            _merge_wildcards(tokens)
        if literal_so_far:
            if tokens[-1][0] == LIT:
                prefix.append(tokens[-1][1])
            else:
                literal_so_far = False
    return "".join(prefix), tokens


def _merge_wildcards(tokens: list[Token]) -> None:
    """Fold the last two tokens, both wildcards, into one where they are
    equivalent to one (``**/**/`` is ``**/``, ``**/**`` is ``**``...), so
    that no chain of them makes the NFA's epsilon closure long."""
    first, second = tokens[-2][0], tokens[-1][0]
    if first == DSTAR or (first == DSTAR_SLASH and second == DSTAR_SLASH):
        del tokens[-1]  # '.*' absorbs what follows; '(?:.*/)?(?:.*/)?' is one
    elif second == DSTAR:
        del tokens[-2]  # what comes before '.*' is absorbed
    # '**/' then '*' stays two: '(?:.*/)?[^/]*' is no single wildcard


# --- the `re` fast path -----------------------------------------------------


def regex_source(tokens: list[Token]) -> str:
    """A Python regular expression for one alternative's tokens."""
    out = []
    for token in tokens:
        kind = token[0]
        if kind == LIT:
            out.append(re.escape(token[1]))
        elif kind == ONE:
            out.append("[^/]")
        elif kind == STAR:
            out.append("[^/]*")
        elif kind == DSTAR:
            out.append(".*")
        elif kind == DSTAR_SLASH:
            out.append("(?:.*/)?")
        else:
            cls: CharClass = token[1]
            items = "".join(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                            for lo, hi in cls.ranges)
            if cls.negate:
                out.append(f"[^/{items}]")
            elif items:
                out.append(f"(?!/)[{items}]")
            else:
                out.append("(?!)")
    return "".join(out)


# --- the compiled pattern ---------------------------------------------------


def _disjoint_prefixes(prefixes: list[str]) -> tuple[str, ...]:
    """The shortest prefixes covering all of *prefixes*, sorted: their key
    ranges do not overlap and come in key order."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if kept and prefix.startswith(kept[-1]):
            continue
        kept.append(prefix)
    return tuple(kept)


@dataclass
class CompiledGlob:
    """A checked pattern: the key ranges to read and a matcher for keys."""

    pattern: str
    alternatives: tuple[str, ...]
    # literal prefixes of the alternatives, none a prefix of another, sorted:
    # every matching key lies under one of them, and reading them in turn
    # reads keys in key order
    prefixes: tuple[str, ...]
    engine: str  # "re" or "nfa"
    _regex: re.Pattern[str] | None = field(default=None, repr=False)
    _dfa: LazyDfa | None = field(default=None, repr=False)
    _suffix: str = ""  # every match ends with it

    def match(self, key: str) -> bool:
        if self._regex is not None:
            return self._regex.fullmatch(key) is not None
        assert self._dfa is not None
        return key.endswith(self._suffix) and self._dfa.match(key)

    def matcher_under(self, prefix: str) -> Callable[[str], object]:
        """A test for keys that all start with *prefix* (one of :attr:`prefixes`):
        its result is true for a key that matches."""
        if self._regex is not None:
            return self._regex.fullmatch  # a call per key less than a wrapper
        dfa = self._dfa
        assert dfa is not None
        # the prefix is read once, not once per key
        after = dfa.run(prefix)
        if not after:
            return lambda key: False
        cut = len(prefix)
        suffix = self._suffix
        # the cache may be rebuilt mid-scan; then start from the prefix again
        sets, start = dfa.sets, after

        def matches(key: str) -> bool:
            nonlocal sets, start
            if not key.endswith(suffix):
                return False
            if dfa.sets is not sets:
                sets, start = dfa.sets, dfa.run(prefix)
            if not start:
                return False
            # LazyDfa.run inlined: this runs once per key of the scan
            state, table = start, dfa.table
            try:
                for char in key[cut:]:
                    state = table[state][char]
                    if not state:
                        return False
            except KeyError:
                state = dfa.run(key[cut:], start)
            return dfa.accepting[state]

        return matches


def compile_glob(pattern: str, engine: str = "auto") -> CompiledGlob:
    """Check and compile *pattern*; raise BadRequest naming what is wrong.

    *engine* is "auto", or "nfa" / "re" to force one (tests, benchmarks;
    "re" is only safe where "auto" would choose it).
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise BadRequest(f"glob pattern longer than {MAX_PATTERN_LENGTH} characters")
    alternatives = tuple(dict.fromkeys(expand_braces(pattern)))
    compiled = [tokenize(alternative) for alternative in alternatives]
    if sum(len(tokens) + 2 for _, tokens in compiled) > MAX_POSITIONS:
        raise BadRequest(f"glob pattern {_shown(pattern)} is too complex: its "
                         f"{len(compiled)} alternatives hold more than {MAX_POSITIONS} "
                         "characters and wildcards")
    prefixes = _disjoint_prefixes([prefix for prefix, _ in compiled])
    # alternatives are tried one after the other: their costs add up
    simple = (len(compiled) <= _RE_MAX_ALTERNATIVES
              and sum(len(tokens) for _, tokens in compiled) <= _RE_MAX_TOTAL_TOKENS
              and all(_regex_is_linear(tokens) for _, tokens in compiled))
    if engine == "re" or (engine == "auto" and simple):
        source = "|".join(f"(?:{regex_source(tokens)})" for _, tokens in compiled)
        return CompiledGlob(pattern, alternatives, prefixes, "re",
                            _regex=re.compile(source, re.DOTALL))
    return CompiledGlob(pattern, alternatives, prefixes, "nfa",
                        _dfa=LazyDfa(BitNfa([tokens for _, tokens in compiled])),
                        _suffix=_common_literal_suffix([tokens for _, tokens in compiled]))


_SLASH = (LIT, "/")


def _one_star_per_segment(tokens: list[Token]) -> bool:
    stars = 0
    for token in tokens:
        if token == _SLASH:
            stars = 0
        elif token[0] == STAR:
            stars += 1
            if stars > 1:
                return False
        elif token[0] in WILDCARDS:
            return False
    return True


def _regex_is_linear(tokens: list[Token]) -> bool:
    """Does Python's backtracking `re` match these tokens in time
    O(len(key) x len(tokens))? True, for patterns of at most 128 tokens, when

    - there is at most one wildcard (``*``, ``**``, ``**/``): each split of
      the key is tried once;
    - there is no ``**`` and at most one ``*`` between two '/': what follows a
      ``*`` up to the next '/' holds no '/', so only one length of the ``*``
      reaches that '/', and each segment is entered once;
    - as above, plus one ``**/`` at the start or right after a '/' followed
      by a last segment with at most one ``*``: that segment is tried after
      each '/' of the key, and each try reads one key segment.

    A segment with two stars (``*a*b``) is what backtracks exponentially.
    """
    if len(tokens) > _RE_MAX_TOKENS:
        return False
    kinds = [token[0] for token in tokens]
    if sum(kind in WILDCARDS for kind in kinds) <= 1:
        return True
    if DSTAR in kinds:
        return False
    at = [i for i, kind in enumerate(kinds) if kind == DSTAR_SLASH]
    if not at:
        return _one_star_per_segment(tokens)
    if len(at) > 1 or (at[0] > 0 and tokens[at[0] - 1] != _SLASH):
        return False
    tail = tokens[at[0] + 1:]
    if _SLASH in tail or sum(kind == STAR for kind in kinds[at[0] + 1:]) > 1:
        return False
    return _one_star_per_segment(tokens[:at[0]])


def _common_literal_suffix(alternatives: list[list[Token]]) -> str:
    """The literal text every match ends with (a cheap test before the DFA)."""
    suffixes = []
    for tokens in alternatives:
        tail: list[str] = []
        for token in reversed(tokens):
            if token[0] != LIT:
                break
            tail.append(token[1])
        suffixes.append("".join(reversed(tail)))
    common = suffixes[0]
    for suffix in suffixes[1:]:
        while not suffix.endswith(common):
            common = common[1:]
    return common

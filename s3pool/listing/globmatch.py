"""The GLOB matcher that cannot backtrack: a bit-set NFA run as a lazy DFA.

A brace-free pattern is a list of tokens (see :mod:`s3pool.listing.globpattern`).
:class:`BitNfa` gives each token one bit of a Python int ("about to
match this token"); one step over a character is a few shifts and masks
of that int. :class:`LazyDfa` numbers the bit sets it meets and caches
their transitions per character, as RE2 does: once a scan has seen the
states its keys walk through, a character costs one dictionary lookup.
The cache is bounded; when it fills it is dropped and rebuilt as needed.
Matching is linear in the key whatever the pattern: nothing backtracks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Cached DFA states (each a bit set of at most ~4k bits) before the cache
# is dropped and rebuilt as needed; bounds memory, not correctness.
DFA_MAX_STATES = 2048
DFA_MAX_TRANSITIONS = 200_000

# token kinds of a brace-free pattern
LIT = "lit"  # one literal character
ONE = "one"  # ? : any character but '/'
CLASS = "class"  # [...] : never '/'
STAR = "star"  # * : any run of characters without '/'
DSTAR = "dstar"  # ** : any run of characters
DSTAR_SLASH = "dstar/"  # **/ : nothing, or any run of characters ending in '/'
WILDCARDS = (STAR, DSTAR, DSTAR_SLASH)


@dataclass(frozen=True)
class CharClass:
    negate: bool
    ranges: tuple[tuple[str, str], ...]

    def matches(self, char: str) -> bool:
        if char == "/":
            return False
        inside = any(lo <= char <= hi for lo, hi in self.ranges)
        return inside != self.negate


Token = tuple[Any, ...]  # (kind,) | (LIT, char) | (CLASS, CharClass)


class BitNfa:
    """Every alternative's tokens as positions of one bit set.

    A set bit means "about to match this token". Each token takes one
    bit, ``**/`` two (an entry that may skip the group, and a loop that
    must end in '/'); after each alternative's tokens comes its accept bit.
    """

    def __init__(self, alternatives: list[list[Token]]) -> None:
        self.literal: dict[str, int] = {}
        self.one = 0  # advances on any character but '/'
        self.classes: list[tuple[int, CharClass]] = []
        self.stay_not_slash = 0  # '*' positions: stay on any character but '/'
        self.stay_any = 0  # '**' positions and the loop of '**/': stay on anything
        self.advance_slash = 0  # the loop of '**/' advances on '/'
        self.skip_one = 0  # epsilon to the next bit
        self.skip_two = 0  # epsilon over the next bit (entry of '**/')
        self.accept = 0
        start = 0
        bit = 0
        for tokens in alternatives:
            start |= 1 << bit
            for token in tokens:
                kind, here = token[0], 1 << bit
                if kind == LIT:
                    self.literal[token[1]] = self.literal.get(token[1], 0) | here
                elif kind == ONE:
                    self.one |= here
                elif kind == CLASS:
                    self.classes.append((here, token[1]))
                elif kind == STAR:
                    self.stay_not_slash |= here
                    self.skip_one |= here
                elif kind == DSTAR:
                    self.stay_any |= here
                    self.skip_one |= here
                else:  # '**/': entry bit, then loop bit
                    self.skip_one |= here
                    self.skip_two |= here
                    bit += 1
                    self.stay_any |= 1 << bit
                    self.advance_slash |= 1 << bit
                bit += 1
            self.accept |= 1 << bit
            bit += 1
        self.start = self.closure(start)
        self._advance_cache: dict[str, int] = {}

    def closure(self, state: int) -> int:
        while True:
            grown = state | ((state & self.skip_one) << 1) | ((state & self.skip_two) << 2)
            if grown == state:
                return state
            state = grown

    def _advance(self, char: str) -> int:
        mask = self._advance_cache.get(char)
        if mask is None:
            mask = self.literal.get(char, 0)
            if char == "/":
                mask |= self.advance_slash
            else:
                mask |= self.one
                for here, cls in self.classes:
                    if cls.matches(char):
                        mask |= here
            if len(self._advance_cache) < 65536:
                self._advance_cache[char] = mask
        return mask

    def step(self, state: int, char: str) -> int:
        stay = self.stay_any | (self.stay_not_slash if char != "/" else 0)
        return self.closure(((state & self._advance(char)) << 1) | (state & stay))


class LazyDfa:
    """DFA states (NFA bit sets) numbered and their transitions cached.

    State 0 is the dead state, 1 the start. Not thread-safe: one GLOB
    compiles its own.
    """

    def __init__(self, nfa: BitNfa) -> None:
        self.nfa = nfa
        self._reset()

    def _reset(self) -> None:
        self.ids: dict[int, int] = {}
        self.sets: list[int] = []
        self.table: list[dict[str, int]] = []
        self.accepting: list[bool] = []
        self.transitions = 0
        self._intern(0)
        self._intern(self.nfa.start)

    def _intern(self, bits: int) -> int:
        found = self.ids.get(bits)
        if found is None:
            found = len(self.sets)
            self.ids[bits] = found
            self.sets.append(bits)
            self.table.append({})
            self.accepting.append(bool(bits & self.nfa.accept))
        return found

    def _add(self, state: int, char: str) -> int:
        bits = self.nfa.step(self.sets[state], char)
        if len(self.sets) >= DFA_MAX_STATES or self.transitions >= DFA_MAX_TRANSITIONS:
            self._reset()  # the caller holds no other state id
            return self._intern(bits)
        target = self._intern(bits)
        self.table[state][char] = target
        self.transitions += 1
        return target

    def run(self, text: str, state: int = 1) -> int:
        """The state after reading *text* from *state* (0: no match possible)."""
        start, table = state, self.table
        try:  # every transition already known: the common case, kept tight
            for char in text:
                state = table[state][char]
                if not state:
                    return 0
            return state
        except KeyError:
            return self._run_adding(text, start)

    def _run_adding(self, text: str, state: int) -> int:
        table = self.table
        for char in text:
            following = table[state].get(char)
            if following is None:
                following = self._add(state, char)
                table = self.table
            state = following
            if not state:
                return 0
        return state

    def match(self, key: str, state: int = 1) -> bool:
        end = self.run(key, state)  # may rebuild the cache: look at it after
        return self.accepting[end]

"""The order a LIST's pages come in, and how far a page can be believed.

S3 sends a LIST in the byte order of its positions (keys, and with a
delimiter the subdirectories' prefixes, ``pct/``). SeaweedFS sends it by
path component: a directory's name is compared without its slash, so
``pct/`` comes before ``pct%2F/`` and ``pct.txt``, which S3 puts first
('%' and '.' sort before '/'). Both are sound servers, and a page boundary
can fall between such names.

Two things depend on it:

- :class:`Onward` checks that each page goes on past the one before (a
  server whose pages go back would be listed for ever): in S3's byte order
  or, from the first page that does not, by path component for the rest
  of the listing. One switch at most, so no server can go back and forth.
- :func:`settle` says how far a directory's page covers, the position up to
  which the index may be made to agree with it (deleting what the page
  lacks) and a streaming readdir served. In either order no later page
  holds a position at or before a page's greatest name (a directory's
  name without its slash); positions past it wait for the next page.
"""

from __future__ import annotations

from s3pool.s3.answers import ListEntry


def by_component(position: str) -> list[str]:
    """A position's place in SeaweedFS's order: path component by component."""
    return position.split("/")


class Onward:
    """Checks that each page of one LIST goes on past the one before."""

    def __init__(self) -> None:
        self.last: list[str] = []  # the last page's positions (not empty)
        self.in_bytes = True  # the pages may still come in S3's byte order
        self.in_components = True  # ...or by path component

    def goes_on(self, entries: list[ListEntry], subdirs: list[str]) -> bool:
        """False when the page (not empty) goes on past the last in neither
        order the pages so far allow."""
        positions = [e.key for e in entries] + subdirs
        if not positions:
            return True  # empty pages are counted by the caller
        if self.last:
            # the path-component order (the dearer one) is only worked out
            # for a page that does not go on in bytes (only SeaweedFS's)
            self.in_bytes = self.in_bytes and max(positions) > max(self.last)
            if not self.in_bytes:
                self.in_components = self.in_components and (
                    max(map(by_component, positions)) > max(map(by_component, self.last)))
            if not (self.in_bytes or self.in_components):
                return False
        self.last = positions
        return True


def settle(lo: str | None, hi: str, entries: list[ListEntry], subdirs: list[str]
           ) -> tuple[str | None, tuple[list[ListEntry], list[str]], tuple[list[ListEntry],
                                                                        list[str]]]:
    """Cut a directory's page (with what earlier pages held over) at the
    position it covers up to, in either order: (that position, or None if
    it is not past *lo*; the positions up to it; the positions held over
    to the next page). *hi* is the most the page claims to cover."""
    names = [e.key for e in entries] + [d[:-1] for d in subdirs]
    if not names:
        return None, ([], []), (entries, subdirs)
    bound = min(hi, max(names))
    if lo is not None and bound <= lo:
        return None, ([], []), (entries, subdirs)
    if all(e.key <= bound for e in entries) and all(d <= bound for d in subdirs):
        return bound, (entries, subdirs), ([], [])
    return bound, ([e for e in entries if e.key <= bound], [d for d in subdirs if d <= bound]), \
        ([e for e in entries if e.key > bound], [d for d in subdirs if d > bound])

"""How far a page of a directory's LIST covers, whichever order it came in.

S3 sends a LIST in the byte order of its positions; SeaweedFS by path
component, a directory's name without its slash (``pct/`` before
``pct%2F/`` and ``pct.txt``; s3/listpages.py). A page boundary can fall
between such names. :func:`settle` says how far a directory's page
covers: the position up to which the index may be made to agree with it
(deleting what the page lacks) and a streaming readdir served. In either
order no later page holds a position at or before a page's greatest name
(a directory's name without its slash); positions past it wait for the
next page.
"""

from __future__ import annotations

from s3pool.s3.answers import ListEntry

# a page's keys and subdirectories
Part = tuple[list[ListEntry], list[str]]


def settle(lo: str | None, hi: str, entries: list[ListEntry], subdirs: list[str]
           ) -> tuple[str | None, Part, Part]:
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

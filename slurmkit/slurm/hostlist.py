"""Slurm hostlist expressions (``c[1-4,7],gpu[01-02]``), both ways.

A thin wrapper over python-hostlist (maintained by NSC, packaged in Debian as
python3-hostlist) that turns its exception into ours and treats Slurm's "no nodes"
spellings as empty.
"""

from __future__ import annotations

from collections.abc import Iterable

import hostlist as _hostlist

from slurmkit.errors import ParseError

#: What Slurm prints where a node list is empty (sacct: "None assigned").
_EMPTY = {"", "(null)", "None assigned", "None"}


def expand(expression: str) -> list[str]:
    """``"c[1-3],login"`` -> ``["c1", "c2", "c3", "login"]`` (Slurm's order, no dedup)."""
    expression = expression.strip()
    if expression in _EMPTY:
        return []
    try:
        return _hostlist.expand_hostlist(expression, allow_duplicates=True)
    except _hostlist.BadHostlist as error:
        raise ParseError("hostlist", f"{error} in {expression!r}") from None


def compress(names: Iterable[str]) -> str:
    """``["c1", "c2", "c3", "login"]`` -> ``"c[1-3],login"`` (sorted, deduplicated)."""
    names = [name for name in names if name]
    if not names:
        return ""
    return _hostlist.collect_hostlist(names)

"""Node lists as numeric ranges, without expanding them (for a million runs).

``c[001-064],login`` -> ``(("c", 1, 64, 3), ("login", -1, -1, 0))`` (prefix, first,
last, digits). Two lists share a
node when some prefix matches and the ranges overlap. Forms this cheap parser does not
understand (several bracket groups) fall back to python-hostlist's expansion.
"""

from __future__ import annotations

import re
from functools import lru_cache

from slurmkit.slurm import hostlist

Ranges = tuple[tuple[str, int, int, int], ...]

_SIMPLE = re.compile(r"^([^\[\],]*?)(\d*)$")
_BRACKET = re.compile(r"^([^\[\]]*)\[([0-9,\-]+)\]$")


def _split_top(expression: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for position, char in enumerate(expression):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(expression[start:position])
            start = position + 1
    parts.append(expression[start:])
    return [part for part in parts if part]


@lru_cache(maxsize=65536)
def ranges(expression: str) -> Ranges:
    expression = expression.strip()
    if expression in ("", "None assigned", "(null)", "None"):
        return ()
    result: list[tuple[str, int, int, int]] = []
    for part in _split_top(expression):
        match = _BRACKET.match(part)
        if match:
            prefix = match[1]
            for item in match[2].split(","):
                low, _, high = item.partition("-")
                if not low.isdigit() or (high and not high.isdigit()):
                    return _expanded(expression)
                result.append((prefix, int(low), int(high or low), len(low)))
            continue
        if "[" in part:
            return _expanded(expression)
        match = _SIMPLE.match(part)
        if match and match[2]:
            result.append((match[1], int(match[2]), int(match[2]), len(match[2])))
        else:
            result.append((part, -1, -1, 0))
    return tuple(result)


def _expanded(expression: str) -> Ranges:
    try:
        names = hostlist.expand(expression)
    except Exception:
        return ()
    return tuple(ranges(name)[0] if ranges(name) else (name, -1, -1, 0) for name in names)


def overlap(first: Ranges, second: Ranges) -> bool:
    for prefix, low, high, _ in first:
        for other_prefix, other_low, other_high, _ in second:
            if prefix == other_prefix and low <= other_high and other_low <= high:
                return True
    return False


def names(expression: str) -> list[str]:
    """Every node name (expanded; use sparingly)."""
    out = []
    for prefix, low, high, digits in ranges(expression):
        if low < 0:
            out.append(prefix)
        else:
            out.extend(f"{prefix}{number:0{digits}d}" for number in range(low, high + 1))
    return out


def count_nodes(expression: str) -> int:
    return sum(1 if low < 0 else high - low + 1 for _, low, high, _ in ranges(expression))

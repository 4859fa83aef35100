"""Formatters shared by the commands: aligned text tables and JSON of records."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples, frozensets -> plain JSON types (sets sorted, stable)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: to_jsonable(getattr(value, field.name))
                for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_jsonable(item) for item in value)
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2, ensure_ascii=False, sort_keys=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A left-aligned text table; cells are str()'d, newlines shown as '\\n'."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


#: What a terminal may act on: C0 and C1 controls (ESC starts CSI/OSC sequences, and
#: U+009B is CSI on its own), DEL, and the bidirectional overrides that reorder text.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape(text: str) -> str:
    """Text safe to print on a terminal: every control character written as its
    escape (``\\n``, ``\\x1b``, ``\\u202e``), everything else unchanged. Every
    human-facing output passes values from Slurm or users through this."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda match: _NAMED.get(match[0]) or (
        f"\\x{ord(match[0]):02x}" if ord(match[0]) < 0x100 else f"\\u{ord(match[0]):04x}"),
        text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (tuple, list, frozenset, set)):
        return escape(",".join(str(item) for item in value))
    return escape(str(value))

"""Terminal-safe text: whatever a trace holds (kernel, API, step, command and GPU names, paths) is
shown as plain characters. Control characters (ESC, BEL, CR, C1, bidirectional overrides) are written
as escapes, Rich markup in a name is never interpreted, and long names are cut for display."""

from __future__ import annotations

import re

from rich.markup import escape
from rich.text import Text

MAX_DISPLAY = 200  # characters of one name in a table cell or a line
# C0 and C1 controls, DEL, and the invisible format characters that reorder or hide text
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _escape_char(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean(value: object, limit: int | None = MAX_DISPLAY) -> str:
    """`value` as text with control characters escaped and cut to `limit` characters."""
    text = _CONTROL.sub(_escape_char, "" if value is None else str(value))
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def clean_lines(text: str) -> str:
    """A whole block (CSV, Markdown) with its line breaks kept and every other control escaped."""
    return "\n".join(clean(line, None) for line in text.split("\n"))


def cell(value: object, limit: int | None = MAX_DISPLAY) -> Text:
    """A table cell or label: plain text, never markup."""
    return Text(clean(value, limit))


def markup(value: object, limit: int | None = MAX_DISPLAY) -> str:
    """`value` for a string that Rich reads as markup: cleaned and with its markup escaped."""
    return escape(clean(value, limit))

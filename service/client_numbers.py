"""Whole numbers read from what a client sent (headers, paths, query strings), within explicit bounds.

Python refuses `int()` of a string of more than 4,300 digits with a ValueError, and one raised
where nothing caught it (reading a 5,000-digit `Content-Length`) once ended a worker. Every such
number is read here: its digits are checked, and counted, before `int()` sees them.
"""

from __future__ import annotations

LARGEST = 2**63 - 1  # the largest count, size or version any protocol here carries (int64)


def whole_number(text: str | bytes | None, maximum: int = LARGEST) -> int | None:
    """`text` as a whole number from 0 to `maximum`, or None when it is not ASCII digits or is larger."""
    if text is None:
        return None
    digits = text.decode("latin-1") if isinstance(text, bytes) else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    significant = digits.lstrip("0") or "0"  # leading zeros count against int()'s limit too
    if len(significant) > len(str(maximum)):
        return None  # larger than `maximum`, told without converting a string of any length
    number = int(significant)
    return number if number <= maximum else None

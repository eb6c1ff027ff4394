"""Numbers from what a client sent: read within bounds, never by int() of an unbounded string."""

from __future__ import annotations

import pytest

from service.client_numbers import LARGEST, whole_number


@pytest.mark.parametrize(
    ("text", "maximum", "expected"),
    [
        ("12", LARGEST, 12),
        (b"12", LARGEST, 12),
        ("0" * 5000 + "7", LARGEST, 7),  # leading zeros count against int()'s limit too
        ("9" * 5000, LARGEST, None),  # int() raises ValueError past 4,300 digits: never reached
        (str(LARGEST), LARGEST, LARGEST),
        (str(LARGEST + 1), LARGEST, None),
        ("10", 9, None),
        ("-1", LARGEST, None),
        ("+1", LARGEST, None),
        (" 1", LARGEST, None),
        ("1e3", LARGEST, None),
        ("١٢", LARGEST, None),  # digits, but not ASCII ones: str.isdigit() alone would take them
        ("", LARGEST, None),
        (None, LARGEST, None),
    ],
)
def test_only_ascii_digits_within_the_maximum_are_a_number(text, maximum, expected):
    assert whole_number(text, maximum) == expected

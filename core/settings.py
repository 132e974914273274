"""Numeric settings: as `make run` checks a template parameter (`number`), and as a function
reads one (`setting`).

`number` is the text of a CloudFormation `Number` parameter as far as it is known to be taken:
ASCII digits, an optional sign, fraction and exponent. Python's float() takes more (`1_000`, ` 5 `,
`٥`, `inf`, `nan`), so `make run` refuses those at start, naming the variable, as a deploy would.

A function sees only what the deploy of its parameter let through, and CloudFormation does not
document its grammar of a Number (Java's parsing, say, takes ` 5 `): a function refusing a spelling
the deploy took would break that deploy. So a function takes any finite number float() takes
(`setting`) and refuses only what is no number at all, NaN and infinities.
"""

from __future__ import annotations

import math
import re

# ASCII digits, an optional sign, fraction and exponent: "30", "2.5", ".5", "-1", "1e3".
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def number(text: str) -> float | None:
    """`text` as a finite number when a CloudFormation Number parameter takes it; None otherwise
    (underscores, surrounding spaces, other digits, NaN, inf, anything else)."""
    if _NUMBER.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def setting(text: str) -> float | None:
    """`text` as a function reads a numeric setting: any finite number float() takes (spaces around
    it, `1_000`, other scripts' digits: whatever the deploy let through); None otherwise."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None

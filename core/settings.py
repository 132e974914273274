"""Numeric settings as a deploy takes them: the text of a CloudFormation `Number` parameter.

Python's float() and int() take more than a deploy does: `1_000` (underscores between digits),
` 5 ` (surrounding spaces), `٥` (digits of other scripts), `inf` and `nan`. A value a function or
`make run` took that way would be refused by the deploy of the same setting (the template's
parameter), or worked locally and failed there; so the functions, the plugins and the local stack
read a numeric setting only through `number`.
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

"""Code the README shows, run as written there: what a reader copies is what the tests check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_verify() -> Any:
    """The `verify` function of the README's "Verify a delivery", exactly as written there."""
    block = re.search(r"<!-- verify-signature -->\n```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert block is not None, "README lost its signature verification example"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)  # the README's own code, run as a receiver would
    return namespace["verify"]

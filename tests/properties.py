"""Property tests at two lengths. `make test` runs each property a few dozen examples, derandomized
(the same examples on every run and machine, so a failure there is reproducible and the suite's
time is bounded); `make fuzz` runs the same property, with the same strategies, at length and with
random examples, as it does the schemathesis run (the `fuzz` marker, left out of `make test`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings


def at_length(test: Any, strategies: Callable[[Any], Any], max_examples: int, **options: Any) -> Any:
    """A `fuzz`-marked twin of `test` (a @given test): its body under `strategies` (the same
    `given(...)` object) for `max_examples` random examples, with the other settings `options`."""
    return pytest.mark.fuzz(settings(max_examples=max_examples, **options)(strategies(test.hypothesis.inner_test)))

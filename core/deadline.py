"""A scheduled pass's deadline: whether it may start one more piece of work in its invocation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

# Asked by a pass before each piece of work it starts (an order, a return): once it answers True,
# the pass starts no more and returns what it did as at the end of its candidates. What it did not
# start stays where the pass found it (its index, unchanged) for the next run; what it started it
# finishes, so nothing is left half done and nothing is done twice (each piece is idempotent).
TimeUp = Callable[[], bool]

# The longest a setting may make a wait or deadline (OMS_SLA's, a cache's, the return window): a
# pass subtracts it from now, and one of millennia (meant as "never") would leave the calendar and
# crash every pass, so it is refused where it is read.
LONGEST = timedelta(days=36500)


def never() -> bool:
    """No deadline: a pass run by hand, by a test, or by a caller with no time limit."""
    return False


class Deadline:
    """An invocation's TimeUp: true once less than `reserve_millis` is left of it (as
    `remaining_millis` answers: a Lambda context's get_remaining_time_in_millis), and from then on;
    `reached` says a pass was told so (it had work left)."""

    def __init__(self, remaining_millis: Callable[[], int], reserve_millis: int):
        self._remaining_millis = remaining_millis
        self._reserve_millis = reserve_millis
        self.reached = False

    def __call__(self) -> bool:
        self.reached = self.reached or self._remaining_millis() < self._reserve_millis
        return self.reached

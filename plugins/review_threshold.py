"""Built-in review rule: holds a new order whose grand total reaches OMS_REVIEW_THRESHOLD for `fraud_review`.

OMS_REVIEW_THRESHOLD lists one threshold per currency, comma-separated, e.g.
`USD:1000.00,EUR:900.00` (amounts in the currency's minor units, like any Money). An order in a
currency the list does not name is never held by this rule; unset or empty (the default), the
rule holds nothing. A malformed value stops the plugin from loading, which /health names: a
review rule that silently reviews nothing would be worse.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from pydantic import ValidationError

from core import hookimpl
from core.models import Order, ReviewRequest
from core.money import Money

THRESHOLD_ENV = "OMS_REVIEW_THRESHOLD"


def parse_thresholds(text: str) -> dict[str, Money]:
    """`USD:1000.00,EUR:900.00` as {currency: Money}; ValueError naming what is wrong."""
    thresholds: dict[str, Money] = {}
    for part in (item.strip() for item in text.split(",")):
        if not part:
            continue
        currency, sep, amount = (piece.strip() for piece in part.partition(":"))
        if not sep or not currency or not amount:
            raise ValueError(f"{THRESHOLD_ENV}: {part!r} is not CURRENCY:AMOUNT (e.g. USD:1000.00)")
        if currency in thresholds:
            raise ValueError(f"{THRESHOLD_ENV}: {currency} is listed twice")
        try:
            threshold = Money(amount=amount, currency=currency)
        except ValidationError as error:
            problem = error.errors()[0]["msg"]
            raise ValueError(f"{THRESHOLD_ENV}: {part!r}: {problem}") from None
        if threshold.amount <= 0:
            raise ValueError(f"{THRESHOLD_ENV}: {part!r}: a threshold is a positive amount")
        thresholds[currency] = threshold
    return thresholds


def review(order: Order, thresholds: Mapping[str, Money]) -> list[ReviewRequest]:
    threshold = thresholds.get(order.currency)
    total = order.totals.grand_total
    if threshold is None or total.amount < threshold.amount:
        return []
    note = f"grand total {total.amount} {total.currency} is at or above the review threshold {threshold.amount}"
    return [ReviewRequest(reason="fraud_review", note=note)]


@functools.lru_cache(maxsize=4)
def _thresholds(text: str) -> dict[str, Money]:
    return parse_thresholds(text)


def _configured() -> dict[str, Money]:
    # Read at each call (cached by value): the local stack sets the environment after a test
    # process may have imported the plugin.
    return _thresholds(os.environ.get(THRESHOLD_ENV, ""))


_configured()  # a malformed value fails the plugin's load, where /health names it


@hookimpl
def oms_review_order(order: Order) -> list[ReviewRequest]:
    return review(order, _configured())

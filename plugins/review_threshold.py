"""Built-in review rule: holds a new order whose grand total reaches OMS_REVIEW_THRESHOLD for `fraud_review`.

OMS_REVIEW_THRESHOLD lists one threshold per currency, comma-separated, e.g.
`USD:1000.00,EUR:900.00` (an amount in the currency, compared exactly: see parse_thresholds). An order in a
currency the list does not name is never held by this rule; unset or empty (the default), the
rule holds nothing. A malformed value stops the plugin from loading, which /health names: a
review rule that silently reviews nothing would be worse.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal

from core import hookimpl
from core.models import Order, ReviewRequest
from core.money import minor_units

THRESHOLD_ENV = "OMS_REVIEW_THRESHOLD"


# An amount as the template's pattern writes it: ASCII digits, an optional fraction, any length.
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_thresholds(text: str) -> dict[str, Decimal]:
    """`USD:1000.00,EUR:900.00` as {currency: amount}; ValueError naming what is wrong.

    It takes every value the template's parameter `ReviewThreshold` takes (its AllowedPattern),
    which `make run` checks too: a deploy that succeeded must not leave the rule unloaded. An
    amount is kept exactly as written, whatever the currency's minor units and however large:
    `USD:1000.123` holds a total of 1000.13 and not 1000.12 (rounding it to the currency would
    move the line), `JPY:10.5` holds 11 yen, and a threshold no total reaches holds nothing. What
    has no clear meaning is refused by the pattern and here alike: a currency the OMS does not
    price in (a typo that would review nothing), a zero threshold (every order, or, as 0 means in
    the expiry settings, never?) and a currency listed twice (which of the two?)."""
    thresholds: dict[str, Decimal] = {}
    for part in (item.strip() for item in text.split(",")):
        if not part:
            continue
        currency, sep, amount = (piece.strip() for piece in part.partition(":"))
        if not sep or not currency or not amount:
            raise ValueError(f"{THRESHOLD_ENV}: {part!r} is not CURRENCY:AMOUNT (e.g. USD:1000.00)")
        if currency in thresholds:
            raise ValueError(f"{THRESHOLD_ENV}: {currency} is listed twice")
        try:
            minor_units(currency)
        except ValueError as error:
            raise ValueError(f"{THRESHOLD_ENV}: {part!r}: {error}") from None
        if not _AMOUNT.fullmatch(amount):
            raise ValueError(f"{THRESHOLD_ENV}: {part!r}: the amount is not a decimal number such as 1000.00")
        threshold = Decimal(amount)
        if threshold <= 0:
            raise ValueError(f"{THRESHOLD_ENV}: {part!r}: a threshold is a positive amount")
        thresholds[currency] = threshold
    return thresholds


def review(order: Order, thresholds: Mapping[str, Decimal]) -> list[ReviewRequest]:
    threshold = thresholds.get(order.currency)
    total = order.totals.grand_total
    if threshold is None or total.amount < threshold:
        return []
    # Named as the smallest amount of the currency that reaches it (a total is in its minor units):
    # as written, a threshold of hundreds of decimals made a note past ReviewRequest's 500
    # characters, and the rule failed the capture of every order it should have held.
    shown = threshold.quantize(Decimal(1).scaleb(-minor_units(total.currency)), rounding=ROUND_CEILING)
    note = f"grand total {total.amount} {total.currency} is at or above the review threshold {shown} {total.currency}"
    return [ReviewRequest(reason="fraud_review", note=note)]


@functools.lru_cache(maxsize=4)
def _thresholds(text: str) -> dict[str, Decimal]:
    return parse_thresholds(text)


def _configured() -> dict[str, Decimal]:
    # Read at each call (cached by value): the local stack sets the environment after a test
    # process may have imported the plugin.
    return _thresholds(os.environ.get(THRESHOLD_ENV, ""))


_configured()  # a malformed value fails the plugin's load, where /health names it


@hookimpl
def oms_review_order(order: Order) -> list[ReviewRequest]:
    return review(order, _configured())

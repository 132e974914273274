"""Third-party plugins that raise, or answer what the order cannot keep, at POST /orders, through
the real handler under moto: the client gets 502 plugin_error (a dependency of the OMS failed, as a
payment plugin's failure is 502) naming the plugin and its hook, and nothing is stored."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core import hookimpl
from core.pricing_types import TaxRate
from tests.integration.test_plugins_in_the_api import answering, orders_stored, placed_with, seeded  # noqa: F401  (fixture)
from tests.unit.test_hook_calls import Abandoned


class Raises:
    """Every hook POST /orders calls, each raising `error` (registered by name, as an entry point is)."""

    def __init__(self, error: BaseException):
        self.error = error

    @hookimpl(tryfirst=True)
    def oms_unit_price(self):
        raise self.error

    @hookimpl
    def oms_discounts(self):
        raise self.error

    @hookimpl(tryfirst=True)
    def oms_tax_rate(self):
        raise self.error

    @hookimpl
    def oms_shipping_quotes(self):
        raise self.error

    @hookimpl
    def oms_payment_methods(self):
        raise self.error

    @hookimpl
    def oms_review_order(self):
        raise self.error


CAPTURE_HOOKS = [name for name in vars(Raises) if name.startswith("oms_")]


def only(hook: str, error: BaseException) -> object:
    """A Raises plugin that implements `hook` alone."""
    cls = type("Raises", (Raises,), {name: None for name in CAPTURE_HOOKS if name != hook})
    return cls(error)


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("hook", CAPTURE_HOOKS)
@pytest.mark.parametrize(
    "error", [ValueError("bad"), SystemExit(3), Abandoned("gave up")], ids=["Exception", "SystemExit", "BaseException"]
)
def test_a_plugin_that_raises_anything_at_capture_is_a_plugin_error_naming_it_and_nothing_is_stored(aws, hook, error):
    status, body = placed_with(only(hook, error), "hostile")

    assert (status, body["error"]["code"]) == (502, "plugin_error"), body
    assert body["error"]["message"] == (
        f"plugin hostile failed in {hook}: {type(error).__name__}; its words are in the log line `plugin raised`"
    )
    assert body["error"]["details"] == [{"plugin": "hostile", "hook": hook}]
    assert orders_stored(aws) == 0


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("rate", ["1E-100000", "0E-5000000"])
def test_a_tax_rate_written_out_in_more_than_40_decimal_places_is_a_plugin_error(aws, rate):
    # The line shows its rate written out in full: 1E-100000 put 100 KB of zeros on the order (and
    # on each of its events, past EventBridge's 256 KB), 0E-5000000 five MB: the response no longer
    # fit the idempotency record, and the client got a 500 internal_error for an order stored.
    status, body = placed_with(
        answering("oms_tax_rate", TaxRate.model_construct(rate=Decimal(rate), name="svc")), "taxes"
    )

    assert (status, body["error"]["code"]) == (502, "plugin_error"), body
    assert body["error"]["details"] == [{"plugin": "taxes", "hook": "oms_tax_rate"}]
    assert "at most 40 decimal places" in body["error"]["message"]
    assert orders_stored(aws) == 0

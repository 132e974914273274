"""call_hook: every answer re-validated (no floats, no malformed models), the failing plugin named."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import model_validator

from core import hookimpl
from core.errors import (
    InvalidRequest,
    PaymentDeclined,
    PaymentGatewayUnavailable,
    PaymentPluginFailed,
    PaymentRefused,
    PluginError,
    PluginUnavailable,
    TransientError,
)
from core.hook_calls import (
    MAX_LOGGED_WORDS_CHARS,
    MAX_PLUGIN_WORDS_CHARS,
    answer_refused,
    call_hook,
    calls_about,
    plugin_words,
)
from core.models import Allocation
from core.money import Money
from core.payments import Payments
from core.plugin_manager import PluginInfo, build_plugin_manager
from core.pricing import Pricing
from core.pricing_types import Discount, ShippingQuote, TaxRate
from core.sourcing_rules import SourcingRules
from core.workflow_types import CarrierShipment, PaymentResult, SourcingPlan
from functions.plugin_loading import load_plugin_manager
from tests.unit.conftest import a_customer, a_draft, a_product, a_stored_order, an_address, an_order, usd

HOOK_ARGUMENTS = {
    "oms_unit_price": {"product": a_product(), "quantity": 1, "currency": "USD", "channel": "web",
                       "customer": a_customer()},
    "oms_discounts": {"draft": a_draft()},
    "oms_tax_rate": {"line": a_draft().lines[0], "address": an_address(), "draft": a_draft()},
    "oms_shipping_quotes": {"draft": a_draft(), "address": an_address()},
    "oms_payment_capture": {"method": "test", "authorization": "auth_1", "amount": usd("1.00"), "order_id": "ord_1",
                            "idempotency_key": "k"},
    "oms_source_order": {"order": a_stored_order(("MUG-1", 1)), "locations": [], "stock": {},
                         "destination": an_address(), "rules": SourcingRules()},
    "oms_carrier_create_shipment": {"order": a_stored_order(("MUG-1", 1)), "shipment_id": "shp_1",
                                    "booking_key": "shp_1", "origin": None, "lines": [], "weight_grams": 0},
}  # fmt: skip


def answering(hook: str, answer: object, **opts: bool) -> object:
    """A plugin whose `hook` returns `answer`, answering before any built-in unless `opts` say."""

    def impl(self):
        return answer

    impl.__name__ = hook
    return type("Answers", (), {hook: hookimpl(**(opts or {"tryfirst": True}))(impl)})()


def call(hook: str, plugin: object, name: str = "sloppy"):
    plugins = build_plugin_manager()
    plugins.register(plugin, name=name)
    return call_hook(getattr(plugins.hook, hook), **HOOK_ARGUMENTS[hook])


HOSTED = "https://carrier.example/labels/1"


def float_money() -> Money:
    return Money.model_construct(amount=0.1, currency="USD")


MALFORMED = [
    ("oms_unit_price", float_money(), "float"),
    ("oms_unit_price", Money.model_construct(amount=Decimal("1.234"), currency="USD"), "2 decimal places"),
    ("oms_unit_price", Money.model_construct(amount=Decimal("NaN"), currency="USD"), "finite"),
    ("oms_unit_price", Money.model_construct(amount="1.00", currency="USD"), "is str, expected Decimal"),
    ("oms_unit_price", Money.model_construct(amount=Decimal("1.00"), currency="XXX"), "unsupported currency"),
    ("oms_unit_price", Money.model_construct(currency="USD"), "amount"),
    ("oms_tax_rate", TaxRate.model_construct(rate=0.2, name="float"), "float"),
    ("oms_tax_rate", TaxRate.model_construct(rate=Decimal("NaN"), name="nan"), "rate"),
    ("oms_tax_rate", TaxRate.model_construct(rate=Decimal("1.5"), name="too much"), "rate"),
    # Shown written out on the order line: 1E-100000 was 100 KB of zeros on the order, its events and webhooks.
    ("oms_tax_rate", TaxRate.model_construct(rate=Decimal("1E-41"), name="tiny"), "at most 40 decimal places"),
    ("oms_tax_rate", TaxRate.model_construct(rate=Decimal((0, (0,), -1_000_000)), name="zero"), "at most 40"),
    ("oms_discounts", [Discount.model_construct(code="RULE", amount=float_money())], "float"),
    ("oms_discounts", [Discount.model_construct(code="RULE", amount=usd("1.00"), free_shipping=1.0)], "float"),
    (
        "oms_shipping_quotes",
        [ShippingQuote.model_construct(method="x", amount="5.00")],
        "valid dictionary or instance of Money",
    ),
    ("oms_shipping_quotes", [ShippingQuote.model_construct(method="x", amount=float_money())], "float"),
    ("oms_payment_capture", PaymentResult.model_construct(outcome="approved", reference=1.5), "float"),
    ("oms_payment_capture", PaymentResult.model_construct(outcome="maybe", reference="r"), "outcome"),
    (
        "oms_source_order",
        SourcingPlan(allocations=[Allocation.model_construct(line_id="L1", location_id="wh", quantity=1.0)]),
        "float",
    ),
    (
        "oms_carrier_create_shipment",
        CarrierShipment.model_construct(carrier="c", service="s", tracking_number="T1234", label="%PDF"),
        "is str, expected bytes",
    ),
    # What reaches the customer's shipped notification: a replaced character would be a wrong number.
    (
        "oms_carrier_create_shipment",
        CarrierShipment.model_construct(carrier="c", service="s", tracking_number="1Z99\u202e0421", label_url=HOSTED),
        "tracking_number: .*bidi override",
    ),
    (
        "oms_carrier_create_shipment",
        CarrierShipment.model_construct(carrier="UPS\x1b[2J", service="s", tracking_number="T1234", label_url=HOSTED),
        "carrier: .*control character",
    ),
    (
        "oms_carrier_create_shipment",
        CarrierShipment.model_construct(
            carrier="c", service="Ground\r\nBcc: x", tracking_number="T1234", label_url=HOSTED
        ),
        "service: .*control character",
    ),
]


@pytest.mark.parametrize(("hook", "answer", "problem"), MALFORMED)
def test_a_malformed_answer_is_a_plugin_error_naming_the_plugin(hook, answer, problem):
    with pytest.raises(PluginError, match=problem) as refused:
        call(hook, answering(hook, answer))

    assert refused.value.code == "plugin_error"
    assert "plugin sloppy" in refused.value.message
    assert refused.value.details == [{"plugin": "sloppy", "hook": hook}]


def test_a_well_formed_answer_comes_back_validated_and_quantized():
    unrounded = Money.model_construct(amount=Decimal("2.5"), currency="USD")

    answer = call("oms_unit_price", answering("oms_unit_price", unrounded))

    assert str(answer.amount) == "2.50"


def test_a_quotes_description_is_kept_with_controls_and_bidi_overrides_made_visible():
    quote = ShippingQuote.model_construct(method="express", amount=usd("5.00"), description="Next day\x1b[31m\u202e\n2")

    (answer,) = call("oms_shipping_quotes", answering("oms_shipping_quotes", [quote]))

    assert answer.description == "Next day\ufffd[31m\ufffd\n2"


def test_a_tax_rates_name_is_kept_on_one_line_with_controls_and_bidi_overrides_made_visible():
    # The name an invoice prints on the order line: refusing it would refuse every order taxed by
    # that rate, so it is mended, and on one line (a tab or a line break is replaced too).
    rate = TaxRate.model_construct(rate=Decimal("0.20"), name="VAT\x1b[31m\u202e\n\t20%")

    answer = call("oms_tax_rate", answering("oms_tax_rate", rate))

    assert (answer.rate, answer.name) == (Decimal("0.20"), "VAT\ufffd[31m\ufffd\ufffd\ufffd20%")


def test_a_tax_rates_name_reaches_the_order_line_made_visible():
    plugins = load_plugin_manager()
    plugins.register(answering("oms_tax_rate", TaxRate.model_construct(rate=Decimal("0.1"), name="GB\u202e std")))

    priced = Pricing(plugins).price(an_order(("MUG-1", 1)), {"MUG-1": a_product()}, an_address())

    assert priced.lines[0].tax_rate.name == "GB\ufffd std"


def test_a_sourcing_plans_reasons_are_kept_with_controls_and_bidi_overrides_made_visible():
    # One sentence per choice for the order's history and events: refusing them would fail the
    # sourcing of a paid order, so they are mended as a gateway's refusal is (line breaks kept).
    allocation = Allocation(line_id="L1", location_id="wh", quantity=1)
    plan = SourcingPlan.model_construct(allocations=[allocation], reasons=["nearest\x1b[2J\u2066 wh\nok", "fine"])

    answer = call("oms_source_order", answering("oms_source_order", plan))

    assert answer.reasons == ["nearest\ufffd[2J\ufffd wh\nok", "fine"]


def test_the_plugin_that_answered_is_named_among_several():
    plugins = build_plugin_manager()
    plugins.register(answering("oms_discounts", [Discount(code="GOOD", amount=usd("1.00"))]), name="good")
    plugins.register(answering("oms_discounts", None), name="silent")
    plugins.register(
        answering("oms_discounts", [Discount.model_construct(code="BAD", amount=float_money())]), name="bad"
    )
    plugins.register(answering("oms_discounts", [Discount(code="ALSO-GOOD")]), name="also_good")

    with pytest.raises(PluginError, match="plugin bad returned a malformed Discount"):
        call_hook(plugins.hook.oms_discounts, draft=a_draft())


def test_an_answer_a_wrapper_replaced_is_blamed_on_the_wrapper():
    class Replaces:
        @hookimpl(wrapper=True)
        def oms_unit_price(self):
            yield
            return float_money()

    plugins = build_plugin_manager()
    plugins.register(answering("oms_unit_price", usd("1.00")), name="honest")
    plugins.register(Replaces(), name="replacer")

    with pytest.raises(PluginError, match="plugin replacer"):
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])


class Explodes:
    @hookimpl(tryfirst=True)
    def oms_unit_price(self, product):
        return product.missing_attribute


class Helper:
    """A plugin whose failure happens deep in its own code, not in the hook function itself."""

    @hookimpl
    def oms_unit_price(self, product):
        return self._look_up(product.sku)

    def _look_up(self, sku):
        raise LookupError(f"price service has no {sku}")


@pytest.mark.parametrize(("plugin", "error"), [(Explodes(), "AttributeError"), (Helper(), "LookupError")])
def test_a_plugin_that_raises_is_named_with_the_error_type(plugin, error):
    plugins = build_plugin_manager()
    plugins.register(answering("oms_unit_price", usd("1.00"), trylast=True), name="fallback")
    plugins.register(plugin, name="exploding")

    with pytest.raises(PluginError, match=f"plugin exploding failed in oms_unit_price: {error}") as failed:
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])

    assert failed.value.details == [{"plugin": "exploding", "hook": "oms_unit_price"}]


def test_a_plugin_that_raises_leaves_its_words_and_traceback_in_the_log_line_plugin_raised(caplog):
    # Only the API logged them (`plugin failed`): a carrier that raised in the workflow's
    # CreateShipments step parked its order with "RuntimeError" alone, and no log of any function
    # held what the carrier's API answered or where the plugin raised it.
    class Failing:
        @hookimpl
        def oms_carrier_create_shipment(self, booking_key):
            raise RuntimeError(f"carrier API answered 500 for {booking_key}\n\u202e")

    with pytest.raises(PluginError) as failed:
        call("oms_carrier_create_shipment", Failing(), name="failing")

    assert failed.value.message == (
        "plugin failing failed in oms_carrier_create_shipment: RuntimeError;"
        " its words are in the log line `plugin raised`"
    )
    (logged,) = [r for r in caplog.records if r.getMessage() == "plugin raised"]
    assert (logged.name, logged.levelname) == ("core.hook_calls", "ERROR")
    assert (logged.plugin, logged.hook, logged.error) == ("failing", "oms_carrier_create_shipment", "RuntimeError")
    assert logged.reason == "carrier API answered 500 for shp_1\\n\\u202e"
    assert logged.exc_info[1] is failed.value.__cause__
    # Its one ERROR line: a line that reports the PluginError leaves the traceback out.
    assert failed.value.logged


def test_a_plugins_failure_names_what_the_pass_works_on_then_and_nothing_once_that_work_ended(caplog):
    # A scheduled pass's candidate: no key of its invocation names the order, so `plugin raised`
    # carried none, and the pass's own line about the order was a second ERROR with the traceback.
    class Failing:
        @hookimpl
        def oms_carrier_create_shipment(self):
            raise RuntimeError("carrier API answered 500")

        @hookimpl
        def oms_unit_price(self):
            raise TimeoutError("pricing service did not answer")

    plugins = build_plugin_manager()
    plugins.register(Failing(), name="failing")
    booking = HOOK_ARGUMENTS["oms_carrier_create_shipment"]

    for order_id in ("ord_1", "ord_2"):
        with pytest.raises(PluginError), calls_about(order_id=order_id):
            call_hook(plugins.hook.oms_carrier_create_shipment, **booking)  # raises out of its block
    with calls_about(sku="MUG", location_id="wh-1"), calls_about(order_id="ord_3"):
        with pytest.raises(TransientError):
            call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])
        with pytest.raises(PluginError):
            call_hook(plugins.hook.oms_carrier_create_shipment, **booking)
    with pytest.raises(PluginError):
        call_hook(plugins.hook.oms_carrier_create_shipment, **booking)  # after the pass: no candidate's

    keys = ("order_id", "sku", "location_id")
    logged = [(r.getMessage(), {key: r.__dict__[key] for key in keys if key in r.__dict__}) for r in caplog.records]
    assert logged == [
        ("plugin raised", {"order_id": "ord_1"}),
        ("plugin raised", {"order_id": "ord_2"}),
        ("plugin temporarily unavailable", {"order_id": "ord_3", "sku": "MUG", "location_id": "wh-1"}),
        ("plugin raised", {"order_id": "ord_3", "sku": "MUG", "location_id": "wh-1"}),
        ("plugin raised", {}),
    ]


def test_a_refusal_a_hooks_spec_documents_passes_through_unlogged_and_is_the_plugins_failure_elsewhere(caplog):
    # oms_carrier_tracking_update's InvalidRequest is the sender's body refused whole (422): logged
    # as the plugin's failure, anyone could write ERROR lines by posting bodies.
    class Refuses:
        @hookimpl
        def oms_carrier_tracking_update(self):
            raise InvalidRequest("not a webhook of ours")

        @hookimpl
        def oms_unit_price(self):
            raise InvalidRequest("not a product of ours")

    plugins = build_plugin_manager()
    plugins.register(Refuses(), name="carrier")
    refusal = {"carrier": "acme", "payload": {}, "headers": {}, "body": "{}"}

    with pytest.raises(InvalidRequest, match="not a webhook of ours"):
        call_hook(plugins.hook.oms_carrier_tracking_update, **refusal)
    assert [r.getMessage() for r in caplog.records] == []

    with pytest.raises(PluginError, match="plugin carrier failed in oms_unit_price: InvalidRequest"):
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])
    assert [r.getMessage() for r in caplog.records] == ["plugin raised"]


def test_an_answer_the_core_refuses_is_a_plugin_error_no_line_has_logged():
    with pytest.raises(PluginError, match="returned str, expected Money") as refused:
        call("oms_unit_price", answering("oms_unit_price", "1.00"), name="sloppy")

    assert not refused.value.logged


class Abandoned(BaseException):
    """What a third party's code may raise outside Exception (a cancellation of its own making)."""


class Exits:
    """A plugin whose library ends the process it runs in (sys.exit), or raises outside Exception."""

    def __init__(self, error: BaseException):
        self.error = error

    @hookimpl(tryfirst=True)
    def oms_unit_price(self):
        raise self.error


@pytest.mark.parametrize("error", [SystemExit(3), Abandoned("gave up")], ids=["SystemExit", "a BaseException"])
def test_a_plugin_that_raises_outside_exception_is_a_plugin_error_naming_it(error):
    # Not an Exception, it went past call_hook and every handler's error mapping: the API's Lambda
    # died (API Gateway's bare 502) instead of answering 502 plugin_error naming the plugin.
    plugins = build_plugin_manager()
    plugins.register(Exits(error), name="exiting")

    with pytest.raises(PluginError, match=f"plugin exiting failed in oms_unit_price: {type(error).__name__}") as failed:
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])

    assert failed.value.details == [{"plugin": "exiting", "hook": "oms_unit_price"}]
    assert failed.value.__cause__ is error


def test_an_interrupt_passes_through_a_hook_call():
    # Ctrl-C at `make run` (or a test run) stops the process, whatever plugin was running.
    plugins = build_plugin_manager()
    plugins.register(Exits(KeyboardInterrupt()), name="interrupted")

    with pytest.raises(KeyboardInterrupt):
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])


def test_a_failing_wrapper_is_named():
    class FailsAfter:
        @hookimpl(wrapper=True)
        def oms_unit_price(self):
            yield
            raise ValueError("after the others answered")

    plugins = build_plugin_manager()
    plugins.register(answering("oms_unit_price", usd("1.00")), name="honest")
    plugins.register(FailsAfter(), name="fails_after")

    with pytest.raises(PluginError, match="plugin fails_after failed"):
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])


def test_transient_errors_pass_through_for_a_retry_naming_the_plugin_the_hook_and_the_type():
    class GatewayBusy(TransientError):
        """A plugin's own class, which its retry or a caller may match."""

    class Unavailable:
        @hookimpl
        def oms_payment_capture(self):
            raise GatewayBusy("gateway busy")

    with pytest.raises(GatewayBusy) as raised:
        call("oms_payment_capture", Unavailable())

    assert raised.value.message == (
        "plugin sloppy said it is temporarily unavailable in oms_payment_capture: GatewayBusy; "
        "its words are in the log line `plugin temporarily unavailable`"
    )
    assert raised.value.details == [{"plugin": "sloppy", "hook": "oms_payment_capture"}]


SECRET_WORDS = "cannot reach postgresql://acme:hunter2@prices-db.internal/prices"


def test_a_gateways_words_on_a_transient_failure_reach_the_log_escaped_never_the_client_or_the_history(caplog):
    # They reached the client's 503 (PaymentGatewayUnavailable's details) and the order's history,
    # which any key of the order's channel reads: a password in a connection string with them.
    class Garbling:
        @hookimpl
        def oms_payment_capture(self):
            raise TransientError(SECRET_WORDS + "\n\x1b[2J\u202e" + "x" * 100_000)

    plugins = build_plugin_manager()
    plugins.register(Garbling(), name="garbling")
    failures = []
    payments = Payments(plugins, sleep=lambda _: None)

    with pytest.raises(PaymentGatewayUnavailable) as raised:
        payments.retried(
            "capture", lambda _: payments.capture("test", "a1", usd("1.00"), "ord_1", "k"), failures.append
        )

    (detail,) = raised.value.details
    shown = (
        "plugin garbling said it is temporarily unavailable in oms_payment_capture: TransientError; "
        "its words are in the log line `plugin temporarily unavailable`"
    )
    assert detail == {
        "operation": "capture", "attempts": 3, "message": shown, "plugin": "garbling", "hook": "oms_payment_capture"
    }  # fmt: skip
    assert [failure.message for failure in failures] == [shown] * 3
    logged = [r for r in caplog.records if r.getMessage() == "plugin temporarily unavailable"]
    assert [(r.plugin, r.hook, r.error) for r in logged] == [("garbling", "oms_payment_capture", "TransientError")] * 3
    reason = logged[0].reason
    assert reason.startswith(SECRET_WORDS + "\\n\\x1b[2J\\u202e" + "xxx") and reason.endswith("…")
    assert len(reason) == MAX_LOGGED_WORDS_CHARS


def test_a_gateway_busy_on_its_first_tries_is_told_each_attempt_and_asked_again_after_a_longer_wait():
    # The hookspec's `attempt`: 0 for the first try, then 1, 2, ... (tok_flaky approves from 1 on); the
    # backoff doubles; each failed try is on the order's history with its number.
    asked: list[int] = []

    class Busy:
        @hookimpl
        def oms_payment_authorize(self, attempt):
            asked.append(attempt)
            if attempt < 2:
                raise TransientError("the gateway is busy")
            return PaymentResult(outcome="approved", reference="auth_1")

    plugins = build_plugin_manager()
    plugins.register(Busy(), name="busy")
    slept: list[float] = []
    failures = []
    payments = Payments(plugins, backoff_seconds=0.5, sleep=slept.append)

    made = payments.retried(
        "authorize",
        lambda attempt: payments.authorize("busy", "tok", usd("1.00"), "ord_1", attempt, "k"),
        failures.append,
    )

    assert (made.reference, asked, slept) == ("auth_1", [0, 1, 2], [0.5, 1.0])
    assert [(failure.attempt, failure.kind) for failure in failures] == [(1, "transient"), (2, "transient")]


def test_a_capture_while_a_plugin_failed_to_load_raises_it_asking_nobody_and_telling_no_failure():
    # The ship answers plugin_unavailable naming the broken plugin: no gateway was asked, so the
    # order records no failed capture attempt. Swallowed, the capture would come back as nothing
    # answered, with no error for the step to stop on.
    class Gateway:
        @hookimpl
        def oms_payment_capture(self):
            raise AssertionError("asked while a plugin failed to load")

    plugins = build_plugin_manager()
    plugins.register(Gateway(), name="gateway")
    plugins.broken.append(
        PluginInfo(name="acme_tax", status="broken", reason="RuntimeError: boom", error="RuntimeError")
    )
    failures = []
    payments = Payments(plugins, sleep=lambda _: None)

    with pytest.raises(PluginUnavailable, match="acme_tax"):
        payments.retried(
            "capture", lambda _: payments.capture("test", "a1", usd("1.00"), "ord_1", "k"), failures.append
        )

    assert failures == []


CARD_WORDS = "declined: card 4111 1111 1111 1111 is expired"


def test_a_card_number_in_a_gateways_refusal_is_masked_before_the_history_the_events_or_the_502_keep_it():
    # The gateway's words on a refusal reach the order's history, its events and the client.
    refused = PaymentResult(outcome="declined", reference="ref_1", message=CARD_WORDS)

    assert refused.message == "declined: card [card number] is expired"


def test_a_card_number_in_a_transient_failures_words_is_masked_in_the_log_line(caplog):
    class Echoing:
        @hookimpl
        def oms_payment_capture(self):
            raise TransientError(CARD_WORDS)

    with pytest.raises(TransientError):
        call("oms_payment_capture", Echoing(), name="echoing")

    (logged,) = [r for r in caplog.records if r.getMessage() == "plugin temporarily unavailable"]
    assert logged.reason == "declined: card [card number] is expired"


class Unprintable(ConnectionError):
    def __str__(self) -> str:
        raise RuntimeError("a client library's exception that cannot be printed")


def test_a_connection_error_that_cannot_be_printed_is_transient_and_named(caplog):
    # Printing it for the message raised inside call_hook's handler: a RuntimeError, a 500.
    class Remote:
        @hookimpl
        def oms_unit_price(self):
            raise Unprintable()

    with pytest.raises(TransientError, match="plugin remote got no answer in oms_unit_price: Unprintable;"):
        call("oms_unit_price", Remote(), name="remote")

    (logged,) = [r for r in caplog.records if r.getMessage() == "plugin temporarily unavailable"]
    assert logged.reason == "<unprintable: its __str__ raised RuntimeError>"


def test_a_transient_error_of_a_plugin_keeps_none_of_its_own_details():
    # A plugin's PaymentGatewayUnavailable (a TransientError) is answered with its details.
    class Remote:
        @hookimpl
        def oms_payment_capture(self):
            raise PaymentGatewayUnavailable("down", details=[{"dsn": SECRET_WORDS}])

    with pytest.raises(PaymentGatewayUnavailable) as raised:
        call("oms_payment_capture", Remote(), name="remote")

    assert raised.value.details == [{"plugin": "remote", "hook": "oms_payment_capture"}]
    assert "hunter2" not in raised.value.message


def test_a_plugin_that_raises_plugin_unavailable_itself_is_a_plugin_error_naming_it():
    # Passed through as the manager's own: its message and details answered to any key.
    class Remote:
        @hookimpl
        def oms_unit_price(self):
            raise PluginUnavailable(SECRET_WORDS, details=[{"plugin": "db", "message": SECRET_WORDS}])

    with pytest.raises(PluginError) as raised:
        call("oms_unit_price", Remote(), name="remote")

    assert type(raised.value) is PluginError
    assert raised.value.message == (
        "plugin remote failed in oms_unit_price: PluginUnavailable; its words are in the log line `plugin raised`"
    )
    assert raised.value.details == [{"plugin": "remote", "hook": "oms_unit_price"}]


def test_pricing_names_the_plugin_whose_money_is_in_another_currency():
    plugins = load_plugin_manager()
    plugins.register(answering("oms_unit_price", Money.of("1.00", "EUR")), name="euro_prices")

    with pytest.raises(PluginError, match="plugin euro_prices returned EUR, the order is in USD"):
        Pricing(plugins).price(an_order(("MUG-1", 1)), {"MUG-1": a_product()}, an_address())


def test_payments_refuse_a_malformed_gateway_answer_naming_the_gateway():
    plugins = build_plugin_manager()
    no_reference = PaymentResult.model_construct(outcome="approved", reference=None)
    plugins.register(answering("oms_payment_capture", no_reference), name="gateway")

    with pytest.raises(PluginError, match="plugin gateway returned a malformed PaymentResult: reference"):
        Payments(plugins).capture("test", "auth_1", usd("1.00"), "ord_1", "k")


@pytest.mark.parametrize(
    ("answer", "logged"), [(RuntimeError("lost the answer"), True), ("approved", False)], ids=["raised", "refused"]
)
def test_a_payment_plugins_failure_is_logged_as_the_plugin_error_it_reports_was(answer, logged):
    # The API logs a PaymentPluginFailed: at ERROR with its traceback again if it did not know the
    # plugin's `plugin raised` line holds them.
    class Gateway:
        @hookimpl
        def oms_payment_capture(self):
            if isinstance(answer, BaseException):
                raise answer
            return answer

    plugins = build_plugin_manager()
    plugins.register(Gateway(), name="gateway")
    payments = Payments(plugins, sleep=lambda _: None)

    with pytest.raises(PaymentPluginFailed) as failed:
        payments.retried(
            "capture", lambda _: payments.capture("test", "a1", usd("1.00"), "ord_1", "k"), lambda failure: None
        )

    assert failed.value.logged is logged
    assert failed.value.__cause__.logged is logged


def test_a_gateways_refusal_reaches_the_order_and_the_client_with_controls_and_bidi_overrides_made_visible():
    plugins = build_plugin_manager()
    refusal = PaymentResult.model_construct(outcome="declined", reference="r1", message="Do not honor\x1b[2J\u202e\x00")
    plugins.register(answering("oms_payment_capture", refusal), name="gateway")

    with pytest.raises(PaymentRefused) as refused:
        Payments(plugins).capture("test", "auth_1", usd("1.00"), "ord_1", "k")

    assert refused.value.message.endswith("Do not honor\ufffd[2J\ufffd\ufffd")


@pytest.mark.parametrize("operation", ["authorize", "capture"])
def test_a_gateways_words_on_a_refusal_are_cut_to_500_characters_as_on_a_transient_failure(operation):
    # The client's 502 carried all of them: a megabyte of a gateway's words outgrew the 6 MB a
    # Lambda may answer, and the client got API Gateway's bare 502 instead of the refusal.
    plugins = build_plugin_manager()
    refusal = PaymentResult(outcome="declined", reference="r1", message="Do not honor " + "x" * 1_000_000)
    plugins.register(answering(f"oms_payment_{operation}", refusal), name="gateway")
    payments = Payments(plugins)

    with pytest.raises(PaymentRefused if operation == "capture" else PaymentDeclined) as refused:
        if operation == "capture":
            payments.capture("test", "auth_1", usd("1.00"), "ord_1", "k")
        else:
            payments.authorize("test", "tok", usd("1.00"), "ord_1", 0, "k")

    assert refused.value.message.endswith("Do not honor " + "x" * 486 + "…")


def test_an_answer_whose_own_validation_breaks_is_a_plugin_error():
    class OddRate(TaxRate):
        @model_validator(mode="after")
        def _breaks(self):
            raise TypeError("not a ValueError, so pydantic lets it through")

    with pytest.raises(PluginError, match="plugin sloppy returned a malformed TaxRate: TypeError while validating"):
        call("oms_tax_rate", answering("oms_tax_rate", OddRate.model_construct(rate=Decimal("0.1"), name="odd")))


@pytest.mark.parametrize("error", [TimeoutError("read timed out"), ConnectionError("connection reset")])
def test_a_remote_service_that_does_not_answer_is_transient_and_named(error):
    class Remote:
        @hookimpl
        def oms_unit_price(self):
            raise error

    plugins = build_plugin_manager()
    plugins.register(Remote(), name="remote_prices")

    expected = f"plugin remote_prices got no answer in oms_unit_price: {type(error).__name__}"
    with pytest.raises(TransientError, match=expected) as raised:
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])

    assert raised.value.details == [{"plugin": "remote_prices", "hook": "oms_unit_price"}]


@pytest.mark.parametrize(
    ("allocations", "rules", "problem"),
    [
        ([Allocation(line_id="L1", location_id="wh-east", quantity=1)], SourcingRules(), "did not cover every unit"),
        (
            [Allocation(line_id="L1", location_id="wh-elsewhere", quantity=2)],
            SourcingRules(),
            "outside the eligible locations",
        ),
        # The rules in force allow one parcel: a plugin that ignores them would ship two.
        (
            [Allocation(line_id="L1", location_id=loc, quantity=1) for loc in ("wh-east", "wh-west")],
            SourcingRules(max_shipments=1),
            r"2 locations, more than max_shipments \(1\)",
        ),
        # Summed, each covers the 2 units: 3 reserved at one location and -1 "reserved" at another
        # (a release of a unit never held), or a parcel of no units booked beside the one.
        (
            [Allocation(line_id="L1", location_id=loc, quantity=q) for loc, q in (("wh-east", 3), ("wh-west", -1))],
            SourcingRules(),
            "quantity=-1",
        ),
        (
            [Allocation(line_id="L1", location_id=loc, quantity=q) for loc, q in (("wh-east", 2), ("wh-west", 0))],
            SourcingRules(),
            "quantity=0",
        ),
    ],
)
def test_a_sourcing_plan_the_core_refuses_names_the_plugin_that_made_it(allocations, rules, problem):
    # The AuthorizePayment/ReserveStock runbook reads the failing plugin from a PluginError: a plan
    # that missed units or took them elsewhere failed the step naming no plugin.
    from core.sourcing import ask_plugins
    from tests.unit.test_plugins_nearest_sourcing import a_location

    plugins = build_plugin_manager()
    plugins.register(answering("oms_source_order", SourcingPlan(allocations=allocations)), name="sloppy")
    eligible = [a_location("wh-east", (40.7, -74.0)), a_location("wh-west", (39.5, -119.8))]

    with pytest.raises(PluginError, match=problem) as refused:
        ask_plugins(plugins.hook, a_stored_order(("MUG-1", 2)), eligible, {}, an_address(), rules)

    assert "plugin sloppy" in refused.value.message
    assert refused.value.details == [{"plugin": "sloppy", "hook": "oms_source_order"}]


class LaxPrice(Money):
    """A plugin's own Money whose validator lets a third decimal of a USD amount through."""

    @model_validator(mode="after")
    def _exact_minor_units(self):
        return self

    def shown(self) -> str:
        return f"{self.amount} {self.currency}"


def test_an_answer_of_a_plugins_own_subclass_is_checked_as_the_oms_class_and_comes_back_as_it():
    # A subclass's validators replaced the OMS's: its 9.999 USD passed call_hook, and the order's
    # own model refused it later, an internal error naming no plugin.
    with pytest.raises(PluginError, match=r"plugin sloppy returned a malformed Money: .*2 decimal places") as refused:
        call("oms_unit_price", answering("oms_unit_price", LaxPrice(amount=Decimal("9.999"), currency="USD")))
    assert refused.value.details == [{"plugin": "sloppy", "hook": "oms_unit_price"}]

    answer = call("oms_unit_price", answering("oms_unit_price", LaxPrice(amount=Decimal("9.99"), currency="USD")))
    assert (type(answer), answer) == (Money, usd("9.99"))

    (discount,) = call(
        "oms_discounts", answering("oms_discounts", [Discount(code="R", amount=LaxPrice(amount="1.5", currency="USD"))])
    )
    assert (type(discount.amount), discount.amount) == (Money, usd("1.50"))


class NotedPrice(Money):
    """A plugin's own Money that carries a field of its own beside the OMS's."""

    source: str = "price-list"


def test_an_answer_of_a_plugins_own_subclass_with_a_field_of_its_own_comes_back_as_the_oms_class():
    # Checked as the OMS's class, the copy lacks the plugin's own field: that is no type the
    # plugin got wrong (it was "source is str, expected NoneType", a plugin_error for a good price).
    answer = call("oms_unit_price", answering("oms_unit_price", NotedPrice(amount=Decimal("9.99"), currency="USD")))

    assert (type(answer), answer) == (Money, usd("9.99"))


def test_an_answer_refused_is_told_from_a_plugin_that_raised_and_from_the_managers_unavailable():
    # A refusal comes once every plugin ran to its end (a notifier sent: core.notifications records
    # it sent); a raise, or the manager's PluginUnavailable (a plugin failed to load), comes before.
    class Raises:
        @hookimpl
        def oms_unit_price(self):
            raise RuntimeError("gateway down")

    failures = []
    for plugin in (answering("oms_unit_price", float_money()), Raises()):
        with pytest.raises(PluginError) as raised:
            call("oms_unit_price", plugin)
        failures.append(answer_refused(raised.value))
    unavailable = PluginUnavailable("plugin db failed to load", details=[{"plugin": "db"}])
    assert [*failures, answer_refused(unavailable), answer_refused(RuntimeError("x"))] == [True, False, False, False]


def test_a_plugins_transient_error_prints_as_the_message_naming_it_never_its_words():
    # A workflow step lets it propagate: Lambda's errorMessage, the Step Functions Cause and the
    # step's line `workflow step raised` are str(error), which would print the plugin's own words.
    class Remote:
        @hookimpl
        def oms_payment_capture(self):
            raise TransientError(SECRET_WORDS)

    with pytest.raises(TransientError) as raised:
        call("oms_payment_capture", Remote(), name="remote")

    assert str(raised.value) == raised.value.message
    assert "hunter2" not in str(raised.value)


def test_a_hook_that_answers_a_list_takes_a_tuple_of_its_items_as_one():
    discounts = (Discount(code="A", amount=usd("1.00")), Discount(code="B", amount=usd("2.00")))

    answer = call("oms_discounts", answering("oms_discounts", discounts))

    assert [(discount.code, discount.amount) for discount in answer] == [("A", usd("1.00")), ("B", usd("2.00"))]


@pytest.mark.parametrize(
    "answer", [Discount(code="ONE", amount=usd("1.00")), "FREESHIP", 5], ids=["one item", "text", "a number"]
)
def test_a_hook_that_answers_a_list_refuses_one_item_or_text_in_its_place_naming_the_plugin(answer):
    # Walked as a list, a Discount's fields, a code's letters or an int (a TypeError: a 500
    # naming no plugin) would have been the items.
    expected = f"plugin sloppy returned {type(answer).__name__}, expected a list"
    with pytest.raises(PluginError, match=expected) as refused:
        call("oms_discounts", answering("oms_discounts", answer))

    assert refused.value.details == [{"plugin": "sloppy", "hook": "oms_discounts"}]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"location_id": None, "quantity": 1}, "location_id: Input should be a valid string"),
        ({"location_id": "wh", "quantity": "1"}, r"SourcingPlan\.allocations\[0\]\.quantity is str, expected int"),
    ],
    ids=["no location", "a str quantity"],
)
def test_a_model_inside_a_list_of_an_answer_is_checked_as_the_answer_itself_is(fields, problem):
    # pydantic takes a model instance of the right class without looking inside it: a plan's
    # allocation built without validation (no location, or its quantity a str) passed as it was.
    allocation = Allocation.model_construct(line_id="L1", **fields)

    with pytest.raises(PluginError, match=f"plugin sloppy returned a malformed SourcingPlan: {problem}"):
        call("oms_source_order", answering("oms_source_order", SourcingPlan(allocations=[allocation])))


def test_what_a_plugins_own_validator_raised_is_named_by_its_type_never_its_words():
    # A refusal reaches the client's 502 and the order's history: the validator's words may hold
    # what its client library connected to.
    class LookedUpRate(TaxRate):
        @model_validator(mode="after")
        def _looked_up(self):
            raise ValueError(SECRET_WORDS)

    answer = LookedUpRate.model_construct(rate=Decimal("0.1"), name="looked up")
    with pytest.raises(PluginError) as refused:
        call("oms_tax_rate", answering("oms_tax_rate", answer))

    assert (
        refused.value.message
        == "plugin sloppy returned a malformed TaxRate: its validator raised ValueError (oms_tax_rate)"
    )


def test_an_answer_an_old_style_hookwrapper_replaced_is_blamed_on_the_wrapper():
    class Replaces:
        @hookimpl(hookwrapper=True)
        def oms_unit_price(self):
            outcome = yield
            outcome.force_result(float_money())

    plugins = build_plugin_manager()
    plugins.register(answering("oms_unit_price", usd("1.00")), name="honest")
    plugins.register(Replaces(), name="old_style")

    with pytest.raises(PluginError, match="plugin old_style returned a malformed Money") as refused:
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])

    assert refused.value.details == [{"plugin": "old_style", "hook": "oms_unit_price"}]


def test_a_failures_words_of_exactly_the_logged_limit_are_logged_whole(caplog):
    words = "w" * MAX_LOGGED_WORDS_CHARS

    class Echoing:
        @hookimpl
        def oms_payment_capture(self):
            raise TransientError(words)

    with pytest.raises(TransientError):
        call("oms_payment_capture", Echoing(), name="echoing")

    (logged,) = [r for r in caplog.records if r.getMessage() == "plugin temporarily unavailable"]
    assert logged.reason == words


def test_a_plugins_words_of_exactly_500_characters_are_kept_whole_and_longer_ones_cut_to_500():
    assert plugin_words("x" * MAX_PLUGIN_WORDS_CHARS) == "x" * 500
    assert plugin_words("x" * 501) == "x" * 499 + "…"


def test_a_card_number_across_the_500_character_cut_of_a_plugins_words_leaves_none_of_its_digits():
    # Cut first, "4111 1111" would be left before the "…": no longer a card number to mask.
    words = plugin_words("declined " + "x" * 480 + " 4111 1111 1111 1111 is expired")

    assert words == "declined " + "x" * 480 + " [card num…"


@pytest.mark.parametrize(
    "wrapper", [{"wrapper": True}, {"hookwrapper": True}], ids=["wrapper", "old-style hookwrapper"]
)
def test_a_plugin_that_raises_under_a_wrapper_that_lets_it_through_is_named_not_the_wrapper(wrapper):
    # A new-style wrapper's `yield` raises what the implementations under it raised, so its frame
    # was the outermost of the hook's in the traceback: the wrapper (a sourcing rule, a logging
    # plugin) was named, and the runbook's operator disabled the plugin that did not fail.
    def passes_through(self):
        return (yield)

    passes_through.__name__ = "oms_unit_price"
    plugins = build_plugin_manager()
    plugins.register(Helper(), name="failing")
    plugins.register(type("Wraps", (), {"oms_unit_price": hookimpl(**wrapper)(passes_through)})(), name="wrapping")

    with pytest.raises(PluginError, match="plugin failing failed in oms_unit_price: LookupError") as failed:
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])

    assert failed.value.details == [{"plugin": "failing", "hook": "oms_unit_price"}]


def test_a_wrapper_that_raises_its_own_error_for_what_it_caught_is_named():
    class Translates:
        @hookimpl(wrapper=True)
        def oms_unit_price(self):
            try:
                return (yield)
            except LookupError:
                raise RuntimeError("no price for this product") from None

    plugins = build_plugin_manager()
    plugins.register(Helper(), name="failing")
    plugins.register(Translates(), name="translating")

    with pytest.raises(PluginError, match="plugin translating failed in oms_unit_price: RuntimeError"):
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])


def test_a_plugin_that_raises_after_another_answered_nothing_is_the_one_named():
    # Every implementation runs through the manager's recording wrapper, one code object for all:
    # matched by it, the traceback named whichever plugin was listed last (here, `silent`).
    plugins = build_plugin_manager()
    plugins.register(Helper(), name="failing")
    plugins.register(answering("oms_unit_price", None), name="silent")

    with pytest.raises(PluginError, match="plugin failing failed in oms_unit_price: LookupError"):
        call_hook(plugins.hook.oms_unit_price, **HOOK_ARGUMENTS["oms_unit_price"])


def test_a_malformed_answer_names_each_of_its_first_three_problems():
    # The plugin's author fixes them in one go rather than one refusal at a time.
    answer = ShippingQuote.model_construct(method=None, amount=None, description=7, estimated_days="soon")

    with pytest.raises(PluginError) as refused:
        call("oms_shipping_quotes", answering("oms_shipping_quotes", [answer]))

    assert refused.value.message.count(": Input should be") == 3
    assert refused.value.message.startswith(
        "plugin sloppy returned a malformed ShippingQuote: method: Input should be a valid string; amount: "
    )

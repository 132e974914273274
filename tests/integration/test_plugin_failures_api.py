"""Requests whose pricing, tax or carrier plugin fails (raises, or answers what the OMS cannot take:
a float, NaN, a negative amount, a wrong type, a tracking number that is no string, a label link
that is not https), in-process on moto: each answers 502 `plugin_error` in the contract's shape,
naming the plugin and its hook (a dependency of the OMS failed, as a payment plugin's failure is 502
`payment_plugin_error`), never a 500; nothing is recorded (no order priced with the plugin's
answer, no return with its label), and the request repeated once the plugin works finishes it once.
A carrier that fails to book in the workflow fails the task (retried by Step Functions), then the
order is parked on hold for a person, its stock and authorization kept."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from core import hookimpl
from core.errors import PluginError, WorkflowOutOfTime
from core.money import Money
from core.pricing_types import Discount, ShippingQuote, TaxRate
from core.return_models import ReturnPolicyDecision
from core.workflow_types import CarrierShipment
from tests.builders import order_body
from tests.e2e.client import assert_error
from tests.integration import test_cancel_units_api
from tests.integration.in_process import InProcessApi
from tests.integration.test_cancel_units_api import allocated, cancel, ship
from tests.integration.test_payment_plugin_failures_api import managers

api = test_cancel_units_api.api  # its catalog (MUG in the west, CAP in the east), in this module's account

PLUGIN = "hostile"
_keys = itertools.count(1)


def usd(amount: Any) -> Money:
    return Money.model_construct(amount=amount, currency="USD")


def label(**fields: Any) -> CarrierShipment:
    booked = {"carrier": "acme", "service": "ground", "tracking_number": "1Z999", "label_url": "https://acme.test/l"}
    return CarrierShipment.model_construct(label=None, label_content_type="application/pdf", **(booked | fields))


class Raised(Exception):
    """What a failing plugin raises: its own bug."""


# Each way a plugin of each kind fails: Raised is raised, anything else is its answer.
PRICING_FAILURES: dict[str, dict[str, Any]] = {
    "oms_unit_price": {
        "raises": Raised,
        "float": usd(9.99),
        "nan": usd(Decimal("NaN")),
        "negative": usd(Decimal("-1.00")),
        "wrong-type": "9.99",
    },
    "oms_tax_rate": {
        "raises": Raised,
        "float": TaxRate.model_construct(rate=0.2, name="vat"),
        "nan": TaxRate.model_construct(rate=Decimal("NaN"), name="vat"),
        "negative": TaxRate.model_construct(rate=Decimal("-0.5"), name="vat"),
        "wrong-type": Decimal("0.2"),
    },
    "oms_discounts": {
        "raises": Raised,
        "float": [Discount.model_construct(code="RULE", amount=usd(1.5), line_id=None, free_shipping=False,
                                           exclusive=False)],
        "nan": [Discount(code="RULE", amount=usd(Decimal("NaN")))],
        "negative": [Discount(code="RULE", amount=usd(Decimal("-2.00")))],
        "wrong-type": {"code": "RULE"},
    },
    "oms_shipping_quotes": {
        "raises": Raised,
        "float": [ShippingQuote.model_construct(method="standard", amount=usd(4.5), description="")],
        "nan": [ShippingQuote(method="standard", amount=usd(Decimal("NaN")))],
        "negative": [ShippingQuote(method="standard", amount=usd(Decimal("-4.00")))],
        "wrong-type": 3,
    },
}  # fmt: skip

CARRIER_FAILURES: dict[str, Any] = {
    "raises": Raised,
    "tracking-number-not-a-string": label(tracking_number=19999),
    "label-url-not-https": label(label_url="http://acme.test/l"),
    "no-label": label(label_url=None),
    "wrong-type": {"tracking_number": "1Z999", "label_url": "https://acme.test/l"},
}


def failing_at(hook: str, failure: Any) -> object:
    """A plugin implementing `hook` alone (called first), failing with `failure`."""

    def impl(self):
        if failure is Raised:
            raise Raised("the plugin's own bug")
        return failure

    impl.__name__ = hook
    return type("Hostile", (), {hook: hookimpl(tryfirst=True)(impl)})()


@contextmanager
def installed(plugin: object) -> Iterator[None]:
    """`plugin` installed as PLUGIN in the API's container and the workflow tasks' (each its own Lambda)."""
    for manager in managers():
        manager.register(plugin, name=PLUGIN)
    try:
        yield
    finally:
        for manager in managers():
            manager.unregister(name=PLUGIN)


def assert_plugin_error(answer: Any, hook: str) -> None:
    error = assert_error(answer, 502, "plugin_error")
    assert error["details"] == [{"plugin": PLUGIN, "hook": hook}], error
    assert f"plugin {PLUGIN}" in error["message"] and "Traceback" not in answer.text


def pricing_cases(*only: str) -> list[Any]:
    """Each pricing hook failing each way (`only` those ways: call_hook refuses every way alike, and
    the requests that need an allocated order are the slow ones)."""
    return [pytest.param(hook, failure, id=f"{hook}-{way}") for hook, ways in PRICING_FAILURES.items()
            for way, failure in ways.items() if not only or way in only]  # fmt: skip


def carrier_cases(*only: str) -> list[Any]:
    return [pytest.param(failure, id=way) for way, failure in CARRIER_FAILURES.items() if not only or way in only]


def comparable(order: dict[str, Any]) -> dict[str, Any]:
    """What a failed request must leave as it was (a stored label's link is signed at each read)."""
    kept = {key: order[key] for key in ("status", "version", "lines", "totals", "payment", "allocations")}
    return kept | {"shipments": [{k: v for k, v in s.items() if k != "label_url"} for s in order["shipments"]]}


# --- POST /orders ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("hook", "failure"), pricing_cases())
def test_an_order_whose_pricing_plugin_fails_is_502_stores_nothing_and_its_key_repeated_places_it_once(
    api: InProcessApi, hook: str, failure: Any
):
    customer = f"cus_p{next(_keys)}"
    body = order_body(
        external_id=f"web-{customer}", lines=[{"sku": "MUG", "quantity": 2}],
        customer={"id": customer, "email": "ada@example.com"},
    )  # fmt: skip
    headers = {"Idempotency-Key": f"place-{customer}"}

    with installed(failing_at(hook, failure)):
        answer = api.post("/orders", json=body, headers=headers)

    assert_plugin_error(answer, hook)
    assert api.orders_of(customer) == []

    again = api.post("/orders", json=body, headers=headers)  # the plugin works again: the same key places it
    replayed = api.post("/orders", json=body, headers=headers)

    assert again.status_code == 201, again.text
    assert replayed.status_code == 201 and replayed.json()["id"] == again.json()["id"]
    assert [o["id"] for o in api.orders_of(customer)] == [again.json()["id"]]


# --- PATCH /orders/{id} and a cancel of units: both price the order again --------------------------


@pytest.mark.parametrize(("hook", "failure"), pricing_cases("raises", "nan"))
def test_an_edit_whose_pricing_plugin_fails_is_502_the_order_unchanged_and_the_edit_repeated_takes(
    api: InProcessApi, hook: str, failure: Any
):
    order = allocated(api, ("MUG", 1))
    edit = {"lines": [{"sku": "MUG", "quantity": 2}]}
    headers = {"If-Match": str(order["version"])}

    with installed(failing_at(hook, failure)):
        answer = api.request("PATCH", f"/orders/{order['id']}", json=edit, headers=headers)

    assert_plugin_error(answer, hook)
    assert comparable(api.get(f"/orders/{order['id']}").json()) == comparable(order)

    again = api.request("PATCH", f"/orders/{order['id']}", json=edit, headers=headers)

    assert again.status_code == 200, again.text
    assert again.json()["lines"][0]["quantity"] == 2


@pytest.mark.parametrize(
    ("hook", "failure"), [case for case in pricing_cases("raises", "negative") if case.values[0] != "oms_tax_rate"]
)
def test_a_cancel_of_units_whose_pricing_plugin_fails_is_502_the_order_unchanged_and_repeated_it_cancels_once(
    api: InProcessApi, hook: str, failure: Any
):
    # (A cancel of units keeps each line's tax rate as sold: it asks no tax plugin.)
    order = allocated(api, ("MUG", 3))
    before = test_cancel_units_api.stock(api, "MUG", "wh-west")

    with installed(failing_at(hook, failure)):
        answer = cancel(api, order["id"], [("L1", 1)])

    assert_plugin_error(answer, hook)
    assert comparable(api.get(f"/orders/{order['id']}").json()) == comparable(order)
    assert test_cancel_units_api.stock(api, "MUG", "wh-west") == before

    again = cancel(api, order["id"], [("L1", 1)])

    assert again.status_code == 200, again.text
    line = again.json()["lines"][0]
    assert (line["quantity"], line["cancelled_quantity"]) == (2, 1)


# --- Return labels: POST /orders/{id}/returns and POST /returns/{id}/approve ---------------------------


@pytest.mark.parametrize("failure", carrier_cases("raises", "tracking-number-not-a-string", "label-url-not-https"))
def test_a_return_whose_carrier_plugin_fails_to_label_it_is_502_no_return_and_its_key_repeated_makes_one(
    api: InProcessApi, failure: Any
):
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    body = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too small"}]}
    headers = {"Idempotency-Key": f"return-{order['id']}"}

    with installed(failing_at("oms_carrier_return_label", failure)):
        answer = api.post(f"/orders/{order['id']}/returns", json=body, headers=headers)

    assert_plugin_error(answer, "oms_carrier_return_label")
    assert api.get(f"/orders/{order['id']}/returns").json()["items"] == []

    again = api.post(f"/orders/{order['id']}/returns", json=body, headers=headers)

    assert again.status_code == 201, again.text
    made = again.json()
    assert made["status"] == "authorized" and made["label_url"].startswith("https://")
    assert [r["id"] for r in api.get(f"/orders/{order['id']}/returns").json()["items"]] == [made["id"]]


class NeedsApproval:
    """A return policy that asks a person to approve every return."""

    @hookimpl(tryfirst=True)
    def oms_return_policy(self):
        return ReturnPolicyDecision(needs_approval=True)


def test_an_approval_whose_carrier_plugin_fails_to_label_it_is_502_the_return_still_requested_then_approved(
    api: InProcessApi,
):
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    for manager in managers():
        manager.register(NeedsApproval(), name="approvals")
    try:
        requested = api.post(
            f"/orders/{order['id']}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "too small"}]}
        )
    finally:
        for manager in managers():
            manager.unregister(name="approvals")
    assert requested.status_code == 201 and requested.json()["status"] == "requested", requested.text
    path = f"/returns/{requested.json()['id']}"

    with installed(failing_at("oms_carrier_return_label", CARRIER_FAILURES["label-url-not-https"])):
        answer = api.post(f"{path}/approve", json={})

    assert_plugin_error(answer, "oms_carrier_return_label")
    shown = api.get(path).json()
    assert (shown["status"], shown["label_url"], shown["version"]) == ("requested", None, requested.json()["version"])

    again = api.post(f"{path}/approve", json={})

    assert again.status_code == 200, again.text
    assert again.json()["status"] == "authorized" and again.json()["label_url"].startswith("https://")


class LosingCarrier:
    """A carrier idempotent on the booking key that books the first return label and loses its
    answer (a read timeout), and records the cancels it is asked for."""

    def __init__(self) -> None:
        self.booked: dict[str, str] = {}  # tracking number by booking key
        self.cancelled: list[str] = []

    @hookimpl(tryfirst=True)
    def oms_carrier_return_label(self, booking_key):
        first = not self.booked
        number = self.booked.setdefault(booking_key, f"ACME{len(self.booked) + 1}")
        if first:
            raise TimeoutError("the carrier's answer never came")
        return label(carrier="acme", tracking_number=number, label_url=f"https://acme.test/{number}")

    @hookimpl(tryfirst=True)
    def oms_carrier_cancel_shipment(self, carrier, booking_key):
        if carrier not in ("acme", None) or booking_key not in self.booked:
            return None
        self.cancelled.append(booking_key)
        return True


def test_a_return_label_booked_though_its_answer_was_lost_is_cancelled_once_the_request_made_again_books_others(
    api: InProcessApi,
):
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    carrier = LosingCarrier()

    with installed(carrier):
        lost = api.post(
            f"/orders/{order['id']}/returns", json={"lines": [{"line_id": "L1", "quantity": 2, "reason": "x"}]}
        )
        made = api.post(
            f"/orders/{order['id']}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "x"}]}
        )

    assert lost.status_code == 503 and made.status_code == 201, made.text  # the carrier unavailable: retry
    first_key, _ = carrier.booked
    assert carrier.cancelled == [first_key] and made.json()["label_url"] == "https://acme.test/ACME2"
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [e["detail"]["booking_key"] for e in history if e["type"] == "carrier_booking_cancelled"] == [first_key]


# --- The workflow's CreateShipments ---------------------------------------------------------------------


def reserved_order(api: InProcessApi) -> str:
    """A placed order the workflow authorized and reserved, its parcels still to book."""
    from functions.bootstrap import Config, bootstrap

    body = order_body(external_id=f"web-b{next(_keys)}", lines=[{"sku": "MUG", "quantity": 1}])
    placed = api.post("/orders", json=body)
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    workflow = bootstrap(Config.from_env()).workflow
    workflow.authorize_payment(order_id, attempt=0)
    workflow.reserve_stock(order_id)
    return order_id


@pytest.mark.parametrize("failure", carrier_cases("raises", "no-label", "wrong-type"))
def test_a_carrier_that_fails_to_book_fails_the_task_and_the_order_is_parked_with_its_stock_and_payment(
    api: InProcessApi, failure: Any
):
    from functions.workflow import create_shipments, park_order
    from tests.integration.test_handlers import Context

    order_id = reserved_order(api)
    reserved = api.get(f"/orders/{order_id}").json()

    with installed(failing_at("oms_carrier_create_shipment", failure)):
        for _ in range(2):  # Step Functions' retries: each fails the same way, nothing recorded
            with pytest.raises(Exception) as failed:
                create_shipments.lambda_handler({"order_id": order_id}, Context())
            assert PLUGIN in str(failed.value) and "oms_carrier_create_shipment" in str(failed.value)
    # Nothing booked is recorded; the booking asked for, which the carrier may have made, is kept
    # on the order to be given up (a new version, no visible change).
    shown = api.get(f"/orders/{order_id}").json()
    assert comparable(shown) | {"version": None} == comparable(reserved) | {"version": None}

    park_order.lambda_handler(
        {"order_id": order_id, "error": type(failed.value).__name__, "cause": str(failed.value)}, Context()
    )

    parked = api.get(f"/orders/{order_id}").json()
    assert parked["status"] == "on_hold" and parked["hold"]["reason"] == "other"
    assert (parked["allocations"], parked["payment"]) == (reserved["allocations"], reserved["payment"])
    assert parked["shipments"] == []


def test_an_order_whose_carrier_refused_links_until_the_workflow_ran_out_of_time_is_parked_naming_the_plugin(
    api: InProcessApi,
):
    """A carrier plugin answering an http:// label link is refused (plugin_error) at each retry of
    CreateShipments until the execution's 90 s are spent; the attempt asked then refuses at once
    (WorkflowOutOfTime), and the hold that parks the order names that plugin and hook, as the plugin
    guide says, not only the time budget: an operator reading the order sees which plugin to fix."""
    from functions.workflow import create_shipments, park_order
    from tests.integration.test_handlers import Context

    order_id = reserved_order(api)
    started = datetime.now(UTC)
    budget = {"order_id": order_id, "retry_for_seconds": 90}
    with installed(failing_at("oms_carrier_create_shipment", CARRIER_FAILURES["label-url-not-https"])):
        with pytest.raises(PluginError):
            create_shipments.lambda_handler({**budget, "started": started.isoformat()}, Context())
        # The execution's next attempt, its retries' time spent (its start moved back).
        with pytest.raises(WorkflowOutOfTime) as refused:
            create_shipments.lambda_handler(
                {**budget, "started": (started - timedelta(seconds=91)).isoformat()}, Context()
            )

    park_order.lambda_handler(
        {"order_id": order_id, "error": "WorkflowOutOfTime", "cause": str(refused.value)}, Context()
    )

    parked = api.get(f"/orders/{order_id}").json()
    assert parked["status"] == "on_hold"
    note = parked["hold"]["note"]
    assert note.startswith(f"order workflow failed after retries: WorkflowOutOfTime: plugin {PLUGIN} returned"), note
    assert "(oms_carrier_create_shipment)" in note and "retried until the workflow's 90 s" in note
    (entry,) = [e for e in api.get(f"/orders/{order_id}/history").json()["items"] if e["type"] == "on_hold"]
    assert f"plugin {PLUGIN} returned" in entry["detail"]["message"]


def test_a_plugin_failure_the_step_cannot_note_on_the_order_still_fails_the_step_as_the_plugins(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    """The note is the step's second write: DynamoDB refusing it (throttled) must not turn the
    plugin_error Step Functions retries into another error (nor hide it)."""
    from botocore.exceptions import ClientError

    from functions.workflow import create_shipments
    from functions.workflow.step import container as step_container
    from tests.integration.test_handlers import Context

    order_id = reserved_order(api)

    def throttled(*_: Any) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "UpdateItem")

    monkeypatch.setattr(step_container().workflow, "note_plugin_failure", throttled)
    event = {"order_id": order_id, "started": datetime.now(UTC).isoformat(), "retry_for_seconds": 90}
    with installed(failing_at("oms_carrier_create_shipment", Raised)), pytest.raises(PluginError) as failed:
        create_shipments.lambda_handler(event, Context())

    assert f"plugin {PLUGIN} failed in oms_carrier_create_shipment" in str(failed.value)

"""Requests that move money whose payment plugin fails (it raises after the gateway answered: its
own bug, no gateway's answer), in-process on moto: each answers 502 `payment_plugin_error` in the
contract's shape, or what was written before the failure, never a 500; nothing is recorded as moved
that the gateway was not heard to move; what was asked stands under its key, so the request repeated
once the plugin works (or the reconciler's pass) finishes it, moving the money once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import field_validator

from core import hookimpl
from core.workflow_types import PaymentResult
from plugins import test_payments
from tests.e2e.client import assert_error
from tests.integration import test_cancel_units_api
from tests.integration.conftest import dying_at_the_ship_write
from tests.integration.in_process import InProcessApi
from tests.integration.test_cancel_units_api import allocated, cancel, money, ship, stock

api = test_cancel_units_api.api  # its catalog (MUG in the west, CAP in the east, a store), in this module's account

BUG = "the plugin's own bug, after the gateway answered"


class AnswersThenRaises:
    """The built-in test gateway behind a plugin that raises once the gateway answered each of
    `operations` (a capture, refund or authorization the gateway made, that the plugin loses), or
    with `garbage`, answers what no payment result is instead of the gateway's answer."""

    def __init__(self, *operations: str, only: str | None = None, garbage: bool = False):
        self.operations = set(operations)
        self.only = only  # what the idempotency keys it fails under hold (None: it fails under every one)
        self.garbage = garbage

    def _failing(self, operation: str, key: str) -> bool:
        return operation in self.operations and (self.only is None or self.only in key)

    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, method, authorization, amount, idempotency_key):
        made = test_payments.oms_payment_capture(
            method=method, authorization=authorization, amount=amount, idempotency_key=idempotency_key
        )
        if self._failing("capture", idempotency_key):
            if self.garbage:
                return f"approved: {made.reference}"
            raise ValueError(BUG)
        return made

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self, method, authorization, amount, idempotency_key):
        made = test_payments.oms_payment_refund(
            method=method, authorization=authorization, amount=amount, idempotency_key=idempotency_key
        )
        if self._failing("refund", idempotency_key):
            raise ValueError(BUG)
        return made

    @hookimpl(tryfirst=True)
    def oms_payment_void(self, method, authorization, idempotency_key):
        made = test_payments.oms_payment_void(
            method=method, authorization=authorization, idempotency_key=idempotency_key
        )
        if self._failing("void", idempotency_key):
            raise ValueError(BUG)
        return made

    @hookimpl(tryfirst=True)
    def oms_payment_authorize(self, method, token, amount, idempotency_key, attempt):
        made = test_payments.oms_payment_authorize(
            method=method, token=token, amount=amount, idempotency_key=idempotency_key, attempt=attempt
        )
        if self._failing("authorize", idempotency_key):
            raise ValueError(BUG)
        return made


def managers() -> list[Any]:
    """The plugin managers of the API function's container and of the workflow tasks' (each its own Lambda)."""
    from functions.api.dependencies import container
    from functions.workflow.step import container as step_container

    return [container().plugins, step_container().plugins]


@contextmanager
def registered(plugin: object) -> Iterator[Any]:
    for manager in managers():
        manager.register(plugin)
    try:
        yield plugin
    finally:
        for manager in managers():
            manager.unregister(plugin)


@contextmanager
def failing(*operations: str, only: str | None = None, garbage: bool = False) -> Iterator[AnswersThenRaises]:
    with registered(AnswersThenRaises(*operations, only=only, garbage=garbage)) as plugin:
        yield plugin


def history(api: InProcessApi, order_id: str) -> list[dict[str, Any]]:
    return api.get(f"/orders/{order_id}/history").json()["items"]


def plugin_errors(api: InProcessApi, order_id: str, event: str) -> list[dict[str, Any]]:
    return [h["detail"] for h in history(api, order_id) if h["type"] == event and h["detail"]["kind"] == "plugin_error"]


def assert_plugin_failed(answer: Any, operation: str) -> None:
    assert_error(answer, 502, "payment_plugin_error")
    error = answer.json()["error"]
    assert f"failed in the {operation}" in error["message"] and "nothing was recorded as moved" in error["message"]
    assert error["details"][0]["operation"] == operation


@pytest.mark.parametrize("garbage", [False, True], ids=["raises", "answers-garbage"])
def test_a_ship_whose_payment_plugin_fails_after_the_capture_is_502_and_the_ship_repeated_captures_once(api, garbage):
    order = allocated(api, ("MUG", 2))
    (shipment,) = order["shipments"]
    before = stock(api, "MUG", "wh-west")
    path = f"/orders/{order['id']}/shipments/{shipment['id']}/ship"

    with failing("capture", garbage=garbage):
        answer = api.post(path, json={})

    assert_plugin_failed(answer, "capture")
    shown = api.get(f"/orders/{order['id']}").json()
    assert (shown["shipments"][0]["status"], money(shown["payment"]["captured"])) == ("pending", "0.00")
    assert stock(api, "MUG", "wh-west") == before  # nothing left the shelf on the order's books
    [failed] = plugin_errors(api, order["id"], "payment_capture_failed")
    assert ("returned str" if garbage else "ValueError") in failed["message"]
    assert failed["shipment_id"] == shipment["id"]

    again = api.post(path, json={})  # the plugin works again: the same key, the gateway's capture recorded

    assert again.status_code == 200, again.text
    done = again.json()
    assert (done["status"], done["payment"]["captured"]) == ("shipped", order["totals"]["grand_total"])
    assert stock(api, "MUG", "wh-west")[0] == before[0] - 2


def test_a_batch_whose_second_ship_the_payment_plugin_fails_answers_each_item_and_the_batch_sent_again_ships_it(api):
    order = allocated(api, ("MUG", 1), ("CAP", 2))
    first, second = order["shipments"]
    items = [{"order_id": order["id"], "shipment_id": s["id"], "action": "ship"} for s in (first, second)]
    headers = {"Idempotency-Key": f"batch-{order['id']}"}

    with failing("capture", only=second["id"]):
        answer = api.post("/shipments/confirmations", json={"items": items}, headers=headers)

    assert answer.status_code == 200, answer.text
    done, refused = answer.json()["items"]
    assert (done["status"], done["order_status"], done["error"]) == ("shipped", "partially_shipped", None)
    assert (refused["status"], refused["error"]["code"], refused["retry"]) == (None, "payment_plugin_error", True)
    assert refused["error"]["details"][0]["operation"] == "capture"
    shown = api.get(f"/orders/{order['id']}").json()
    assert [s["status"] for s in shown["shipments"]] == ["shipped", "pending"]
    [failed] = plugin_errors(api, order["id"], "payment_capture_failed")
    assert failed["shipment_id"] == second["id"]

    again = api.post("/shipments/confirmations", json={"items": items}, headers=headers)  # not kept: run again

    assert again.status_code == 200, again.text
    assert [(i["status"], i["error"]) for i in again.json()["items"]] == [("shipped", None), ("shipped", None)]
    after = api.get(f"/orders/{order['id']}").json()
    assert (after["status"], after["payment"]["captured"]) == ("shipped", order["totals"]["grand_total"])


def test_an_edit_whose_payment_plugin_fails_authorizing_the_new_total_is_502_and_the_cancel_voids_that_hold(api):
    order = allocated(api, ("MUG", 1))
    edit = {"lines": [{"sku": "MUG", "quantity": 3}]}

    with failing("authorize"):
        answer = api.request("PATCH", f"/orders/{order['id']}", json=edit, headers={"If-Match": str(order["version"])})

    assert_plugin_failed(answer, "authorize")
    shown = api.get(f"/orders/{order['id']}").json()
    assert (shown["lines"], shown["payment"], shown["status"]) == (order["lines"], order["payment"], "allocated")
    [failed] = plugin_errors(api, order["id"], "payment_authorization_failed")
    assert "ValueError" in failed["message"]

    cancelled = cancel(api, order["id"])  # the gateway approved the new total: that hold is released too

    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["payment"]["status"]) == ("cancelled", "voided")
    voided = [h["detail"] for h in history(api, order["id"]) if h["type"] == "payment_voided"]
    assert len(voided) == 2 and voided[0]["authorization"] != order["payment"]["authorization"]
    assert voided[1]["authorization"] == order["payment"]["authorization"]


def refund(api: InProcessApi, order_id: str, amount: str, key: str):
    body = {"amount": {"amount": amount, "currency": "USD"}, "reason": "late delivery"}
    return api.post(f"/orders/{order_id}/refunds", json=body, headers={"Idempotency-Key": key})


def test_a_refund_whose_payment_plugin_fails_is_502_pending_and_repeated_with_its_key_refunds_once(api):
    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    key = f"appease-{order['id']}"

    with failing("refund"):
        answer = refund(api, order["id"], "5.00", key)

    assert_plugin_failed(answer, "refund")
    [pending] = api.get(f"/orders/{order['id']}/refunds").json()["items"]
    assert (pending["status"], money(pending["amount"])) == ("pending", "5.00")
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "0.00"
    [failed] = plugin_errors(api, order["id"], "payment_refund_failed")
    assert failed["refund_id"] == pending["id"]

    again = refund(api, order["id"], "5.00", key)

    assert again.status_code == 201, again.text
    assert (again.json()["id"], again.json()["status"]) == (pending["id"], "succeeded")
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "5.00"


def test_a_refund_the_payment_plugin_failed_in_is_finished_by_the_pending_refund_pass(api):
    from functions.api.dependencies import container

    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    with failing("refund"):
        assert_plugin_failed(refund(api, order["id"], "5.00", f"appease-{order['id']}"), "refund")

    [finished] = container().refunds.finish_pending(order["id"], "reconciler")  # what the pass asks of each order

    assert finished.status == "succeeded"
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "5.00"


def test_a_collect_whose_payment_plugin_fails_is_502_the_pickup_still_ready_and_collected_again_it_captures(api):
    order = allocated(api, ("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    (shipment,) = order["shipments"]
    path = f"/orders/{order['id']}/shipments/{shipment['id']}"
    assert api.post(f"{path}/ready").status_code == 200

    with failing("capture"):
        answer = api.post(f"{path}/deliver")

    assert_plugin_failed(answer, "capture")
    shown = api.get(f"/orders/{order['id']}").json()
    assert (shown["shipments"][0]["status"], money(shown["payment"]["captured"])) == ("ready_for_pickup", "0.00")

    again = api.post(f"{path}/deliver")

    assert again.status_code == 200, again.text
    collected = again.json()
    assert (collected["status"], collected["payment"]["captured"]) == ("delivered", order["totals"]["grand_total"])


def test_the_last_ship_of_an_order_that_lost_units_whose_plugin_fails_releasing_the_rest_answers_it_shipped(api):
    # The ship is written before the settlement: a 502 would tell the warehouse the parcel did not ship.
    from functions.bootstrap import Config, bootstrap

    order = allocated(api, ("MUG", 1), ("CAP", 2))
    assert cancel(api, order["id"], [("L2", 1)]).status_code == 200
    ship(api, order, "wh-west")
    east = next(s for s in order["shipments"] if s["location_id"] == "wh-east")

    with failing("void"):
        answer = api.post(f"/orders/{order['id']}/shipments/{east['id']}/ship", json={})

    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert shown["status"] == "shipped" and [s["status"] for s in shown["shipments"]] == ["shipped", "shipped"]
    payment = shown["payment"]
    assert payment["captured"] == shown["totals"]["grand_total"] and payment["status"] != "voided"
    assert money(payment["authorized"]) > money(payment["captured"])  # the rest still held, its void owed
    [failed] = plugin_errors(api, order["id"], "payment_void_failed")
    assert failed["authorization"] == order["payment"]["authorization"]
    stored = bootstrap(Config.from_env()).order_repository.get(order["id"], consistent=True)
    assert stored.settlement_owed  # for the reconciler's kept-back pass, should nobody ship it again

    again = api.post(f"/orders/{order['id']}/shipments/{east['id']}/ship", json={})  # finishes what it left

    assert again.status_code == 200, again.text
    last = history(api, order["id"])[-1]
    assert (last["type"], last["detail"]["authorization"]) == ("payment_voided", order["payment"]["authorization"])


# --- Holds an authorization the plugin failed in may leave at the gateway ---------------------------


class LooksNothingUp:
    """A payment plugin that cannot look an authorization up by its key (the hook is optional): it
    answers none, whatever the gateway holds."""

    @hookimpl(wrapper=True)
    def oms_payment_find_authorization(self):
        yield
        return None


def placed(api: InProcessApi) -> str:
    from tests.builders import order_body
    from tests.integration.test_cancel_units_api import _orders

    answer = api.post(
        "/orders", json=order_body(external_id=f"web-p{next(_orders)}", lines=[{"sku": "MUG", "quantity": 1}])
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def authorize_step(order_id: str) -> None:
    """The workflow's AuthorizePayment task, as Step Functions runs it (its Lambda handler)."""
    from functions.workflow.authorize_payment import lambda_handler
    from tests.integration.test_handlers import Context

    with pytest.raises(Exception, match="oms_payment_authorize"):
        lambda_handler({"order_id": order_id, "attempt": 0}, Context())


def held_at_the_gateway(order_id: str) -> list[str]:
    """The authorizations the test gateway approved for the order's own key and did not void."""
    from core import payment_keys

    made = test_payments._authorized.get(payment_keys.authorize(order_id, 1))
    return [made] if made and not test_payments._held[made].voided else []


def test_an_authorization_the_plugin_failed_in_after_the_gateway_approved_is_voided_by_the_cancel(api):
    order_id = placed(api)
    with failing("authorize"):
        authorize_step(order_id)  # the gateway approved; the plugin raised after
    assert len(held_at_the_gateway(order_id)) == 1

    answer = cancel(api, order_id)

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["payment"]["status"]) == ("cancelled", "pending")
    assert held_at_the_gateway(order_id) == []
    [voided] = [h["detail"] for h in history(api, order_id) if h["type"] == "payment_voided"]
    assert voided["authorization_key"].endswith(":authorize:v1")


def test_an_authorization_the_plugin_failed_in_is_released_by_a_plugin_that_cannot_look_keys_up(api):
    # Asked again under its key (the gateway answers with the authorization it made) and voided:
    # by the cancel once the plugin works, or by the reconciler's pass while it still fails then.
    from functions.bootstrap import Config, bootstrap

    with registered(LooksNothingUp()):
        order_id = placed(api)
        with failing("authorize"):
            authorize_step(order_id)
            authorize_step(order_id)  # Step Functions' retry: the same failure, noted once
            [failed] = plugin_errors(api, order_id, "payment_authorization_failed")
            assert failed["authorization_key"].endswith(":authorize:v1") and failed["amount"]
            answer = cancel(api, order_id)  # asked again under the key: the plugin fails again
        assert answer.status_code == 200, answer.text
        assert len(held_at_the_gateway(order_id)) == 1
        stored = bootstrap(Config.from_env()).order_repository.get(order_id, consistent=True)
        assert stored.own_void_owed  # for the reconciler's authorization pass

        later = bootstrap(Config.from_env(), clock=lambda: datetime.now(UTC) + timedelta(minutes=16))
        later.plugins.register(LooksNothingUp())
        later.authorization_sweep.run("reconciler")

    assert held_at_the_gateway(order_id) == []
    last = history(api, order_id)[-1]
    assert (last["type"], last["detail"]["authorization_key"]) == ("payment_voided", failed["authorization_key"])


def test_a_cancel_of_the_rest_whose_plugin_fails_in_the_settlement_capture_is_answered_its_capture_standing(api):
    # Cancelling the parcel that carries the shipping leaves a total above what was captured: the
    # cancel captures the rest after its write. The plugin fails after the gateway captured it.
    from functions.bootstrap import Config, bootstrap

    order = allocated(api, ("MUG", 1), ("CAP", 2))
    ship(api, order, order["shipments"][1]["location_id"])

    with failing("capture"):
        answer = cancel(api, order["id"])

    assert answer.status_code == 200, answer.text
    shown = answer.json()
    assert shown["status"] == "shipped"
    assert Decimal(money(shown["payment"]["captured"])) < Decimal(money(shown["totals"]["grand_total"]))
    [failed] = plugin_errors(api, order["id"], "payment_capture_failed")
    stored = bootstrap(Config.from_env()).order_repository.get(order["id"], consistent=True)
    assert [r.shipment_id for r in stored.captures_requested] == [None]  # stands, for the capture pass
    assert failed["capture_key"]

    again = cancel(api, order["id"])  # the plugin works: asked under the same key, recorded once

    assert again.status_code == 200, again.text
    payment = again.json()["payment"]
    assert payment["captured"] == shown["totals"]["grand_total"]
    assert [h["type"] for h in history(api, order["id"])].count("payment_captured") == 1


def test_a_reject_whose_plugin_fails_refunding_a_dead_ships_capture_is_502_and_rejects_once_it_works(api, monkeypatch):
    # The ship died after the gateway captured (a Lambda timeout): the reject refunds that capture
    # first. The plugin fails in the refund: nothing is rejected, the capture request stands.
    from functions.adapters.dynamodb import DynamoOrders

    order = allocated(api, ("MUG", 2))
    (shipment,) = order["shipments"]
    monkeypatch.setattr(DynamoOrders, "update", dying_at_the_ship_write(TimeoutError("Task timed out")))
    assert api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={}).status_code == 500
    monkeypatch.undo()
    path = f"/orders/{order['id']}/shipments/{shipment['id']}/reject"

    with failing("refund"):
        answer = api.post(path, json={"reason": "damaged stock"})

    assert_plugin_failed(answer, "refund")
    shown = api.get(f"/orders/{order['id']}").json()
    assert (shown["status"], shown["shipments"][0]["status"]) == ("allocated", "pending")
    [failed] = plugin_errors(api, order["id"], "payment_refund_failed")
    assert failed["shipment_id"] == shipment["id"]

    again = api.post(path, json={"reason": "damaged stock"})

    assert again.status_code == 200, again.text
    assert (again.json()["status"], money(again.json()["payment"]["captured"])) == ("authorized", "0.00")
    assert [h["type"] for h in history(api, order["id"])].count("payment_capture_reversed") == 1


def test_an_edit_whose_payment_plugin_failed_repeated_once_it_works_records_the_authorization_the_gateway_made(api):
    order = allocated(api, ("MUG", 1))
    edit = {"lines": [{"sku": "MUG", "quantity": 3}]}
    headers = {"If-Match": str(order["version"])}
    with failing("authorize"):
        assert_plugin_failed(api.request("PATCH", f"/orders/{order['id']}", json=edit, headers=headers), "authorize")

    again = api.request("PATCH", f"/orders/{order['id']}", json=edit, headers=headers)  # the same edit, as sent

    assert again.status_code == 200, again.text
    edited = again.json()
    assert edited["lines"][0]["quantity"] == 3
    assert edited["payment"]["authorized"] == edited["totals"]["grand_total"]
    made, replaced = edited["payment"]["authorization"], order["payment"]["authorization"]
    assert made != replaced  # the one the gateway made when the plugin failed, answered again under its key
    assert test_payments._held[made].amount.amount == Decimal(money(edited["totals"]["grand_total"]))
    assert test_payments._held[replaced].voided
    assert len([key for key in test_payments._authorized if key.startswith(order["id"])]) == 2  # no third hold


@pytest.mark.parametrize("operation", ["capture", "refund", "void", "authorize"])
def test_a_payment_plugins_exception_words_reach_no_storefront_only_its_type(api, operation):
    """A failed attempt's history entry (payment_<operation>_failed, kind plugin_error) and the 502
    name the plugin, the hook and the exception's type: the plugin's own words (BUG here; a client
    library's may hold a connection string) are no storefront's to read."""
    from core.models import PAYMENT_FAILURE_EVENTS
    from tests.integration.in_process import issue

    storefront = issue(api, "orders:write", "orders:read", "fulfillment:write", "refunds:write", channel="web")
    order = allocated(api, ("MUG", 2)) if operation != "authorize" else {"id": placed(api)}
    if operation == "refund":
        order = ship(api, order, "wh-west")
    with failing(operation):
        if operation == "capture":
            answer = api.post(
                f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}/ship", json={}, key=storefront
            )
        elif operation == "refund":
            body = {"amount": {"amount": "5.00", "currency": "USD"}, "reason": "late delivery"}
            answer = api.post(
                f"/orders/{order['id']}/refunds", json=body, headers={"Idempotency-Key": "k1"}, key=storefront
            )
        elif operation == "void":
            answer = cancel(api, order["id"], key=storefront)
        else:
            authorize_step(order["id"])
            answer = None

    read = api.get(f"/orders/{order['id']}/history", key=storefront)
    assert read.status_code == 200, read.text
    [failed] = [h["detail"] for h in read.json()["items"] if h["type"] == PAYMENT_FAILURE_EVENTS[operation]]
    assert failed["kind"] == "plugin_error"
    assert failed["message"].endswith(
        f"oms_payment_{operation}: ValueError; its words are in the log line `plugin raised`"
    )
    shown = read.text + ("" if answer is None else answer.text)
    assert BUG not in shown and "own bug" not in shown, shown


class _RefusingResult(PaymentResult):
    """A payment plugin's own answer class whose validator raises with its client library's words
    when the core validates the answer again (the plugin built it without validation)."""

    @field_validator("reference")
    @classmethod
    def _known(cls, reference: str) -> str:
        raise ValueError(f"reference lookup failed: postgresql://acme:{BUG}@refs.internal/db")


class AnswersItsOwnClass:
    @hookimpl(tryfirst=True)
    def oms_payment_capture(self, method, authorization, amount, idempotency_key):
        made = test_payments.oms_payment_capture(
            method=method, authorization=authorization, amount=amount, idempotency_key=idempotency_key
        )
        return _RefusingResult.model_construct(outcome=made.outcome, reference=made.reference)


def test_a_payment_plugins_own_validators_words_reach_no_storefront_only_its_type(api):
    """A validator of the plugin's own subclass of PaymentResult is the plugin's code: the words of
    what it raises are no storefront's to read, in the 502 or the payment_capture_failed entry."""
    from tests.integration.in_process import issue

    storefront = issue(api, "orders:write", "orders:read", "fulfillment:write", channel="web")
    order = allocated(api, ("MUG", 2))

    with registered(AnswersItsOwnClass()):
        answer = api.post(
            f"/orders/{order['id']}/shipments/{order['shipments'][0]['id']}/ship", json={}, key=storefront
        )

    assert_plugin_failed(answer, "capture")
    read = api.get(f"/orders/{order['id']}/history", key=storefront)
    [failed] = [h["detail"] for h in read.json()["items"] if h["type"] == "payment_capture_failed"]
    assert "returned a malformed PaymentResult: reference: its validator raised ValueError" in failed["message"]
    shown = read.text + answer.text
    assert BUG not in shown and "postgresql://" not in shown, shown

"""A received return whose refund's payment plugin fails (it raises, or answers garbage, after the
built-in test gateway answered) in the returns workflow's real step handler, in-process on moto:
the step fails as a gateway outage fails it (a step error the state machine retries, then its
compensation records the return stuck), nothing is recorded as refunded that the gateway was not
heard to refund, the return stays `received` with its refund pending under its key, and once the
plugin works the return is refunded once (its step run again, or the pending-refund pass)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from core import hookimpl
from core.errors import PaymentPluginFailed, PluginUnavailable
from core.plugin_manager import PluginInfo
from plugins import test_payments
from tests.fakes import run_return_workflow
from tests.integration import return_steps, test_cancel_units_api
from tests.integration.return_steps import RECEIPT, later, received, refunds, step, stuck
from tests.integration.test_cancel_units_api import money
from tests.integration.test_payment_plugin_failures_api import AnswersThenRaises

api = test_cancel_units_api.api  # its catalog (MUG in the west), in this module's account
services = return_steps.services  # the API's and the return step's services


class RefundsThenFails(AnswersThenRaises):
    """The built-in test gateway behind a plugin that, once the gateway made each refund, raises,
    or with `garbage` answers what no payment result is."""

    @hookimpl(tryfirst=True)
    def oms_payment_refund(self, method, authorization, amount, idempotency_key):
        made = test_payments.oms_payment_refund(
            method=method, authorization=authorization, amount=amount, idempotency_key=idempotency_key
        )
        if not self._failing("refund", idempotency_key):
            return made
        if self.garbage:
            return f"refunded: {made.reference}"
        raise ValueError("the plugin's own bug, after the gateway answered")


@contextmanager
def failing(services: Any, garbage: bool, only: str | None = None) -> Iterator[None]:
    from functions.return_workflow import app as step_app

    plugin = RefundsThenFails("refund", garbage=garbage, only=only)
    managers = [services.plugins, step_app.container().plugins]
    for manager in managers:
        manager.register(plugin)
    try:
        yield
    finally:
        for manager in managers:
            manager.unregister(plugin)


@pytest.mark.parametrize("garbage", [False, True], ids=["raises", "answers-garbage"])
def test_a_return_whose_refund_plugin_fails_stays_received_its_refund_pending_and_refunds_once_it_works(
    api, services, garbage
):
    order, return_id = received(api)

    with failing(services, garbage), pytest.raises(PaymentPluginFailed):
        step("refund", return_id)

    rma = api.get(f"/returns/{return_id}").json()
    assert rma["status"] == "received"
    [(status, amount)] = refunds(api, order["id"])
    assert status == "pending"
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "0.00"

    step("refund", return_id)  # the state machine's retry, the plugin working again

    done = api.get(f"/returns/{return_id}").json()
    assert (done["status"], money(done["refund"])) == ("refunded", amount)
    assert refunds(api, order["id"]) == [("succeeded", amount)]
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == amount


def test_a_return_stuck_on_its_refund_plugin_is_refunded_once_by_the_pending_pass_and_the_receipt_again(api, services):
    # The step's retries spent with the plugin failing, the compensation records the return stuck:
    # left to a person, as a gateway outage leaves it (its refund pending under its key).
    order, return_id = received(api)
    with failing(services, garbage=False):
        stuck(return_id, "refund", PaymentPluginFailed)
    [(status, amount)] = refunds(api, order["id"])
    assert status == "pending"
    assert api.get(f"/returns/{return_id}").json()["status"] == "received"
    history = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert [h["detail"]["kind"] for h in history if h["type"] == "payment_refund_failed"][-1] == "plugin_error"

    [finished] = services.refunds.finish_pending(order["id"], "reconciler", unshown=True)  # the pass, plugin fixed
    assert api.post(f"/returns/{return_id}/receive", json=RECEIPT).status_code in (200, 202)  # the person resumes it
    step("refund", return_id)
    step("exchange", return_id)

    assert finished.status == "succeeded"
    done = api.get(f"/returns/{return_id}").json()
    assert (done["status"], money(done["refund"])) == ("refunded", amount)
    assert refunds(api, order["id"]) == [("succeeded", amount)]
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == amount
    recorded = [h for h in api.get(f"/orders/{order['id']}/history").json()["items"] if h["type"] == "return_stuck"]
    assert len(recorded) == 1


def test_a_return_settled_in_one_go_whose_refund_plugin_fails_stays_received_and_settling_again_refunds_once(
    api, services
):
    # run_return_workflow, every step in a row (a receipt's in-process workflow): a plugin failure leaves
    # the return received, its refund pending, as a gateway outage does, and running it again finishes it.
    order, return_id = received(api)

    with failing(services, garbage=False):
        item = run_return_workflow(services.returns, return_id, actor="returns-workflow")

    assert item.status.value == "received"
    [(status, amount)] = refunds(api, order["id"])
    assert status == "pending"

    done = run_return_workflow(services.returns, return_id, actor="returns-workflow")

    assert (done.status.value, str(done.refund.amount)) == ("refunded", amount)
    assert refunds(api, order["id"]) == [("succeeded", amount)]


@pytest.mark.parametrize("garbage", [False, True], ids=["raises", "answers-garbage"])
def test_an_exchange_whose_plugin_fails_refunding_the_rest_of_its_credit_places_one_replacement_and_refunds_it_once(
    api, services, garbage
):
    # A MUG (12.50) exchanged for a CAP (7.77): the rest of the credit is refunded through the plugin.
    order, return_id = received(api, exchange=[{"sku": "CAP", "quantity": 1}])
    step("refund", return_id)  # an exchange's refund is its Exchange step's

    with failing(services, garbage), pytest.raises(PaymentPluginFailed):
        step("exchange", return_id)

    assert api.get(f"/returns/{return_id}").json()["status"] == "received"
    [(status, rest)] = refunds(api, order["id"])
    assert status == "pending"
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "0.00"

    step("exchange", return_id)  # the state machine's retry, the plugin working again

    done = api.get(f"/returns/{return_id}").json()
    assert done["status"] == "refunded" and done["exchange_order_id"]
    assert refunds(api, order["id"]) == [("succeeded", rest)]
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == rest
    replacements = [
        o for o in api.get("/orders", params={"limit": 100}).json()["items"]
        if o.get("external_id", "").startswith(order["external_id"] + "-x")
    ]  # fmt: skip
    assert [o["id"] for o in replacements] == [done["exchange_order_id"]]


def test_a_return_whose_step_finishes_another_returns_refund_the_plugin_fails_in_ends_refunded_as_in_an_outage(
    api, services, monkeypatch
):
    # Return B's refund step, once B is marked refunded, finishes the pending refund of return A
    # that a concurrent run of B's step recorded it would (Return.shows_owed): A's step began that
    # refund after B's run read the order, and the plugin fails in it. As with the gateway down,
    # B's step ends (B refunded); A's refund stays pending for the pending-refund pass, made once.
    from core.refund_service import RefundService
    from core.refunds import refund_id_for

    order, a = received(api)
    body = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "too big", "reason_code": "size_or_fit"}]}
    b = api.post(f"/orders/{order['id']}/returns", json=body).json()["id"]
    assert api.post(f"/returns/{b}/receive", json=RECEIPT).status_code in (200, 202)
    for name in ("receive", "restock", "record"):
        step(name, b)
    real = RefundService.issue_decided_refund

    def a_begins_meanwhile(self: RefundService, order_id: str, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(RefundService, "issue_decided_refund", real)
        with pytest.raises(PaymentPluginFailed):
            step("refund", a)  # A's step, its refund left pending by the plugin
        services.returns._change(b, None, lambda r: r.owing_shown([a]))  # B's concurrent run's record
        return real(self, order_id, *args, **kwargs)

    with failing(services, garbage=False, only=refund_id_for(order["id"], f"{a}#0")):
        monkeypatch.setattr(RefundService, "issue_decided_refund", a_begins_meanwhile)
        step("refund", b)

    assert api.get(f"/returns/{b}").json()["status"] == "refunded"
    assert api.get(f"/returns/{a}").json()["status"] == "received"
    assert sorted(status for status, _ in refunds(api, order["id"])) == ["pending", "succeeded"]

    [finished] = services.refunds.finish_pending(order["id"], "reconciler", unshown=True)  # the pass, plugin fixed
    step("refund", a)

    assert finished.status == "succeeded"
    assert api.get(f"/returns/{a}").json()["status"] == "refunded"
    assert [status for status, _ in refunds(api, order["id"])] == ["succeeded", "succeeded"]


def test_a_return_stuck_on_its_refund_plugin_is_marked_refunded_once_by_the_reconciler_once_its_refund_succeeded(
    api, services
):
    # Stuck after the plugin failed through the step's retries, its refund pending: the reconciler's
    # returns pass leaves it received (nothing to mark yet) until the pending-refund pass makes that
    # refund once the plugin works. Before: the pass set it aside for a person to receive it again,
    # and it stayed `received`. Now the next returns pass marks it refunded, as its refund step
    # would, without asking the gateway again, once however often it runs.
    order, return_id = received(api)
    with failing(services, garbage=False):
        stuck(return_id, "refund", PaymentPluginFailed)
        [(_, amount)] = refunds(api, order["id"])
        reconciler = later()
        assert reconciler.return_reconciler.run() == []  # its refund still pending: nothing to start or mark
        assert api.get(f"/returns/{return_id}").json()["status"] == "received"
    [finished] = services.refunds.finish_pending(order["id"], "reconciler", unshown=True)  # the pass, plugin fixed
    assert finished.status == "succeeded"
    before = api.get(f"/orders/{order['id']}/history").json()["items"]

    assert reconciler.return_reconciler.run() == []  # nothing to start: its workflow's work is done
    assert reconciler.return_reconciler.marked_refunded == [return_id]
    assert reconciler.return_reconciler.run() == []
    assert reconciler.return_reconciler.marked_refunded == []

    done = api.get(f"/returns/{return_id}").json()
    assert (done["status"], money(done["refund"])) == ("refunded", amount)
    assert refunds(api, order["id"]) == [("succeeded", amount)]
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == amount
    assert api.get(f"/orders/{order['id']}/history").json()["items"] == before  # the step's mark: the return's alone
    assert reconciler.return_workflow.started == []


@contextmanager
def failed_to_load(services: Any) -> Iterator[None]:
    """A plugin (acme_returns) failed to load in the API's and the return step's containers."""
    from functions.return_workflow import app as step_app

    broken = PluginInfo(name="acme_returns", status="broken", reason="RuntimeError: boom", error="RuntimeError")
    managers = [services.plugins, step_app.container().plugins]
    for manager in managers:
        manager.broken.append(broken)
    try:
        yield
    finally:
        for manager in managers:
            manager.broken.remove(broken)


def test_a_return_refunded_while_a_plugin_failed_to_load_refunds_nothing_until_it_loads(api, services):
    # The failed plugin may be the one that says what a return refunds: the Refund step refuses
    # (PluginUnavailable, naming it) before asking anybody, and refunds once the plugins load.
    order, return_id = received(api)

    with failed_to_load(services), pytest.raises(PluginUnavailable, match="acme_returns"):
        step("refund", return_id)

    assert api.get(f"/returns/{return_id}").json()["status"] == "received"
    assert refunds(api, order["id"]) == []
    assert money(api.get(f"/orders/{order['id']}").json()["payment"]["refunded"]) == "0.00"

    step("refund", return_id)  # the state machine's retry, the plugins loaded

    done = api.get(f"/returns/{return_id}").json()
    assert done["status"] == "refunded"
    assert refunds(api, order["id"]) == [("succeeded", money(done["refund"]))]

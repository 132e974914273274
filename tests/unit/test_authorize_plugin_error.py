"""The AuthorizePayment task when a payment plugin fails (it raises, or answers what the core cannot
take): an attempt the gateway may have approved is recorded with its key and amount, as one whose
answer was lost; and a plugin failing in the release of what an earlier version's key may hold
does not keep the edited order from being authorized (the key is kept for a cancel or the
reconciler, as when the gateway is down)."""

from __future__ import annotations

import pytest

from core import hookimpl, payment_keys
from core.errors import PluginError, PluginUnavailable, TransientError
from core.models import LineInput, OrderEdit
from core.plugin_manager import PluginInfo
from core.status import OrderStatus
from core.workflow import Workflow
from functions.plugin_loading import load_plugin_manager
from tests.builders import NOW
from tests.unit.test_workflow import STOCK, AnswerLost, NoLookup
from tests.unit.world import build_world


class LookupCrashes:
    """A payment plugin whose lookup of an authorization by its key raises while `crashing`."""

    crashing = True

    @hookimpl(tryfirst=True)
    def oms_payment_find_authorization(self) -> None:
        if self.crashing:
            raise ValueError("the plugin's own bug")


def test_an_edited_pending_order_is_authorized_though_its_plugin_fails_releasing_an_earlier_key():
    lost, crashing = AnswerLost(), LookupCrashes()
    world = build_world(STOCK, lost, crashing)
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(TransientError):
        world.workflow.authorize_payment(order_id, attempt=0)  # approved at the gateway, the answer lost
    placed = world.order(order_id)
    edit = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)])
    world.actions.edit(order_id, placed.version, edit, actor="key_ops")  # its release fails: in the history

    world.workflow.authorize_payment(order_id, attempt=1)

    order = world.order(order_id)
    earlier = payment_keys.authorize(order_id, 1)
    assert order.status is OrderStatus.AUTHORIZED and order.payment.authorization not in lost.made
    assert order.authorization_keys_given_up == [earlier]  # kept, for a cancel or the reconciler
    kinds = [(h.detail["kind"], h.actor) for h in world.history(order_id) if h.type == "payment_void_failed"]
    assert kinds == [("plugin_error", "key_ops"), ("plugin_error", "workflow")]

    crashing.crashing = False
    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert sorted(world.spy.voided) == sorted([*lost.made, order.payment.authorization])


def test_an_order_is_not_authorized_while_a_plugin_is_broken_and_the_step_names_it():
    # The execution parks it with the reason a person can act on (the plugin that failed to load),
    # and nothing asked the gateway, so nothing is recorded as maybe authorized.
    world = build_world(STOCK)
    order_id = world.place(("TSHIRT", 2))
    plugins = load_plugin_manager(enable_test_payments=True)
    plugins.broken.append(
        PluginInfo(name="acme_tax", status="broken", reason="RuntimeError: boom", error="RuntimeError")
    )
    workflow = Workflow(world.orders, world.catalog, world.inventory, plugins, world.labels, clock=lambda: NOW)

    with pytest.raises(PluginUnavailable, match="acme_tax"):
        workflow.authorize_payment(order_id, attempt=0)

    assert world.order(order_id).status is OrderStatus.PENDING
    assert [h.type for h in world.history(order_id)] == ["created"]


def test_a_cancel_voids_what_an_authorization_whose_plugin_crashed_after_the_gateway_approved_holds():
    # Through a plugin that cannot look keys up: the attempt's key and amount are asked again, which
    # the gateway answers with what it made, and that is voided.
    crashing = AnswerLost(ValueError("the plugin's own bug"))  # raised after the gateway approved
    world = build_world(STOCK, crashing, NoLookup())
    order_id = world.place(("TSHIRT", 2))
    with pytest.raises(PluginError):
        world.workflow.authorize_payment(order_id, attempt=0)
    assert world.order(order_id).payment.status == "pending" and len(crashing.made) == 1

    world.actions.cancel(order_id, "changed my mind", "key_web")

    assert world.order(order_id).status is OrderStatus.CANCELLED
    assert world.spy.voided == crashing.made

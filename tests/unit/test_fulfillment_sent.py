"""A fulfillment as a client sends it (core.models.FulfillmentInput, the body's model) is a
Fulfillment once the OMS holds it: the order keeps one, and the pricing, review and sourcing hooks
get one, as they did before the body had a model of its own; an edit, a cancel of units and an
exchange's replacement send the stored order's fulfillment again."""

from __future__ import annotations

from typing import Any

import pytest

from core import hookimpl
from core.models import Fulfillment, FulfillmentInput, OrderEdit, PlaceOrder
from tests.builders import place_order
from tests.unit.world import World, build_world

STOCK = [("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 10), ("TSHIRT", "store-sf", 5), ("MUG", "store-sf", 5)]
PICKUP = {"type": "pickup", "location_id": "store-sf"}


class SeesTheFulfillment:
    """Records the fulfillment each hook that is handed one gets."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    @hookimpl
    def oms_discounts(self, draft):
        self.seen.append(("oms_discounts", draft.fulfillment))

    @hookimpl
    def oms_shipping_quotes(self, draft):
        self.seen.append(("oms_shipping_quotes", draft.fulfillment))

    @hookimpl
    def oms_review_order(self, order):
        self.seen.append(("oms_review_order", order.fulfillment))

    @hookimpl
    def oms_source_order(self, order):
        self.seen.append(("oms_source_order", order.fulfillment))


@pytest.fixture
def seeing() -> tuple[World, SeesTheFulfillment]:
    plugin = SeesTheFulfillment()
    return build_world(STOCK, plugin), plugin


def exactly(expected: Fulfillment, seen: list[tuple[str, Any]]) -> list[tuple[str, str, Fulfillment]]:
    """What each hook got, by its class's name: a FulfillmentInput equals no Fulfillment (pydantic
    compares classes), so a plugin comparing with one would stop matching."""
    assert seen, "no hook was handed the fulfillment"
    return [(hook, type(got).__name__, got) for hook, got in seen if (type(got), got) != (Fulfillment, expected)]


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ({}, Fulfillment()),
        ({"fulfillment": {"type": "ship"}}, Fulfillment()),
        ({"fulfillment": PICKUP}, Fulfillment(**PICKUP)),
    ],
    ids=["none sent", "ship", "pickup"],
)
def test_a_placed_order_holds_and_hands_the_hooks_a_fulfillment(seeing, sent, expected):
    world, plugin = seeing

    order = world.run(world.place(("TSHIRT", 1), **sent))

    assert type(order.fulfillment) is Fulfillment
    assert order.fulfillment == expected
    assert {hook for hook, _ in plugin.seen} >= {"oms_discounts", "oms_review_order", "oms_source_order"}
    assert exactly(expected, plugin.seen) == []


def test_an_edit_and_a_cancel_of_units_send_the_stored_fulfillment_again(seeing):
    world, plugin = seeing
    order = world.allocated(("TSHIRT", 1), ("MUG", 2), fulfillment=PICKUP)
    plugin.seen.clear()

    edit = OrderEdit.model_validate({"lines": [{"sku": "TSHIRT", "quantity": 2}, {"sku": "MUG", "quantity": 2}]})

    edited = world.actions.edit(order.id, order.version, edit, actor="key_web")
    cut = world.actions.cancel(edited.id, "customer_request", "key_web", lines={edited.lines[1].line_id: 1})

    assert [line.quantity for line in cut.lines] == [2, 1]
    assert (type(cut.fulfillment), cut.fulfillment) == (Fulfillment, Fulfillment(**PICKUP))
    assert exactly(Fulfillment(**PICKUP), plugin.seen) == []


def test_a_stored_fulfillment_sent_again_is_read_as_a_client_s():
    # As an edit, a cancel of units and an exchange's replacement build their command.
    body = PlaceOrder(**{**place_order().model_dump(), "fulfillment": Fulfillment(**PICKUP)})

    assert (type(body.fulfillment), body.fulfillment) == (FulfillmentInput, FulfillmentInput(**PICKUP))

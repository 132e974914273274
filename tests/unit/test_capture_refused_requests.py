"""Cancellation.capture_refused takes a refused capture's request away only while the order holds
that very request, compared by value (shipment, amount, authorization, withdrawn): requests have no
identity of their own. A stale call (refused, its write landing after others') must not take a
request made since for another question to the gateway. Made again after a refusal, a request
differs from the refused one in its authorization (the refusal spent it: the next capture renews
it first), except on a renewal made for a refusal (Order.refusal_renewal, not spent again): there
the request made again is the same question, asked under the same key, which the gateway answers
with the refusal the stale call holds. So the value is the identity the write needs."""

from __future__ import annotations

import contextlib

import pytest

from core import payment_keys
from core.errors import PaymentGatewayUnavailable, PaymentRefused
from core.events import OrderEvent
from tests.unit.test_authorization_renewal import STOCK, FirstCaptureAnswers
from tests.unit.world import Clock, World, build_racing_world


def shipped_by(world: World, order_id: str, shipment_id: str, actor: str) -> None:
    """A ship of `shipment_id` by `actor`, its refusal or outage left in the order (as its caller got it)."""
    with contextlib.suppress(PaymentRefused, PaymentGatewayUnavailable):
        world.actions.ship(order_id, shipment_id, tracking_number=None, actor=actor)


def not_made(world: World, order_id: str) -> list[str]:
    return [e.actor for e in world.history(order_id) if e.type is OrderEvent.CAPTURE_NOT_MADE]


def test_a_stale_refusal_leaves_the_request_made_since_on_the_renewal_of_the_authorization_it_spent(clock: Clock):
    # A warehouse's ship is refused (the issuer let the authorization lapse early). Before its
    # refusal is written, its retry is refused too and writes it (the authorization spent), and a
    # third ship renews the authorization and asks the capture on the new one, its answer lost (the
    # request stands: the capture may have been made). The first's write, decided again on the
    # order read again, finds that request, not its own: it takes nothing and writes nothing.
    world, race = build_racing_world(STOCK, OrderEvent.CAPTURE_NOT_MADE, FirstCaptureAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(3)
    world.gateway.script("capture", "refuse", "refuse", "transient", "transient", "transient", "approve")

    def meanwhile() -> None:
        shipped_by(world, order.id, shipment.id, "key_wh_retry")
        shipped_by(world, order.id, shipment.id, "key_wh_third")

    race.between = meanwhile
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    assert race.between is None  # the retry and the third ship ran inside the first's write
    after = world.order(order.id)
    standing = after.capture_request(shipment.id)
    assert standing is not None and standing.authorization == after.payment.authorization != order.payment.authorization
    assert not_made(world, order.id) == ["key_wh_retry"]
    # The ship repeated asks it again under its key: the capture is recorded, on the renewal.
    shipped = world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    key = payment_keys.capture(order.id, shipment.id, under=after.payment.authorization)
    assert world.gateway.keys("capture")[2:] == [key] * 4
    assert world.spy.captured == [(after.payment.authorization, order.payment.authorized, key)]
    assert shipped.payment.captured == order.payment.authorized


def test_a_request_made_again_the_same_on_a_refusal_renewal_is_the_question_the_stale_refusal_answered(clock: Clock):
    # The capture refused on the authorization, then on its renewal (Order.refusal_renewal: not
    # spent again). A ship's capture is refused on it; before that is written, another ship's is
    # refused and written, and a third ship makes the request again, the same by value (nothing
    # renews a refusal renewal), its answer lost. The first's write takes it: it is the same
    # question under the same key, and the gateway answers that key with the refusal the first
    # holds, so "not made" is the truth, and nothing is captured.
    world, race = build_racing_world(STOCK, OrderEvent.CAPTURE_NOT_MADE, FirstCaptureAnswers(), clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(3)
    world.gateway.script("capture", "refuse", "refuse")
    shipped_by(world, order.id, shipment.id, "key_wh")  # refused on the authorization: spent
    shipped_by(world, order.id, shipment.id, "key_wh")  # renewed, refused on the renewal
    renewal = world.order(order.id)
    assert renewal.refusal_renewal == renewal.payment.authorization != order.payment.authorization
    key = payment_keys.capture(order.id, shipment.id, under=renewal.payment.authorization)
    assert world.gateway.keys("capture")[-1] == key
    asked, before = len(world.gateway.keys("capture")), not_made(world, order.id)
    world.gateway.script("capture", "refuse", "refuse", "transient", "transient", "transient", "refuse")
    made_again: list[object] = []

    def meanwhile() -> None:
        made_again.append(world.order(order.id).capture_request(shipment.id))  # the first's
        shipped_by(world, order.id, shipment.id, "key_wh_retry")
        made_again.append(world.order(order.id).capture_request(shipment.id))
        shipped_by(world, order.id, shipment.id, "key_wh_third")
        made_again.append(world.order(order.id).capture_request(shipment.id))

    race.between = meanwhile
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh_first")

    assert race.between is None
    first, gone, again = made_again
    assert gone is None  # the retry's refusal written: the first's request went
    # Made again the same, and asked under the first's key: the same question.
    assert first is not None and again == first and again.authorization == renewal.payment.authorization
    assert world.gateway.keys("capture")[asked:] == [key] * 5
    assert not_made(world, order.id) == [*before, "key_wh_retry", "key_wh_first"]
    assert world.order(order.id).capture_request(shipment.id) is None
    # Its key's answer is the refusal: asked again, refused again, and nothing was ever captured.
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_ops")
    assert world.gateway.keys("capture")[-1] == key
    assert world.spy.captured == []

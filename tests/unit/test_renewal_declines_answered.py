"""A renewal of an old authorization the gateway declined answers the same caller's repeated ship
with that decline, without asking the gateway or writing anything, for a day (doubled for each
decline of theirs in a row), and is asked afresh sooner by another caller or once anything else
is written on the order (core.cancellation._decline_standing), on the in-memory world."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import payment_keys
from core.errors import PaymentRefused
from core.holds import HoldRequest, Holds, ReleaseRequest
from core.models import utc_text
from core.status import OrderStatus, ShipmentStatus
from plugins.test_payments import AUTHORIZATION, reference
from tests.unit.test_authorization_renewal import STOCK, Clock, FirstAnswers
from tests.unit.world import World, build_world


@pytest.fixture
def world(clock) -> World:
    # A gateway that answers a key it has seen with its first answer, as real ones do.
    return build_world(STOCK, FirstAnswers(), clock=clock)


def declined_once(world: World, clock: Clock, actor: str = "key_wh") -> tuple[str, str, str]:
    """An order whose authorization grew old, and whose renewal the gateway declined `actor`'s
    ship: (order id, shipment id, the old authorization)."""
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("authorize", "refuse", "approve")  # the bank lifts its block after the first
    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor=actor)
    return order.id, shipment.id, order.payment.authorization or ""


def test_a_warehouse_retrying_its_ship_every_minute_for_a_day_asks_the_card_once(world, clock):
    # Before: each repeat asked a renewal under a new key (<order>:authorize:renew:<old>:<n>), one
    # authorization attempt on the card and one history entry a minute: 1,440 a day.
    order_id, shipment_id, old = declined_once(world, clock)
    asked, history, stored = world.gateway.keys("authorize"), world.history(order_id), world.order(order_id)
    first = asked[-1]

    for _ in range(1439):
        clock.now += timedelta(minutes=1)
        with pytest.raises(PaymentRefused) as refused:
            world.actions.ship(order_id, shipment_id, tracking_number=None, actor="key_wh")

    assert world.gateway.keys("authorize") == asked  # the gateway was not asked again
    assert world.history(order_id) == history
    assert world.order(order_id).version == stored.version  # nothing written
    assert refused.value.code == "payment_gateway_error"  # 502, as the first decline
    assert refused.value.gateway_message == "the authorization had grown old and the gateway declined it again: " + (
        "scripted: authorize refused"
    )
    (detail,) = refused.value.details
    assert detail["operation"] == "authorize"
    assert detail["asked_again_after"] == utc_text(history[-1].at + timedelta(days=1))

    clock.now += timedelta(minutes=1)  # a day after the decline: the bank may have lifted its block
    shipped = world.actions.ship(order_id, shipment_id, tracking_number=None, actor="key_wh")

    second = payment_keys.renewal(order_id, old, 1)
    assert (first, world.gateway.keys("authorize")[len(asked) :]) == (payment_keys.renewal(order_id, old), [second])
    assert shipped.status is OrderStatus.SHIPPED and shipped.payment.authorization == reference(AUTHORIZATION, second)


def test_the_first_decline_says_when_it_is_asked_again_as_its_repeats_do(world, clock):
    # Before: only the repeats answered from the history said when the gateway would be asked again.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    clock.days_later(8)
    world.gateway.script("authorize", "refuse")
    answers = []
    for _ in range(2):
        with pytest.raises(PaymentRefused) as refused:
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
        answers.append((refused.value.gateway_message, refused.value.details))
        clock.now += timedelta(minutes=1)

    (declined,) = [e for e in world.history(order.id) if e.type == "payment_authorization_failed"]
    assert answers[0] == answers[1]
    assert answers[0][1] == [{"operation": "authorize", "declined_at": utc_text(declined.at),
                              "asked_again_after": utc_text(declined.at + timedelta(days=1))}]  # fmt: skip


def test_each_decline_in_a_row_answers_the_caller_twice_as_long(world, clock):
    order_id, shipment_id, old = declined_once(world, clock)
    clock.days_later(1)
    world.gateway.script("authorize", "refuse", "approve")
    with pytest.raises(PaymentRefused):
        world.actions.ship(order_id, shipment_id, tracking_number=None, actor="key_wh")
    asked = world.gateway.keys("authorize")
    clock.days_later(1.99)
    with pytest.raises(PaymentRefused):
        world.actions.ship(order_id, shipment_id, tracking_number=None, actor="key_wh")
    assert world.gateway.keys("authorize") == asked
    clock.days_later(0.01)

    world.actions.ship(order_id, shipment_id, tracking_number=None, actor="key_wh")

    assert world.gateway.keys("authorize")[len(asked) :] == [payment_keys.renewal(order_id, old, 2)]
    declines = [e for e in world.history(order_id) if e.type == "payment_authorization_failed"]
    assert len(declines) == 2  # one a decline: the repeat answered by it wrote nothing


def test_a_person_shipping_under_their_own_key_asks_the_gateway_at_once(world, clock):
    order_id, shipment_id, old = declined_once(world, clock, actor="key_wh")
    asked = world.gateway.keys("authorize")

    shipped = world.actions.ship(order_id, shipment_id, tracking_number=None, actor="key_ops")

    assert world.gateway.keys("authorize")[len(asked) :] == [payment_keys.renewal(order_id, old, 1)]
    assert shipped.shipment(shipment_id).status is ShipmentStatus.SHIPPED


def test_a_hold_and_its_release_have_the_warehouses_next_ship_ask_the_gateway_at_once(world, clock):
    # The customer says the bank lifted its block: a person holds the order for payment review and
    # releases it; the warehouse's next repeat asks, though its decline is an hour old.
    order_id, shipment_id, old = declined_once(world, clock)
    holds = Holds(world.orders, clock=clock)
    holds.hold(order_id, HoldRequest(reason="payment_review"), actor="key_ops")
    holds.release(order_id, ReleaseRequest(note="the bank lifted its block"), actor="key_ops")
    asked = world.gateway.keys("authorize")
    clock.now += timedelta(hours=1)

    shipped = world.actions.ship(order_id, shipment_id, tracking_number=None, actor="key_wh")

    assert world.gateway.keys("authorize")[len(asked) :] == [payment_keys.renewal(order_id, old, 1)]
    assert shipped.status is OrderStatus.SHIPPED


def test_two_warehouses_in_turn_are_each_answered_by_their_own_decline(clock):
    world = build_world(STOCK, FirstAnswers(), clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (world.shipment_at(order, loc) for loc in ("wh-west", "wh-east"))
    clock.days_later(8)
    world.gateway.script("authorize", "refuse", "refuse", "approve")
    for shipment_id, actor in [(west, "key_wh_west"), (east, "key_wh_east")]:
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment_id, tracking_number=None, actor=actor)
    asked, history = world.gateway.keys("authorize"), world.history(order.id)

    for shipment_id, actor in [(west, "key_wh_west"), (east, "key_wh_east")] * 20:
        clock.now += timedelta(minutes=1)
        with pytest.raises(PaymentRefused):
            world.actions.ship(order.id, shipment_id, tracking_number=None, actor=actor)

    old = order.payment.authorization or ""
    assert asked[-2:] == [payment_keys.renewal(order.id, old, n) for n in (0, 1)]
    assert (world.gateway.keys("authorize"), world.history(order.id)) == (asked, history)


def test_the_declined_renewal_for_a_refused_capture_answers_until_the_authorization_is_old(world, clock):
    # Asked once (Order.refusal_renewal): the gateway answers its key with that decline, so it is
    # not asked again until the authorization is old and renewed as any other, under a new key.
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "refuse", "approve")
    world.gateway.script("authorize", "refuse", "approve")
    for _ in range(2):  # the capture refused, then its renewal declined
        with pytest.raises(PaymentRefused) as first:
            world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    asked = world.gateway.keys("authorize")
    assert first.value.details[0]["asked_again_after"] == utc_text(order.authorized_at + timedelta(days=7))
    clock.days_later(6.9)

    with pytest.raises(PaymentRefused) as refused:
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    assert world.gateway.keys("authorize") == asked
    (detail,) = refused.value.details
    assert detail["asked_again_after"] == utc_text(order.authorized_at + timedelta(days=7))
    assert "a capture on the authorization was refused" in refused.value.gateway_message

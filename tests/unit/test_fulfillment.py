"""What happens to an order after the workflow (core.fulfillment.OrderActions): ship, deliver,
cancel and edit, on the in-memory fakes with the real built-in plugins and a fixed clock."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.errors import (
    Conflict,
    InsufficientStock,
    InvalidTransition,
    NotFound,
    PaymentDeclined,
    StaleVersion,
    TransientError,
)
from core.models import Address, HistoryEntry, LineInput, OrderEdit, tracking_number_named
from core.money import Money
from core.status import OrderStatus
from plugins.test_payments import CAPTURE, VOID, reference
from tests.builders import NOW, address_body, place_order
from tests.unit.world import before_the_next_write, build_world, history_reads

S = OrderStatus

# The world of tests/unit/world.py. MUG is only in the west and CAP only in the east, so an
# order with both ships in two parcels.
STOCK = [
    ("TSHIRT", "wh-east", 10),
    ("TSHIRT", "wh-west", 10),
    ("TSHIRT", "store-sf", 5),
    ("MUG", "wh-west", 3),
    ("CAP", "wh-east", 4),
    ("PEN", "wh-east", 20),
    ("PEN", "wh-west", 20),
]


# --- Ship ---------------------------------------------------------------------------------------


def test_shipping_takes_the_units_out_of_on_hand_and_captures_the_shipment_share(world):
    order = world.allocated(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))  # west: L1 + L2, east: L3
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    authorization = order.payment.authorization
    l1, l2, _ = order.lines

    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    assert shipped == world.order(order.id)
    assert shipped.status is S.PARTIALLY_SHIPPED
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)
    assert world.level("MUG", "wh-west") == (2, 0, 2)
    assert world.level("CAP", "wh-east") == (4, 3, 1)  # the other parcel is still held
    assert world.held() == {("CAP", "wh-east", f"{order.id}#L3"): 3}
    share = l1.total + l2.total
    assert world.spy.captured == [(authorization, share, f"{order.id}:{west}:capture")]
    assert shipped.payment.captured == share
    assert shipped.payment.status == "partially_captured"
    (parcel,) = [s for s in shipped.shipments if s.id == west]
    assert (parcel.status, parcel.shipped_at) == ("shipped", NOW)
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor, entry.at) == (
        "shipment_shipped", S.ALLOCATED, S.PARTIALLY_SHIPPED, "key_wh_west", NOW,
    )  # fmt: skip
    assert entry.detail == {
        "shipment_id": west,
        "location_id": "wh-west",
        "captured": share.model_dump(mode="json"),
        "capture_reference": reference(CAPTURE, f"{order.id}:{west}:capture"),
    }

    done = world.actions.ship(order.id, east, tracking_number="1Z999AA10123456784", actor="key_wh_east")

    assert done.status is S.SHIPPED
    assert world.level("CAP", "wh-east") == (1, 0, 1)
    assert world.held() == {}
    assert done.payment.status == "captured"
    assert done.payment.captured == done.payment.authorized == done.totals.grand_total
    assert world.spy.captured_total() == done.payment.authorized.amount
    assert [s.tracking_number for s in done.shipments if s.id == east] == ["1Z999AA10123456784"]
    last = world.history(order.id)[-1]
    assert (last.from_status, last.to_status, last.actor) == (S.PARTIALLY_SHIPPED, S.SHIPPED, "key_wh_east")


@pytest.mark.parametrize("first", ["wh-west", "wh-east"])
@pytest.mark.parametrize(
    "lines",
    [
        pytest.param([("PEN", 30)], id="one-line-split-20-10"),
        pytest.param([("PEN", 21), ("TSHIRT", 13)], id="two-lines-split"),
        pytest.param([("PEN", 7), ("MUG", 3), ("CAP", 1)], id="a-line-per-parcel"),
    ],
)
def test_the_captures_add_up_to_the_authorization_exactly(world, lines, first):
    order = world.allocated(*lines)
    assert len(order.shipments) == 2
    last = "wh-east" if first == "wh-west" else "wh-west"

    world.actions.ship(order.id, world.shipment_at(order, first), None, actor="key_wh")
    middle = world.order(order.id)
    assert Decimal(0) < middle.payment.captured.amount < middle.payment.authorized.amount
    world.actions.ship(order.id, world.shipment_at(order, last), None, actor="key_wh")

    done = world.order(order.id)
    assert done.status is S.SHIPPED
    assert len(world.spy.captured) == 2
    amounts = [amount.amount for _, amount, _ in world.spy.captured]
    assert all(isinstance(a, Decimal) and a > 0 and a == a.quantize(Decimal("0.01")) for a in amounts)
    assert sum(amounts, Decimal(0)) == done.payment.authorized.amount == done.totals.grand_total.amount
    assert done.payment.captured == done.payment.authorized
    assert done.payment.status == "captured"


@pytest.mark.parametrize("first, repeated", [(None, None), ("1ZFIXED0001", "1ZFIXED0001"), ("1ZFIXED0001", None)])
def test_shipping_a_shipped_shipment_again_changes_nothing(world, first, repeated):
    """The same ship again (its tracking number, or none) is idempotent: 200, nothing changes."""
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    once = world.actions.ship(order.id, east, first, actor="key_wh")
    levels, captures, history = dict(world.inventory.stock), list(world.spy.captured), world.history(order.id)

    again = world.actions.ship(order.id, east, repeated, actor="key_wh")

    assert again == once == world.order(order.id)
    assert again.version == once.version
    assert world.spy.captured == captures
    assert world.inventory.stock == levels
    assert world.history(order.id) == history


def refused_as_shipped_under(refusal: pytest.ExceptionInfo, shipment_id: str, recorded: str | None) -> None:
    assert isinstance(refusal.value, Conflict)  # 409
    assert refusal.value.code == "tracking_number_conflict"
    assert refusal.value.details == [{
        "field": "tracking_number", "message": f"shipment {shipment_id} shipped with another tracking number",
        "shipment_id": shipment_id, "tracking_number": recorded,
    }]  # fmt: skip


@pytest.mark.parametrize("first", ["the label's", "1ZFIRST0001"])
def test_shipping_a_shipped_shipment_with_another_tracking_number_is_a_conflict_naming_the_recorded_one(world, first):
    """A client correcting a typo must not be told it took: 409, the recorded number named, nothing changed."""
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    if first == "the label's":  # the booking's number, named by the location: confirmed
        first = order.shipment(east).tracking_number
    once = world.actions.ship(order.id, east, first, actor="key_wh")
    recorded = once.shipment(east).tracking_number
    assert recorded is not None
    before = (dict(world.inventory.stock), world.snapshot(order.id))

    with pytest.raises(Conflict) as refused:
        world.actions.ship(order.id, east, "1ZTYPOFIXED", actor="key_wh")

    refused_as_shipped_under(refused, east, recorded)
    assert (dict(world.inventory.stock), world.snapshot(order.id)) == before
    world.actions.deliver(order.id, east, actor="key_wh")
    with pytest.raises(Conflict) as delivered:
        world.actions.ship(order.id, east, "1ZTYPOFIXED", actor="key_wh")
    refused_as_shipped_under(delivered, east, recorded)


@pytest.mark.parametrize("delivered", [False, True])
def test_a_parcel_shipped_without_naming_a_number_takes_the_one_named_later_once(world, delivered):
    """The warehouse confirms the hand-over, then reads the carrier's number off its manifest: the
    later ship naming it sets it, once, and changes nothing else (no capture, no stock)."""
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    booked = order.shipment(east).tracking_number
    world.actions.ship(order.id, east, None, actor="key_wh")
    if delivered:
        world.actions.deliver(order.id, east, actor="key_carrier")
    before = world.order(order.id)
    levels, captures = dict(world.inventory.stock), list(world.spy.captured)

    named = world.actions.ship(order.id, east, "1ZMANIFEST1", actor="key_wh2")

    parcel = named.shipment(east)
    assert (parcel.tracking_number, parcel.status) == ("1ZMANIFEST1", before.shipment(east).status)
    assert (named.status, named.payment, named.version) == (before.status, before.payment, before.version + 1)
    assert (dict(world.inventory.stock), world.spy.captured) == (levels, captures)
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.actor) == ("shipment_tracking_number_set", "key_wh2")
    assert entry.detail == {"shipment_id": east, "tracking_number": "1ZMANIFEST1", "replaced": booked}
    assert world.actions.ship(order.id, east, "1ZMANIFEST1", actor="key_wh2") == named  # the same again: nothing
    with pytest.raises(Conflict) as refused:
        world.actions.ship(order.id, east, "1ZMANIFEST2", actor="key_wh2")
    refused_as_shipped_under(refused, east, "1ZMANIFEST1")
    with pytest.raises(Conflict):
        world.actions.ship(order.id, east, booked, actor="key_wh2")  # nor back to the label's
    assert world.order(order.id) == named


def test_a_later_ship_naming_the_labels_number_confirms_it_and_changes_nothing_else(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    booked = order.shipment(east).tracking_number
    once = world.actions.ship(order.id, east, None, actor="key_wh")

    again = world.actions.ship(order.id, east, booked, actor="key_wh")
    twice = world.actions.ship(order.id, east, booked, actor="key_wh")

    assert again == twice == once == world.order(order.id)  # the same version: the order unchanged
    confirmed = [e for e in world.history(order.id) if e.type == "shipment_tracking_number_confirmed"]
    assert [e.detail for e in confirmed] == [{"shipment_id": east, "tracking_number": booked}]
    with pytest.raises(Conflict) as refused:
        world.actions.ship(order.id, east, "1ZTYPO0001", actor="key_wh")
    refused_as_shipped_under(refused, east, booked)


@pytest.mark.parametrize("number", [None, "1ZFIRST0001"])
def test_a_first_ship_reads_no_history_whatever_it_names(world, monkeypatch, number):
    """The typical ship costs what it did: the history is read only for a ship sent again naming a number."""
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    reads = history_reads(world, monkeypatch)

    world.actions.ship(order.id, east, number, actor="key_wh")

    assert reads == []


def entry(type_: str, **detail: object) -> HistoryEntry:
    return HistoryEntry(at=NOW, type=type_, actor="key_wh", detail=detail)


ALLOCATED = entry("allocated", shipments=[{"id": "shp_1", "location_id": "wh", "tracking_number": "OMS1"}])


@pytest.mark.parametrize(
    ("history", "recorded", "named"),
    [
        ([ALLOCATED, entry("shipment_shipped", shipment_id="shp_1")], "OMS1", False),
        ([ALLOCATED, entry("shipment_shipped", shipment_id="shp_1", tracking_number="OMS1")], "OMS1", True),
        ([ALLOCATED, entry("shipment_shipped", shipment_id="shp_2", tracking_number="1Z2")], "OMS1", False),
        ([ALLOCATED, entry("shipment_relabelled", shipment_id="shp_1", tracking_number="OMS2"),
          entry("shipment_shipped", shipment_id="shp_1")], "OMS2", False),
        ([ALLOCATED, entry("shipment_shipped", shipment_id="shp_1"),
          entry("shipment_tracking_number_set", shipment_id="shp_1", tracking_number="1Z1")], "1Z1", True),
        # Shipped before ships wrote the number they named: one that is not the booking's was named.
        ([ALLOCATED, entry("shipment_shipped", shipment_id="shp_1")], "1ZOLD", True),
        ([entry("shipment_shipped", shipment_id="shp_1")], None, False),
    ],
    ids=["kept-the-bookings", "named-the-bookings", "another-parcels", "kept-the-relabelled", "set-later",
         "older-ship-named-another", "no-number"],
)  # fmt: skip
def test_whether_a_location_named_a_parcels_number_is_read_from_the_history(history, recorded, named):
    assert tracking_number_named(history, "shp_1", recorded) is named


def test_two_numbers_learnt_at_once_for_a_parcel_shipped_without_one_set_one_and_refuse_the_other(world, monkeypatch):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    world.actions.ship(order.id, east, None, actor="key_wh")
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.ship(order.id, east, "1ZWINNER01", actor="key_wh"), skip=0
    )

    with pytest.raises(Conflict) as refused:
        world.actions.ship(order.id, east, "1ZLOSER001", actor="key_wh")

    refused_as_shipped_under(refused, east, "1ZWINNER01")
    assert world.order(order.id).shipment(east).tracking_number == "1ZWINNER01"
    assert [e.type for e in world.history(order.id)].count("shipment_tracking_number_set") == 1


@pytest.mark.parametrize("skip", [0, 1])  # before its capture request's write, before its ship's write
def test_a_ship_that_loses_to_a_ship_with_another_tracking_number_is_a_conflict(world, monkeypatch, skip):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    east = world.shipment_at(order, "wh-east")
    before_the_next_write(
        world, monkeypatch, lambda: world.actions.ship(order.id, east, "1ZWINNER01", actor="key_wh"), skip=skip
    )

    with pytest.raises(Conflict) as refused:
        world.actions.ship(order.id, east, "1ZLOSER001", actor="key_wh")

    refused_as_shipped_under(refused, east, "1ZWINNER01")
    shipped = world.order(order.id)
    assert shipped.shipment(east).status == "shipped"
    assert [e.type for e in world.history(order.id)].count("shipment_shipped") == 1
    assert len({key for _, _, key in world.spy.captured}) == 1  # one capture, under the shipment's key
    assert world.level("CAP", "wh-east") == (3, 0, 3)


def test_shipping_an_order_that_is_not_allocated_is_an_invalid_transition(world):
    order = world.allocated(("TSHIRT", 2))
    world.actions.cancel(order.id, "changed my mind", actor="key_web")
    cancelled = world.order(order.id)
    (shipment,) = cancelled.shipments
    assert shipment.status == "cancelled"

    with pytest.raises(InvalidTransition) as raised:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert isinstance(raised.value, Conflict)  # 409
    assert world.order(order.id) == cancelled
    assert world.level("TSHIRT", "wh-west") == (10, 0, 10)
    assert world.spy.captured == []


def test_shipping_an_unknown_shipment_or_another_channels_order_is_not_found(world):
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments

    with pytest.raises(NotFound):
        world.actions.ship(order.id, "shp_nope", None, actor="key_wh")
    with pytest.raises(NotFound):
        world.actions.ship("ord_nope", shipment.id, None, actor="key_wh")
    with pytest.raises(NotFound):
        world.actions.ship(order.id, shipment.id, None, actor="key_pos", channel="pos")
    with pytest.raises(NotFound):
        world.actions.deliver(order.id, shipment.id, actor="key_pos", channel="pos")
    with pytest.raises(NotFound):
        world.actions.cancel(order.id, "no", actor="key_pos", channel="pos")

    assert world.order(order.id) == order
    assert world.spy.captured == []
    # The order's own channel may.
    assert world.actions.ship(order.id, shipment.id, None, actor="key_web", channel="web").status is S.SHIPPED


# --- Deliver ------------------------------------------------------------------------------------


def test_delivering_follows_shipping_and_the_last_delivery_delivers_the_order(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")

    with pytest.raises(InvalidTransition):
        world.actions.deliver(order.id, west, actor="key_carrier")
    assert world.order(order.id) == order

    world.actions.ship(order.id, west, None, actor="key_wh")
    first = world.actions.deliver(order.id, west, actor="key_carrier")
    assert first.status is S.PARTIALLY_SHIPPED  # the east parcel has not left yet
    assert [(s.status, s.delivered_at) for s in first.shipments if s.id == west] == [("delivered", NOW)]
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor) == (
        "shipment_delivered", None, None, "key_carrier",
    )  # fmt: skip

    world.actions.ship(order.id, east, None, actor="key_wh")
    shipped = world.actions.deliver(order.id, west, actor="key_carrier")  # again: a no-op
    assert shipped.status is S.SHIPPED
    done = world.actions.deliver(order.id, east, actor="key_carrier")

    assert done.status is S.DELIVERED
    assert {s.status for s in done.shipments} == {"delivered"}
    entry = world.history(order.id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor) == (
        "shipment_delivered", S.SHIPPED, S.DELIVERED, "key_carrier",
    )  # fmt: skip

    again = world.actions.deliver(order.id, east, actor="key_carrier")
    assert again == done
    assert again.version == done.version
    assert world.history(order.id)[-1] == entry


# --- Cancel -------------------------------------------------------------------------------------


def test_cancelling_before_shipping_releases_the_reservations_and_voids_the_authorization(world):
    order = world.allocated(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))
    assert world.held() != {}

    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert cancelled == world.order(order.id)
    assert cancelled.status is S.CANCELLED
    assert cancelled.payment.status == "voided"
    assert world.spy.voided == [order.payment.authorization]
    assert world.spy.captured == []
    assert world.held() == {}
    for sku, location_id, on_hand in STOCK:
        assert world.level(sku, location_id) == (on_hand, 0, on_hand)
    # The cancel is recorded first; the payment says voided only in the write after the gateway's yes.
    # Then its two parcels' carrier bookings, which no parcel will use, are cancelled.
    cancel, void, *bookings = world.history(order.id)[-4:]
    assert [booking.type for booking in bookings] == ["carrier_booking_cancelled"] * 2
    was = {"from": order.totals.grand_total.model_dump(mode="json"), "to": {"amount": "0.00", "currency": "USD"}}
    assert (cancel.type, cancel.from_status, cancel.to_status, cancel.actor, cancel.detail) == (
        "cancelled", S.ALLOCATED, S.CANCELLED, "key_web",
        {"reason": "changed my mind", "lines": {"L1": 2, "L2": 1, "L3": 3}, "grand_total": was},
    )  # fmt: skip
    # Every unit is cancelled (API.md): each line at zero, the totals too.
    assert [(line.quantity, line.cancelled_quantity) for line in cancelled.lines] == [(0, 2), (0, 1), (0, 3)]
    assert cancelled.totals.grand_total == cancelled.totals.subtotal == Money.zero("USD")
    assert (void.type, void.from_status, void.to_status, void.actor) == ("payment_voided", None, None, "key_web")
    assert void.detail == {
        "authorization": order.payment.authorization,
        "reference": reference(VOID, f"{order.payment.authorization}:void"),
    }
    assert cancelled.version == order.version + 4

    again = world.actions.cancel(order.id, "really", actor="key_web")

    assert again == cancelled
    assert again.version == cancelled.version
    assert world.spy.voided == [order.payment.authorization]
    assert world.history(order.id)[-1] == bookings[-1]  # nothing more written, nor asked of the carrier


def test_a_cancelled_order_lists_no_allocations(world):
    # Its reservations are released: the order no longer says it holds them.
    order = world.allocated(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))

    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert cancelled.allocations == [] and world.order(order.id) == cancelled
    assert world.held_for(order.id) == {}


def test_a_cancelled_orders_parcels_that_had_not_left_are_cancelled(world):
    # None of them will ship: a warehouse reading the order finds no parcel pending, and a ship or
    # a reject of one is a conflict (409).
    order = world.allocated(("TSHIRT", 2), ("MUG", 1), ("CAP", 3))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")

    cancelled = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert [(s.id, s.status) for s in cancelled.shipments] == [(s.id, "cancelled") for s in order.shipments]
    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, west, None, actor="key_wh_west")
    with pytest.raises(InvalidTransition):
        world.actions.reject(order.id, east, "no staff", actor="key_wh_east")
    assert world.order(order.id) == cancelled
    assert world.spy.captured == []


def test_a_cancel_whose_view_of_the_network_predates_a_new_location_releases_what_the_order_holds_there(world):
    # The API's containers cache the network for a few seconds (CachedCatalog); the workflow reads
    # it fresh. An order sourced from a location added within that time is cancelled by a
    # container that does not know the location yet: its units there are released all the same.
    actions = world.actions_behind_a_new_location("CAP", "wh-east")
    order = world.allocated(("CAP", 2))
    assert [a.location_id for a in order.allocations] == ["wh-north"]

    cancelled = actions.cancel(order.id, "changed my mind", actor="key_web")

    assert cancelled.status is S.CANCELLED
    assert world.held_for(order.id) == {}
    assert world.level("CAP", "wh-north") == (5, 0, 5)


def test_a_cancel_whose_view_of_the_network_predates_a_new_location_releases_what_its_unbooked_order_holds_there(
    world,
):
    # As above, but cancelled between ReserveStock and CreateShipments: the units it holds at the new
    # location are recorded only in its allocations, which the cancel's write empties.
    actions = world.actions_behind_a_new_location("CAP", "wh-east")
    order_id = world.place(("CAP", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    order = world.order(order_id)
    assert ([a.location_id for a in order.allocations], order.shipments) == (["wh-north"], [])

    cancelled = actions.cancel(order_id, "changed my mind", actor="key_web")

    assert cancelled.status is S.CANCELLED
    assert world.held_for(order_id) == {}
    assert world.level("CAP", "wh-north") == (5, 0, 5)


def test_a_cancel_of_an_order_whose_payment_was_declined_is_refused_and_changes_nothing(world):
    # payment_failed is closed: nothing is left to cancel, and a 200 would tell the client it cancelled.
    order_id = world.place(("TSHIRT", 2), token="tok_decline")
    with pytest.raises(PaymentDeclined):
        world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.fail_payment(order_id, error="PaymentDeclined", cause="declined")
    once = world.snapshot(order_id)

    with pytest.raises(InvalidTransition):
        world.actions.cancel(order_id, "customer asked", actor="key_web")

    assert world.snapshot(order_id) == once
    assert world.order(order_id).status is S.PAYMENT_FAILED


def test_a_cancel_repeated_once_its_void_was_made_asks_the_gateway_nothing(world):
    # The repeat finishes what is unfinished: a voided authorization is not asked to be voided again.
    order = world.allocated(("TSHIRT", 2))
    world.actions.cancel(order.id, "changed my mind", actor="key_web")
    asked = list(world.gateway.calls)

    again = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert again.payment.status == "voided"
    assert world.gateway.calls == asked


def test_cancelling_a_pending_order_has_nothing_to_void(world):
    order_id = world.place(("TSHIRT", 2))

    cancelled = world.actions.cancel(order_id, "duplicate", actor="key_web")

    assert cancelled.status is S.CANCELLED
    assert cancelled.payment.status == "pending"
    assert world.spy.voided == []


def test_cancelling_after_a_shipment_left_cancels_only_what_has_not_shipped(world):
    order = world.allocated(("MUG", 1), ("CAP", 1))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")

    cancelled = world.actions.cancel(order.id, "too late for the rest", actor="key_web")

    assert cancelled.status is S.SHIPPED
    assert [(line.quantity, line.cancelled_quantity, line.shipped_quantity) for line in cancelled.lines] == [
        (1, 0, 1), (0, 1, 0),
    ]  # fmt: skip
    shipments = {(s.location_id, s.status) for s in cancelled.shipments}
    assert shipments == {("wh-west", "shipped"), ("wh-east", "cancelled")}
    assert world.held() == {}
    assert cancelled.payment.captured - cancelled.payment.refunded == cancelled.totals.grand_total


def test_a_cancel_that_a_shipment_overtakes_cancels_what_is_not_shipped(world, monkeypatch):
    """The ship lands between the cancel's read and its write: the whole cancel it decided on is
    refused (nothing of it written, nothing voided), and what is not shipped is cancelled on the
    order as it is now, as a cancel without lines does on a partly shipped order (API.md)."""
    order = world.allocated(("MUG", 1), ("CAP", 1))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    before_the_next_write(world, monkeypatch, lambda: world.actions.ship(order.id, west, None, actor="key_wh"))
    cap_before = world.level("CAP", "wh-east")

    done = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert done.status is S.SHIPPED
    assert (done.shipment(west).status, done.shipment(east).status) == ("shipped", "cancelled")
    assert world.held() == {}
    assert world.level("CAP", "wh-east") == (cap_before[0], 0, cap_before[0])
    assert done.payment.captured == done.totals.grand_total
    assert "cancelled" not in [e.type for e in world.history(order.id)]


# --- Edit ---------------------------------------------------------------------------------------


def test_editing_the_lines_of_a_pending_order_prices_it_exactly_as_capture_would(world):
    order_id = world.place(("TSHIRT", 2))
    placed = world.order(order_id)
    lines = [LineInput(sku="PEN", quantity=7), LineInput(sku="MUG", quantity=1)]

    edited = world.actions.edit(order_id, placed.version, OrderEdit(lines=lines), actor="key_web")

    # Under ids after the order's own (L1 was its TSHIRT): an id names one line for good.
    quote = world.capture.quote(place_order(lines=[line.model_dump() for line in lines]), first_line=2)
    assert edited == world.order(order_id)
    assert [line.line_id for line in edited.lines] == ["L2", "L3"]
    assert edited.lines == quote.lines
    assert edited.totals == quote.totals
    assert edited.shipping_method == quote.shipping_method
    fresh = world.order(world.place(("PEN", 7), ("MUG", 1)))
    but_ids = [line.model_dump(exclude={"line_id"}) for line in edited.lines]
    assert (but_ids, edited.totals) == ([line.model_dump(exclude={"line_id"}) for line in fresh.lines], fresh.totals)
    assert edited.totals.grand_total.amount == sum(line.total.amount for line in edited.lines) + Decimal("5.00")
    assert edited.status is S.PENDING
    assert edited.version == placed.version + 1
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.from_status, entry.to_status, entry.actor, entry.at) == (
        "edited", None, None, "key_web", NOW,
    )  # fmt: skip
    assert entry.detail == {
        "changed": ["lines"],
        "grand_total": {
            "from": placed.totals.grand_total.model_dump(mode="json"),
            "to": edited.totals.grand_total.model_dump(mode="json"),
        },
    }


def test_editing_with_a_stale_version_is_refused_and_changes_nothing(world):
    order_id = world.place(("TSHIRT", 2))
    placed = world.order(order_id)

    with pytest.raises(StaleVersion) as raised:
        world.actions.edit(order_id, placed.version + 1, OrderEdit(shipping_method="express"), actor="key_web")

    assert isinstance(raised.value, Conflict)
    assert world.order(order_id) == placed
    assert len(world.history(order_id)) == 1


def test_editing_beyond_the_stock_is_refused_and_changes_nothing(world):
    order_id = world.place(("TSHIRT", 2))
    placed = world.order(order_id)

    with pytest.raises(InsufficientStock):
        world.actions.edit(order_id, 1, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=21)]), actor="key_web")

    assert world.order(order_id) == placed


@pytest.mark.parametrize("stage", ["stock_reserved", "shipped"])
def test_editing_once_stock_is_reserved_is_an_invalid_transition(world, stage):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    if stage in ("allocated", "shipped"):
        world.workflow.create_shipments(order_id)
    if stage == "shipped":
        (shipment,) = world.order(order_id).shipments
        world.actions.ship(order_id, shipment.id, None, actor="key_wh")
    before = world.order(order_id)

    with pytest.raises(InvalidTransition):
        world.actions.edit(order_id, before.version, OrderEdit(shipping_method="express"), actor="key_web")

    assert world.order(order_id) == before


def test_an_authorized_order_whose_total_grows_is_authorized_again_and_the_old_authorization_voided(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    old = authorized.payment.authorization

    edited = world.actions.edit(
        order_id, authorized.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=3)]), actor="key_web"
    )

    assert edited.status is S.AUTHORIZED
    assert edited.totals.grand_total.amount > authorized.totals.grand_total.amount
    assert edited.payment.authorized == edited.totals.grand_total
    assert edited.payment.authorization not in (None, old)
    assert edited.payment.authorization == world.spy.authorized[-1]
    assert edited.payment.status == "authorized"
    assert world.spy.voided == [old]
    assert world.history(order_id)[-1].actor == "key_web"

    # The workflow carries on with the new authorization, and capture takes the new total.
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)
    (shipment,) = world.order(order_id).shipments
    done = world.actions.ship(order_id, shipment.id, None, actor="key_wh")
    assert done.payment.captured == done.totals.grand_total
    assert [auth for auth, _, _ in world.spy.captured] == [edited.payment.authorization]


def test_an_edit_without_lines_keeps_a_line_whose_every_unit_was_cancelled_as_it_is(world):
    # The cap was cancelled whole: an address edit prices the lines with units again and leaves the
    # cap's line, with nothing to price, as it is (its id, its cancelled units, its zero total).
    order = world.allocated(("TSHIRT", 2), ("CAP", 1))
    cancelled = world.actions.cancel(order.id, "no cap", actor="key_web", lines={"L2": 1})
    moved = Address.model_validate(address_body(line2="Apt 4"))

    edited = world.actions.edit(order.id, cancelled.version, OrderEdit(shipping_address=moved), actor="key_web")

    assert edited.shipping_address == moved
    assert edited.lines[1] == cancelled.lines[1]
    assert [(line.line_id, line.quantity, line.cancelled_quantity) for line in edited.lines] == [
        ("L1", 2, 0), ("L2", 0, 1)]  # fmt: skip


def test_an_edit_naming_the_lines_with_units_but_not_one_whose_every_unit_was_cancelled_changes_nothing(world):
    # The order's lines are those with units (a line cancelled whole has none to name): sent again,
    # reordered, they are no change (no write, no line ids renumbered, nothing sourced again).
    order = world.allocated(("TSHIRT", 2), ("CAP", 1), ("MUG", 1))
    world.actions.cancel(order.id, "no cap", actor="key_web", lines={"L2": 1})
    cancelled = world.order(order.id)
    lines = [LineInput(sku="MUG", quantity=1), LineInput(sku="TSHIRT", quantity=2)]

    same = world.actions.edit(order.id, cancelled.version, OrderEdit(lines=lines), actor="key_web")

    assert same == cancelled == world.order(order.id)


def test_an_edit_that_does_not_raise_the_total_keeps_the_authorization(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    renamed = Address.model_validate(address_body(name="Ada King"))

    edited = world.actions.edit(order_id, authorized.version, OrderEdit(shipping_address=renamed), actor="key_web")

    assert edited.shipping_address == renamed
    assert edited.totals == authorized.totals
    assert edited.payment == authorized.payment
    assert world.spy.authorized == [authorized.payment.authorization]
    assert world.spy.voided == []


def test_a_declined_reauthorization_is_a_payment_declined_conflict_and_changes_nothing(world):
    order_id = world.place(("TSHIRT", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    history = world.history(order_id)
    world.orders.tokens[order_id] = "tok_decline"  # the card behind the token now declines

    with pytest.raises(Conflict) as raised:
        world.actions.edit(
            order_id, authorized.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=5)]), actor="key_web"
        )

    assert raised.value.code == "payment_declined"
    # What a client sees is unchanged but the version: the edit's request for the authorization
    # stands, for the edit repeated (same If-Match) or the next change to settle.
    after = world.order(order_id)
    assert after.model_dump(exclude={"version", "updated_at"}) == authorized.model_dump(
        exclude={"version", "updated_at"}
    )
    assert after.edits_from(authorized.version)
    # Only the refused attempt is added to the history.
    (refused,) = world.history(order_id)[len(history) :]
    assert (refused.type, refused.actor, refused.to_status) == ("payment_authorization_failed", "key_web", None)
    assert {k: refused.detail[k] for k in ("operation", "attempt", "kind")} == {
        "operation": "authorize", "attempt": 1, "kind": "refused",
    }  # fmt: skip
    assert "declined" in refused.detail["message"]
    assert world.spy.voided == []
    assert world.spy.authorized == [authorized.payment.authorization]


def test_an_authorized_order_whose_total_shrinks_captures_only_the_new_total(world):
    order_id = world.place(("TSHIRT", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    authorized = world.order(order_id)
    edited = world.actions.edit(
        order_id, authorized.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), actor="key_web"
    )
    assert edited.totals.grand_total.amount < authorized.totals.grand_total.amount
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)
    (shipment,) = world.order(order_id).shipments

    done = world.actions.ship(order_id, shipment.id, None, actor="key_wh")

    assert world.spy.captured_total() == edited.totals.grand_total.amount
    assert done.payment.captured == done.totals.grand_total


# --- The audit trail ----------------------------------------------------------------------------


def test_every_change_appends_a_history_entry_naming_its_actor(world):
    order_id = world.place(("MUG", 1), ("CAP", 1))
    world.actions.edit(order_id, 1, OrderEdit(shipping_method="express"), actor="key_web")
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)
    order = world.order(order_id)
    for location_id, actor in (("wh-west", "key_wh_west"), ("wh-east", "key_wh_east")):
        world.actions.ship(order_id, world.shipment_at(order, location_id), None, actor=actor)
    for location_id in ("wh-west", "wh-east"):
        world.actions.deliver(order_id, world.shipment_at(order, location_id), actor="key_carrier")

    history = world.history(order_id)
    assert [(h.type, h.actor) for h in history] == [
        ("created", "key_web"),
        ("edited", "key_web"),
        ("payment_authorized", "workflow"),
        ("stock_reserved", "workflow"),
        ("allocated", "workflow"),
        ("shipment_shipped", "key_wh_west"),
        ("shipment_shipped", "key_wh_east"),
        ("shipment_delivered", "key_carrier"),
        ("shipment_delivered", "key_carrier"),
    ]
    # One entry per version, but the two capture requests (the system's bookkeeping).
    assert world.order(order_id).version == len(history) + 2
    assert [h.to_status for h in history if h.to_status] == [
        S.PENDING, S.AUTHORIZED, S.ALLOCATED, S.PARTIALLY_SHIPPED, S.SHIPPED, S.DELIVERED,
    ]  # fmt: skip
    assert all(h.at == NOW for h in history)


def test_shipping_the_last_parcel_again_finishes_a_settlement_the_gateway_could_not_make(world):
    # The order lost a unit before it shipped: once its last parcel left, what the authorization
    # holds beyond the captures is released. The gateway was down for that void; the ship answered
    # 200 with the failure in the history, and repeating the ship is what tries again.
    order = world.allocated(("TSHIRT", 3))
    (shipment,) = order.shipments
    world.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L1": 1})
    world.gateway.script("void", "transient")
    shipped = world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    assert shipped.payment.captured < shipped.payment.authorized
    assert world.spy.voided == []

    world.gateway.script("void", "approve")
    again = world.actions.ship(order.id, shipment.id, None, actor="key_wh")

    assert world.spy.voided == [order.payment.authorization]
    assert again == world.order(order.id)
    assert again.payment.authorized == again.payment.captured == again.totals.grand_total
    assert len(world.spy.captured) == 1


@pytest.mark.parametrize("stage", ["authorized", "allocated"])
def test_the_last_parcel_of_an_order_edited_to_a_smaller_total_releases_the_rest_of_its_authorization(world, stage):
    # The edit kept the authorization of the larger total (only a grown total is authorized
    # again); once nothing is left to ship, what it holds beyond the captures is released, as for
    # an order that lost units to a cancel.
    order_id = world.place(("TSHIRT", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    if stage == "allocated":
        world.workflow.reserve_stock(order_id)
        world.workflow.create_shipments(order_id)
    before = world.order(order_id)
    edited = world.actions.edit(
        order_id, before.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), actor="key_web"
    )
    assert edited.payment.authorized == before.totals.grand_total > edited.totals.grand_total
    world.workflow.reserve_stock(order_id)
    world.workflow.create_shipments(order_id)
    (shipment,) = world.order(order_id).shipments

    done = world.actions.ship(order_id, shipment.id, None, actor="key_wh")

    assert world.spy.voided == [before.payment.authorization]
    assert done.payment.authorized == done.payment.captured == done.totals.grand_total
    assert done == world.order(order_id)
    assert world.history(order_id)[-1].type == "payment_voided"


def test_an_edit_that_lowers_a_line_keeps_the_units_it_still_needs_while_others_reserve(monkeypatch):
    """Sourced again after an edit from 3 units to 2, the order gave all 3 back and then reserved 2:
    another order reserving in between took them, and the order (of a product that may not wait)
    ended cancelled out_of_stock for an edit that asked for less."""
    world = build_world([("TSHIRT", "wh-west", 3)])
    order = world.allocated(("TSHIRT", 3))
    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=2)]), "key_web")
    real = world.inventory.release

    def release_then_another_order_reserves(sku, location_id, key):
        real(sku, location_id, key)
        [level] = world.inventory.levels({sku}, [location_id])[sku]
        if level.available:
            world.inventory.reserve(sku, location_id, "ord_other#L1", level.available)

    monkeypatch.setattr(world.inventory, "release", release_then_another_order_reserves)
    again = world.run(order.id)  # the execution the outbox starts for the order sent back

    assert again.status is S.ALLOCATED
    assert [(a.location_id, a.quantity) for a in again.allocations] == [("wh-west", 2)]
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L2"): 2}
    assert world.level("TSHIRT", "wh-west") == (3, 2, 1)  # the unit it gave up is free for others


def test_a_reservation_that_loses_its_race_keeps_the_units_the_order_held_before_it(monkeypatch):
    """Sourced again after an edit that lowers one line and grows another, the step lost the race
    for the grown line's units: undoing its run released every reservation it had touched, the
    units the order held since its allocation too, for the next order to take before the retry."""
    world = build_world([("TSHIRT", "wh-west", 3), ("MUG", "wh-west", 2)])
    order = world.allocated(("TSHIRT", 3), ("MUG", 1))
    lines = [LineInput(sku="TSHIRT", quantity=2), LineInput(sku="MUG", quantity=2)]
    world.actions.edit(order.id, order.version, OrderEdit(lines=lines), "key_web")
    real = world.inventory.rearrange

    def another_order_takes_the_last_mug_first(sku, location_id, held, wanted, **kwargs):
        if sku == "MUG":
            world.inventory.reserve("MUG", "wh-west", "ord_other#L1", 1)
        return real(sku, location_id, held, wanted, **kwargs)

    monkeypatch.setattr(world.inventory, "rearrange", another_order_takes_the_last_mug_first)
    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order.id)

    held = world.held_for(order.id)
    assert held[("TSHIRT", "wh-west", f"{order.id}#L3")] == 2  # kept for the retry, not given away
    assert held[("MUG", "wh-west", f"{order.id}#L2")] == 1  # the MUG it held too: it grows in one write or not at all


def test_the_units_of_a_line_an_edit_replaced_are_given_back_when_releasing_them_fails_at_first(monkeypatch):
    """An allocated order of 2 MUGs edited to a TSHIRT while the inventory refused the release:
    the edit, written, failed all the same (its repeat: a stale If-Match), and the 2 MUGs stayed
    reserved under a line the order no longer has, for good: its sourcing and even its cancel
    only look at the lines it has."""
    world = build_world([("MUG", "wh-west", 3), ("TSHIRT", "wh-west", 3)])
    order = world.allocated(("MUG", 2))

    def inventory_down(*args: object, **kwargs: object) -> None:
        raise TimeoutError("the inventory did not answer")

    monkeypatch.setattr(world.inventory, "release", inventory_down)
    edit = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)])

    edited = world.actions.edit(order.id, order.version, edit, "key_web")

    assert (edited.status, edited) == (S.AUTHORIZED, world.order(order.id))
    assert world.level("MUG", "wh-west") == (3, 2, 1)
    monkeypatch.undo()
    again = world.run(order.id)  # the execution the outbox starts for the order sent back
    assert again.status is S.ALLOCATED
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L2"): 1}
    assert world.level("MUG", "wh-west") == (3, 0, 3)


def test_a_cancel_gives_back_the_units_of_a_line_an_edit_replaced_that_it_could_not_release(monkeypatch):
    world = build_world([("MUG", "wh-west", 3), ("TSHIRT", "wh-west", 3)])
    order = world.allocated(("MUG", 2))

    def inventory_down(*args: object, **kwargs: object) -> None:
        raise TimeoutError("the inventory did not answer")

    monkeypatch.setattr(world.inventory, "release", inventory_down)
    world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), "key_web")
    monkeypatch.undo()

    world.actions.cancel(order.id, "changed my mind", "key_web")

    assert world.held_for(order.id) == {}
    assert world.level("MUG", "wh-west") == (3, 0, 3)


def test_a_line_an_edit_puts_back_keeps_the_units_an_earlier_edit_could_not_release(monkeypatch):
    world = build_world([("MUG", "wh-west", 2), ("TSHIRT", "wh-west", 3)])
    order = world.allocated(("MUG", 2))

    def inventory_down(*args: object, **kwargs: object) -> None:
        raise TimeoutError("the inventory did not answer")

    monkeypatch.setattr(world.inventory, "release", inventory_down)
    swapped = world.actions.edit(order.id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]),
                                 "key_web")  # fmt: skip
    monkeypatch.undo()
    back = world.actions.edit(order.id, swapped.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_web")
    assert back.status is S.AUTHORIZED

    again = world.run(order.id)

    assert again.status is S.ALLOCATED  # the 2 MUGs it held all along, none of which was left free
    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L3"): 2}
    assert world.level("TSHIRT", "wh-west") == (3, 0, 3)


def test_a_twin_run_that_reserved_more_under_the_same_key_first_does_not_leave_the_order_holding_more(monkeypatch):
    """The outbox's double start ran ReserveStock twice: one run planned 2 MUGs at the west (one
    held there by another order then) and 1 at the east; its twin, after that unit was given
    back, reserved all 3 at the west under the same key first. The first run took that key as
    its own reservation of 2 and recorded 2 at the west: the order held 3 there for good, and
    shipping its 2 took 3 out of on_hand."""
    world = build_world([("MUG", "wh-west", 3), ("MUG", "wh-east", 1)])
    world.inventory.reserve("MUG", "wh-west", "ord_other#L1", 1)
    order_id = world.place(("MUG", 3))
    world.workflow.authorize_payment(order_id, attempt=0)
    key = f"{order_id}#L1"
    real = world.inventory.reserve

    def the_twin_reserves_first(sku, location_id, reserved_key, quantity, **kwargs):
        if (sku, location_id, reserved_key) == ("MUG", "wh-west", key) and not world.held_for(order_id):
            world.inventory.release("MUG", "wh-west", "ord_other#L1")
            real("MUG", "wh-west", key, 3)  # the twin's plan, on the stock it read
        return real(sku, location_id, reserved_key, quantity, **kwargs)

    monkeypatch.setattr(world.inventory, "reserve", the_twin_reserves_first)
    with pytest.raises(TransientError):
        world.workflow.reserve_stock(order_id)
    monkeypatch.undo()
    world.workflow.reserve_stock(order_id)  # the retry
    world.workflow.create_shipments(order_id)

    order = world.order(order_id)
    assert order.status is S.ALLOCATED
    recorded = {("MUG", a.location_id, key): a.quantity for a in order.allocations}
    assert world.held_for(order_id) == recorded == {("MUG", "wh-west", key): 3}
    assert world.level("MUG", "wh-east") == (1, 0, 1)

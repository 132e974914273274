"""A parcel a carrier reported delivered (its ship died after its capture) whose capture the gateway
then refused: it left and reached the customer, the order keeps it `pending` and marked (nothing
may put its units back on sale), and `delivery_not_recorded` calls a person
(DeliveriesNotRecordedAlarm).

Before: the runbook told that person to take the money another way or write it off, then cancel the
parcel's units and count the stock back with PUT /inventory; but the mark made that cancel 409, so
the order sat `allocated` (or `partially_shipped`) for good, its units reserved, its authorization
held. And two refusals reached no alarm: one of another marked parcel the report shipped with the
reported one (suppressed), and one of parcel B right after one of parcel A (the repeat check read
only the type of the history's last entry).

Now a person's cancel (orders:approve) of every unit of such a parcel writes it off: its units leave
the order (lines and totals as for any cancel, the authorization's rest released or voided), the
parcel is `cancelled`, its units leave on_hand as a ship's would (never back on sale: no
PUT /inventory), and the history's entry names it (`written_off`). A cancel of some of its units,
of a marked parcel the gateway did not refuse, or by a key without orders:approve stays 409."""

from __future__ import annotations

import pytest

from core.errors import InvalidTransition, PaymentRefused
from core.events import OrderEvent
from core.money import Money
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from functions.business_metrics import MeteredOrders
from tests.unit.test_business_metrics import emitted
from tests.unit.test_capture_sweep import STOCK
from tests.unit.test_delivery_report_refused import NOT_RECORDED, errors, metrics  # noqa: F401 (a fixture)
from tests.unit.test_delivery_reports import held_for_parcels
from tests.unit.world import Clock, World, build_racing_world, build_world

PERSON = "key_ops"


@pytest.fixture
def world(clock: Clock) -> World:
    return build_world(STOCK, clock=clock, wrap_orders=MeteredOrders)


def refused_delivery(world: World, clock: Clock, monkeypatch: pytest.MonkeyPatch, *lines: tuple[str, int]):
    """An order whose first parcel's ship died after its capture, held for a person to confirm it
    left, then reported delivered by its carrier, the gateway refusing the capture that report asked
    for: the order and that parcel."""
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch, *lines)
    world.gateway.script("capture", "refuse")
    with pytest.raises(PaymentRefused):
        world.actions.deliver(held.id, shipment_id, actor="key_carrier")
    world.gateway.script("capture", "approve")
    order = world.order(held.id)
    assert order.parcels_reported() == [shipment_id] and order.parcels_refused() == [shipment_id]
    assert world.history(held.id)[-1].type is OrderEvent.DELIVERY_NOT_RECORDED
    return order, shipment_id


@pytest.mark.usefixtures("metrics")
def test_another_marked_parcel_shipped_with_the_report_whose_capture_is_refused_calls_a_person(
    capsys, caplog, monkeypatch, world, clock
):
    # Two parcels' ships died; the report of the first leaves the order held for the second, whose
    # report then ships both. Before: the first's refused capture was suppressed, no
    # delivery_not_recorded, no metric, no log: the parcel left, unpaid, and nobody was called.
    held, (first, second) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 1), ("CAP", 1), dead=2)
    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, first, actor="key_carrier")
    emitted(capsys)
    caplog.set_level("ERROR")
    world.gateway.script("capture", "approve", "refuse")  # the reported parcel's, then the other's

    delivered = world.actions.deliver(held.id, second, actor="key_carrier")

    assert delivered.shipment(second).status is ShipmentStatus.DELIVERED
    assert delivered.shipment(first).status is ShipmentStatus.PENDING
    last = world.history(held.id)[-1]
    assert (last.type, last.detail["shipment_id"]) == (OrderEvent.DELIVERY_NOT_RECORDED, first)
    assert world.order(held.id).parcels_refused() == [first]
    assert emitted(capsys)[NOT_RECORDED] == [1.0]
    assert errors(caplog) == [(held.id, first)]


@pytest.mark.usefixtures("metrics")
def test_a_refusal_of_one_parcel_right_after_anothers_is_recorded_and_a_repeat_of_either_is_not(
    capsys, monkeypatch, world, clock
):
    # The renewal of the authorization both captures are asked on is declined: recorded once (a
    # repeat adds no entry), so the second parcel's report found the history ending with the first
    # one's delivery_not_recorded and recorded nothing. Before: no entry, no metric for the second.
    held, (first, second) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 1), ("CAP", 1), dead=2)
    with pytest.raises(InvalidTransition):
        world.actions.deliver(held.id, first, actor="key_carrier")
    world.gateway.script("authorize", "refuse")
    with pytest.raises(PaymentRefused):
        world.actions.deliver(held.id, second, actor="key_carrier")
    emitted(capsys)

    with pytest.raises(PaymentRefused):
        world.actions.deliver(held.id, first, actor="key_carrier")

    last = world.history(held.id)[-1]
    assert (last.type, last.detail["shipment_id"]) == (OrderEvent.DELIVERY_NOT_RECORDED, first)
    assert emitted(capsys)[NOT_RECORDED] == [1.0]
    assert world.order(held.id).parcels_refused() == [first, second]
    # Either report sent again meets the same refusal: nothing more recorded or counted.
    entries = len(world.history(held.id))
    for shipment_id in (second, first, second):
        with pytest.raises(PaymentRefused):
            world.actions.deliver(held.id, shipment_id, actor="key_carrier")
    assert len(world.history(held.id)) == entries
    assert NOT_RECORDED not in emitted(capsys)


@pytest.mark.usefixtures("metrics")
def test_two_reports_of_a_parcel_refused_at_once_record_count_and_log_its_refusal_once(
    capsys, caplog, monkeypatch, clock
):
    # Before: the check of the history ("recorded already?") came before the write and apart
    # from it, so the report whose write lost the race wrote its entry again on the version read
    # again: two entries, DeliveriesNotRecordedAlarm counted twice, two ERROR lines.
    world, race = build_racing_world(STOCK, OrderEvent.DELIVERY_NOT_RECORDED, clock=clock, around=MeteredOrders)
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 1))
    world.gateway.script("capture", "refuse")
    emitted(capsys)
    caplog.set_level("ERROR")

    def second_report() -> None:
        with pytest.raises(PaymentRefused):
            world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    race.between = second_report
    with pytest.raises(PaymentRefused):
        world.actions.deliver(held.id, shipment_id, actor="key_carrier")

    assert race.between is None  # the second report ran inside the first's write
    types = [e.type for e in world.history(held.id)]
    assert types.count(OrderEvent.DELIVERY_NOT_RECORDED) == 1
    assert world.order(held.id).parcels_refused() == [shipment_id]
    assert emitted(capsys)[NOT_RECORDED] == [1.0]
    assert errors(caplog) == [(held.id, shipment_id)]


def test_a_persons_cancel_writes_off_a_refused_parcel_its_units_leaving_on_hand_not_back_on_sale(
    monkeypatch, world, clock
):
    order, shipment_id = refused_delivery(world, clock, monkeypatch, ("TSHIRT", 2))
    assert world.level("TSHIRT", "wh-west") == (10, 2, 8)
    # A storefront's key may not write money off: 409, nothing written.
    with pytest.raises(InvalidTransition, match="writes it off"):
        world.actions.cancel(order.id, "written off", actor="key_web", confirms_parcels=False)
    assert world.order(order.id).version == order.version

    cancelled = world.actions.cancel(order.id, "capture refused: written off", actor=PERSON)

    assert cancelled.status is OrderStatus.CANCELLED
    assert cancelled.shipment(shipment_id).status is ShipmentStatus.CANCELLED
    entry = next(e for e in world.history(order.id) if e.type is OrderEvent.CANCELLED)
    assert (entry.actor, entry.detail["reason"], entry.detail["written_off"]) == (
        PERSON, "capture refused: written off", [shipment_id],
    )  # fmt: skip
    # The two units left with the carrier: out of on_hand, none reserved, none back on sale.
    assert world.level("TSHIRT", "wh-west") == (8, 0, 8)
    assert world.held_for(order.id) == {}
    assert not any(e.type is OrderEvent.CARRIER_BOOKING_CANCELLED for e in world.history(order.id))
    payment = cancelled.payment
    assert payment.status is PaymentStatus.VOIDED and cancelled.totals.grand_total.amount == 0
    assert payment.captured - sum((r.amount for r in payment.refunds), Money.zero(payment.captured.currency)) == (
        cancelled.totals.grand_total
    )
    # Repeated: nothing moves twice.
    again = world.actions.cancel(order.id, "capture refused: written off", actor=PERSON)
    assert again.version == cancelled.version and world.level("TSHIRT", "wh-west") == (8, 0, 8)


def test_a_cancel_of_a_refused_parcels_units_on_a_partly_shipped_order_writes_it_off_once(monkeypatch, world, clock):
    order, shipment_id = refused_delivery(world, clock, monkeypatch, ("TSHIRT", 2), ("CAP", 1))
    refused = order.shipment(shipment_id)
    other = next(s.id for s in order.shipments if s.id != shipment_id)
    shipped = world.actions.ship(order.id, other, None, actor="key_wh")
    assert shipped.status is OrderStatus.PARTIALLY_SHIPPED
    location = refused.location_id
    sku_of = {line.line_id: line.sku for line in order.lines}
    units = {item.line_id: item.quantity for item in refused.lines}
    (sku,) = {sku_of[line_id] for line_id in units}
    on_hand, reserved, available = world.level(sku, location)
    # Some of its units only: a parcel left whole, so 409, saying how to write it off.
    line_id, quantity = next(iter(units.items()))
    if quantity > 1:
        with pytest.raises(InvalidTransition, match="writes it off"):
            world.actions.cancel(order.id, "written off", actor=PERSON, lines={line_id: quantity - 1})

    written = world.actions.cancel(order.id, "written off", actor=PERSON, lines=units, request_key="k1")

    assert written.status is OrderStatus.SHIPPED
    assert written.shipment(shipment_id).status is ShipmentStatus.CANCELLED
    entry = next(e for e in reversed(world.history(order.id)) if e.type is OrderEvent.UNITS_CANCELLED)
    assert (entry.actor, entry.detail["lines"], entry.detail["written_off"]) == (PERSON, units, [shipment_id])
    assert world.level(sku, location) == (on_hand - quantity, reserved - quantity, available)
    # The order costs what shipped; that was captured, and the authorization's rest released.
    payment = written.payment
    # The parcel left with its carrier: its booking was used, not given up.
    assert not any(e.type is OrderEvent.CARRIER_BOOKING_CANCELLED for e in world.history(order.id))
    assert written.bookings_to_cancel == []
    refunded = sum((r.amount for r in payment.refunds), Money.zero(payment.captured.currency))
    assert payment.captured - refunded == written.totals.grand_total
    assert payment.status is PaymentStatus.CAPTURED
    # The same request again (its answer lost): the same order, nothing cancelled or moved twice.
    again = world.actions.cancel(order.id, "written off", actor=PERSON, lines=units, request_key="k1")
    assert again.version == world.order(order.id).version and again.lines == written.lines
    assert world.level(sku, location) == (on_hand - quantity, reserved - quantity, available)


def test_a_marked_parcel_the_gateway_did_not_refuse_is_not_written_off(monkeypatch, world, clock):
    # Its capture may yet be made (the report sent again ships it): a cancel stays 409.
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch)
    world.gateway.script("capture", "transient")
    with pytest.raises(Exception):  # noqa: B017 (the gateway stays down: 503)
        world.actions.deliver(held.id, shipment_id, actor="key_carrier")
    order = world.order(held.id)
    assert order.parcels_reported() == [shipment_id] and order.parcels_refused() == []
    with pytest.raises(InvalidTransition, match="reported shipment"):
        world.actions.cancel(order.id, "written off", actor=PERSON)
    assert world.order(order.id).version == order.version

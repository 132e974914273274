"""The one-off upgrade of orders whose carrier's report of a marked parcel met the gateway's refusal
before the mark said so (ReportedDelivery.refused), under moto. Before: such a parcel's
`delivery_not_recorded` called a person, but its mark was never refused, so their cancel of its
units stayed 409 for good and the reconciler's kept-back pass asked its capture again. The backfill
marks the parcels whose history holds their `delivery_not_recorded`, and writes no other order."""

from __future__ import annotations

from core.models import Order, utc_now
from core.status import ShipmentStatus
from functions.adapters.dynamodb import DynamoOrders, backfill_refused_reports, index_attributes
from tests.builders import place_order
from tests.integration.test_reported_parcel_late import marked_and_left


def refused_the_old_way(orders: DynamoOrders, order: Order, shipment_id: str) -> Order:
    """The report's capture refused as an earlier version recorded it: `capture_not_made` and
    `delivery_not_recorded` in the history, the parcel's mark not saying so."""
    at, message = utc_now(), "the payment gateway refused the capture: do not honor"
    not_made, entry = order.record_capture_not_made(shipment_id, message, at=at, actor="key_carrier")
    orders.update(not_made, order, [entry])
    noted, entry = not_made.note_delivery_not_recorded(shipment_id, message, at=at, actor="key_carrier")
    old = noted.model_copy(update={"reported_delivered": not_made.reported_delivered})  # no `refused`
    orders.update(old, not_made, [entry])
    stored = orders.get(order.id)
    assert stored.parcels_refused() == [] and stored.reported_to_finish() == [shipment_id]
    return stored


def test_a_parcel_whose_delivery_was_not_recorded_before_marks_said_so_is_marked_and_can_be_written_off(
    aws, monkeypatch
):
    services, old = marked_and_left(aws, monkeypatch, "web-refused")
    orders, table, (shipment_id,) = services.order_repository, aws.tables["OrdersTable"], [s.id for s in old.shipments]
    old = refused_the_old_way(orders, old, shipment_id)
    _, died = marked_and_left(aws, monkeypatch, "web-died")  # no refusal: the pass's to finish
    (other,) = [s.id for s in died.shipments]
    typical = services.capture.place(place_order(external_id="t"), actor="k")
    assert index_attributes(old)["refund_key"] == {"S": "kept_back"}

    assert backfill_refused_reports(aws.dynamodb, table, page_size=1) == (1, 2)

    upgraded = orders.get(old.id)
    assert upgraded.version == old.version + 1 and upgraded.parcels_refused() == [shipment_id]
    assert upgraded.reported_to_finish() == [] and "refund_key" not in index_attributes(upgraded)
    assert (upgraded.status, upgraded.lines, upgraded.payment) == (old.status, old.lines, old.payment)
    assert orders.get(died.id) == died and orders.get(died.id).reported_to_finish() == [other]
    assert orders.get(typical.id) == typical
    assert backfill_refused_reports(aws.dynamodb, table) == (0, 3)  # a second run writes nothing

    written = services.actions.cancel(old.id, "capture refused: written off", actor="key_ops")
    assert written.shipment(shipment_id).status is ShipmentStatus.CANCELLED

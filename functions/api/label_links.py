"""Orders and returns as the API shows them: each stored label key becomes a link signed now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.models import Order
from core.refunds import with_refunds_shown
from core.shown_references import with_references_shown
from core.status import ReturnStatus, ShipmentStatus
from functions.api.dependencies import container

if TYPE_CHECKING:
    # The returns' models stay out of a new API container, whose first order links its labels here.
    from core.return_models import Return


def with_label_links(order: Order) -> Order:
    """`order` with a fresh, short-lived link in each `label_url`, its `payment.refunds` as
    GET /orders/{id}/refunds lists them (core.refunds.with_refunds_shown) and the gateway's
    references escaped (core.shown_references.with_references_shown); the stored order is
    untouched. Every route that answers with an Order passes it through here, after anything that
    keeps the answer (idempotency), so no signature is ever stored. A cancelled shipment shows
    none: its parcel will never go, and the carrier booking of one that was pending is cancelled,
    so a label printed from it would be void."""
    order = with_references_shown(with_refunds_shown(order))
    if not any(shipment.label_url for shipment in order.shipments):
        return order
    labels = container().label_store

    def shown(label_key: str | None, status: ShipmentStatus) -> str | None:
        return labels.link(label_key) if label_key and status is not ShipmentStatus.CANCELLED else None

    shipments = [
        shipment.model_copy(update={"label_url": shown(shipment.label_url, shipment.status)})
        for shipment in order.shipments
    ]
    return order.model_copy(update={"shipments": shipments})


def with_return_label_link(item: Return) -> Return:
    """`item` with a fresh link in place of its stored return label key, as for shipments. A
    cancelled return (one expired unreceived) shows none: its label was given up and is cancelled
    with its carrier, so a label printed from it would be void, as a cancelled shipment's. (A
    rejected return never had one: only an authorized return is labelled.)"""
    if not item.label_url:
        return item
    shown = None if item.status is ReturnStatus.CANCELLED else container().label_store.link(item.label_url)
    return item.model_copy(update={"label_url": shown})

"""Orders and returns as the API shows them: each stored label key becomes a link signed now."""

from __future__ import annotations

from core.models import Order
from core.return_models import Return
from functions.api.dependencies import container


def with_label_links(order: Order) -> Order:
    """`order` with a fresh, short-lived link in each `label_url`; the stored order is untouched.
    Every route that answers with an Order passes it through here, after anything that keeps the
    answer (idempotency), so no signature is ever stored."""
    if not any(shipment.label_url for shipment in order.shipments):
        return order
    labels = container().label_store
    shipments = [
        shipment.model_copy(update={"label_url": labels.link(shipment.label_url)}) if shipment.label_url else shipment
        for shipment in order.shipments
    ]
    return order.model_copy(update={"shipments": shipments})


def with_return_label_link(item: Return) -> Return:
    """`item` with a fresh link in place of its stored return label key, as for shipments."""
    if not item.label_url:
        return item
    return item.model_copy(update={"label_url": container().label_store.link(item.label_url)})

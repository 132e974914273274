"""Fulfilment confirmations in batches: a warehouse system confirms many shipments in one call.

Each item runs the very action its single route runs (OrderActions.ship, .deliver_or_collect,
.ready), in the order sent, so a batch changes exactly what the same calls one by one would: the
capture per ship, the conditional writes, and the idempotency of each action (a shipment
confirmed twice, in one batch or across retries, is changed once). An item the domain refuses
(unknown or another channel's order, a shipment in the wrong state, a capture the gateway
refused or could not make now) is reported beside the others and stops nothing; anything else
(a bug, an AWS failure botocore gave up on) propagates and fails the batch, whose items are each
safe to send again.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, ValidationInfo, field_validator

from core.errors import DomainError, NotFound, PaymentRefused, PluginError, StaleVersion, TransientError
from core.fulfillment import OrderActions
from core.models import Order, Strict, TrackingNumber
from core.status import OrderStatus, ShipmentStatus

MAX_ITEMS = 100
# API Gateway answers 504 after 29 s while the function goes on; items not started by this many
# seconds into the batch are answered `not_attempted` instead (a gateway that keeps failing costs
# each ship its retries, and a hundred of those would outlast the gateway's wait).
DEADLINE_SECONDS = 20.0


class ConfirmationAction(StrEnum):
    SHIP = "ship"  # POST /orders/{id}/shipments/{shipment_id}/ship
    DELIVER = "deliver"  # POST .../deliver: a parcel arrived, or a pickup was collected
    READY = "ready"  # POST .../ready: a store has picked a pickup


# A malformed id is an item that names nothing: answered not_found like any unknown id (as in a
# path), never a 422 for the whole batch, and never looked up (a lone surrogate or a control
# character has no business in a database request).
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
_ORDER_ID = re.compile(r"ord_[a-z2-7]{24}")
_SHIPMENT_ID = re.compile(r"shp_[a-z2-7]{24}")


class Confirmation(Strict):
    """One shipment confirmed: what happened to it, as its single route would be told."""

    order_id: ItemId
    shipment_id: ItemId
    action: ConfirmationAction
    tracking_number: TrackingNumber | None = None

    @field_validator("tracking_number")
    @classmethod
    def _tracking_only_when_shipping(cls, tracking_number: str | None, info: ValidationInfo) -> str | None:
        # `action` comes first, so it is in info.data once valid (an invalid one is its own error).
        action = info.data.get("action")
        if tracking_number is not None and action is not None and action is not ConfirmationAction.SHIP:
            raise ValueError("tracking_number goes with action ship only")
        return tracking_number


class ConfirmationBatch(Strict):
    """The body of POST /shipments/confirmations."""

    items: Annotated[list[Confirmation], Field(min_length=1, max_length=MAX_ITEMS)]


class NotAttempted(DomainError):
    """The batch ran out of time before this item: nothing was done for it."""

    code = "not_attempted"


@dataclass(frozen=True)
class Confirmed:
    """What one item came to: the order as stored after it, or the refusal (nothing changed)."""

    item: Confirmation
    order: Order | None = None
    failure: DomainError | None = None

    @property
    def shipment_status(self) -> ShipmentStatus | None:
        if self.order is None:
            return None
        return next((s.status for s in self.order.shipments if s.id == self.item.shipment_id), None)

    @property
    def order_status(self) -> OrderStatus | None:
        return self.order.status if self.order else None

    @property
    def retry(self) -> bool:
        """Sending this item again later may succeed: the gateway or a carrier was down, or the
        batch ran out of time, or concurrent changes of the order kept winning the write, or the
        gateway refused a capture on an authorization the item sent again renews first (once: not
        one refused on that renewal). A refusal that depends on the order's state would be refused
        again."""
        if isinstance(self.failure, PaymentRefused):
            return self.failure.renewed_when_repeated
        return isinstance(self.failure, TransientError | StaleVersion | NotAttempted)


def confirm(
    actions: OrderActions,
    batch: ConfirmationBatch,
    actor: str,
    channel: str | None,
    seconds_elapsed: Callable[[], float],
    deadline_seconds: float = DEADLINE_SECONDS,
) -> list[Confirmed]:
    """Run each item's action in order; one result per item, in the same order."""
    results: list[Confirmed] = []
    attempted = 0
    for item in batch.items:
        if seconds_elapsed() >= deadline_seconds:
            late = NotAttempted(f"not attempted: the batch ran out of time once {attempted} of its "
                                f"{len(batch.items)} items had run; send this one again")  # fmt: skip
            results.append(Confirmed(item, failure=late))
            continue
        attempted += 1
        try:
            results.append(Confirmed(item, order=_run(actions, item, actor, channel)))
        except PluginError:
            raise  # a broken plugin is a bug, answered 500 as on the single routes
        except DomainError as refused:
            results.append(Confirmed(item, failure=refused))
    return results


def _run(actions: OrderActions, item: Confirmation, actor: str, channel: str | None) -> Order:
    if _ORDER_ID.fullmatch(item.order_id) is None:
        raise NotFound("no order has this id")
    if _SHIPMENT_ID.fullmatch(item.shipment_id) is None:
        raise NotFound(f"no shipment has this id on order {item.order_id}")
    if item.action is ConfirmationAction.SHIP:
        return actions.ship(item.order_id, item.shipment_id, item.tracking_number, actor=actor, channel=channel)
    if item.action is ConfirmationAction.DELIVER:
        return actions.deliver_or_collect(item.order_id, item.shipment_id, actor=actor, channel=channel)
    return actions.ready(item.order_id, item.shipment_id, actor=actor, channel=channel)

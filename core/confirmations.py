"""Fulfilment confirmations in batches: a warehouse system confirms many shipments in one call.

Each item runs the very action its single route runs (OrderActions.ship, .deliver_or_collect,
.ready), in the order sent, so a batch changes exactly what the same calls one by one would: the
capture per ship, the conditional writes, and the idempotency of each action (a shipment
confirmed twice, in one batch or across retries, is changed once). An item the domain refuses
(unknown or another channel's order, a shipment in the wrong state, a capture the gateway
refused or could not make now, a plugin that failed) is reported beside the others and stops
nothing; anything else (a bug, an AWS failure botocore gave up on) propagates and fails the
batch, whose items are each safe to send again.
"""

from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from core.errors import (
    CaptureWithdrawn,
    DomainError,
    HandOverTimeRefused,
    InvalidRequest,
    NotFound,
    PaymentRefused,
    PluginError,
    StaleVersion,
    TransientError,
    field_path,
    said,
)
from core.fields import written_as_a_time
from core.fulfillment import HAND_OVER_CLOCK_SKEW, OrderActions
from core.ids import ORDER_ID, SHIPMENT_ID
from core.models import Order, Strict, TrackingNumber
from core.status import OrderStatus, ShipmentStatus
from core.workflow_types import UtcTime

MAX_ITEMS = 100
# API Gateway answers 504 after 29 s while the function goes on; items not started by this many
# seconds into the batch are answered `not_attempted` instead (a gateway that keeps failing costs
# each ship its retries, and a hundred of those would outlast the gateway's wait).
DEADLINE_SECONDS = 20.0
# How far ahead of now a stated hand-over time is taken for now (OrderActions.ship).
SKEW_SECONDS = int(HAND_OVER_CLOCK_SKEW.total_seconds())


class ConfirmationAction(StrEnum):
    SHIP = "ship"  # POST /orders/{id}/shipments/{shipment_id}/ship
    DELIVER = "deliver"  # POST .../deliver: a parcel arrived, or a pickup was collected
    READY = "ready"  # POST .../ready: a store has picked a pickup


# A malformed id is an item that names nothing: answered not_found like any unknown id (as in a
# path), never a 422 for the whole batch, and never looked up (a lone surrogate or a control
# character has no business in a database request).
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


# When the parcel left, as the WMS's manifest says: with its offset, kept in UTC.
HandOverTime = Annotated[
    UtcTime,
    BeforeValidator(
        written_as_a_time("shipped_at", "an RFC 3339 time with its offset, such as 2026-11-22T09:30:00+01:00")
    ),
]


class Confirmation(Strict):
    """One shipment confirmed: what happened to it, as its single route would be told."""

    order_id: ItemId
    shipment_id: ItemId
    action: ConfirmationAction
    tracking_number: TrackingNumber | None = None
    shipped_at: Annotated[
        HandOverTime | None,
        Field(description="With `ship` only: when the parcel was handed over (the WMS's manifest), an RFC 3339 "
              "time with its offset, recorded in UTC as the shipment's `shipped_at`; none: the confirmation's time. "
              f"Later than now by more than {SKEW_SECONDS} s, or before the OMS made the parcel: the item is refused "
              "(`validation_error`). A shipped parcel keeps the time first recorded."),
    ] = None  # fmt: skip

    @field_validator("tracking_number", "shipped_at")
    @classmethod
    def _only_when_shipping(cls, value: Any, info: ValidationInfo) -> Any:
        # `action` comes first, so it is in info.data once valid (an invalid one is its own error).
        action = info.data.get("action")
        if value is not None and action is not None and action is not ConfirmationAction.SHIP:
            raise ValueError(f"{info.field_name} goes with action ship only")
        return value


@dataclass(frozen=True)
class MalformedItem:
    """An item of a batch that is no confirmation (an action this route does not take, a malformed
    tracking number, a field it does not know, no object at all): refused at its `position` with
    what is wrong (`details`, fields named from the batch: "items[3].action"), while the others
    run, as a bad row of an import stops none of the good ones. What it names is echoed when it is
    an id's kind of text, so the sender can match the answer to the row."""

    position: int
    order_id: str | None
    shipment_id: str | None
    action: ConfirmationAction | None
    details: list[dict[str, str]]
    sent: Any  # the item as sent: what an Idempotency-Key's body is compared on


_ECHOED_ID = TypeAdapter(ItemId)
_ECHOED_ACTION = TypeAdapter(ConfirmationAction)


def _echoed(adapter: TypeAdapter[Any], sent: Any, name: str) -> Any:
    try:
        return adapter.validate_python(sent.get(name)) if isinstance(sent, dict) else None
    except ValidationError:
        return None


def _item(position: int, sent: Any) -> "Confirmation | MalformedItem":
    try:
        return Confirmation.model_validate(sent)
    except ValidationError as invalid:
        prefix = f"items[{position}]"
        details = [
            {"field": f"{prefix}.{path}" if (path := field_path(error["loc"])) else prefix, "message": said(error)}
            for error in invalid.errors(include_url=False, include_input=False)
        ]
        return MalformedItem(
            position=position, order_id=_echoed(_ECHOED_ID, sent, "order_id"),
            shipment_id=_echoed(_ECHOED_ID, sent, "shipment_id"), action=_echoed(_ECHOED_ACTION, sent, "action"),
            details=details, sent=sent,
        )  # fmt: skip


def _malformed_only(item: Any) -> "MalformedItem":
    if not isinstance(item, MalformedItem):
        raise ValueError("not a confirmation")
    return item


# Left out of the generated document, which describes every item as a Confirmation.
_Refused = SkipJsonSchema[Annotated[Any, PlainValidator(_malformed_only)]]


class ConfirmationBatch(Strict):
    """The body of POST /shipments/confirmations: 1 to 100 items, or 422 for the whole batch. An
    item that is not a valid confirmation is refused on its own (`validation_error`, its `details`
    naming its position) and the others run."""

    items: Annotated[list[Confirmation | _Refused], Field(min_length=1, max_length=MAX_ITEMS)]

    @field_validator("items", mode="wrap")
    @classmethod
    def _each_item_on_its_own(cls, items: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(items, list):
            return handler(items)  # refused whole, as is one of too many items (no item looked at alone)
        if len(items) > MAX_ITEMS:
            raise ValueError(f"a batch has at most {MAX_ITEMS} items, not {len(items)}")
        return handler([_item(position, sent) for position, sent in enumerate(items)])

    def as_sent(self) -> dict[str, Any]:
        """The body as the sender sent it (each malformed item as it came), for the Idempotency-Key.
        An item without `shipped_at` leaves it out, as every item did before it was taken: a batch
        sent again across that release is the same body."""
        return {"items": [item.sent if isinstance(item, MalformedItem)
                          else item.model_dump(mode="json", exclude=None if item.shipped_at else {"shipped_at"})
                          for item in self.items]}  # fmt: skip


class NotAttempted(DomainError):
    """The batch ran out of time before this item: nothing was done for it."""

    code = "not_attempted"


@dataclass(frozen=True)
class Confirmed:
    """What one item came to: the order as stored after it, or the refusal (nothing changed)."""

    item: Confirmation | MalformedItem
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
        batch ran out of time, or concurrent changes of the order kept winning the write, or a
        change of the order under way took the ship's capture back (CaptureWithdrawn), or the
        gateway refused a capture on an authorization the item sent again renews first (once: not
        one refused on that renewal), or a plugin failed (nothing it answered was kept; the payment
        plugin's capture stands under its key, for the item sent again once the plugin works). A
        refusal that depends on the order's state would be refused again."""
        if isinstance(self.failure, PaymentRefused):
            return self.failure.renewed_when_repeated
        return isinstance(self.failure, TransientError | StaleVersion | NotAttempted | PluginError | CaptureWithdrawn)


def confirm(
    actions: OrderActions,
    batch: ConfirmationBatch,
    actor: str,
    channel: str | None,
    seconds_elapsed: Callable[[], float],
    deadline_seconds: float = DEADLINE_SECONDS,
    location_ids: Collection[str] | None = None,
) -> list[Confirmed]:
    """Run each item's action in order; one result per item, in the same order. `location_ids`:
    the caller's key's locations (None: every one); an item's parcel elsewhere is refused
    (Forbidden), as its single route refuses it, and the others run."""
    results: list[Confirmed] = []
    attempted = 0
    for position, item in enumerate(batch.items):
        if isinstance(item, MalformedItem):
            # Refused whatever the time: sending it again as it is would be refused again.
            refused = InvalidRequest(f"item {item.position} of the batch is not a valid confirmation",
                                     details=item.details)  # fmt: skip
            results.append(Confirmed(item, failure=refused))
            continue
        if seconds_elapsed() >= deadline_seconds:
            late = NotAttempted(f"not attempted: the batch ran out of time once {attempted} of its "
                                f"{len(batch.items)} items had run; send this one again")  # fmt: skip
            results.append(Confirmed(item, failure=late))
            continue
        attempted += 1
        try:
            results.append(Confirmed(item, order=_run(actions, item, actor, channel, location_ids)))
        except HandOverTimeRefused as refused:
            # The item's own field, named from the batch as a malformed item's are.
            details = [{**detail, "field": f"items[{position}].{detail['field']}"} for detail in refused.details]
            results.append(Confirmed(item, failure=InvalidRequest(str(refused), details=details)))
        except DomainError as refused:
            # A plugin that failed (PluginError; the payment plugin in this item's capture,
            # PaymentPluginFailed, in its order's history with nothing recorded as moved) refuses
            # this item as its single route answers it (502), as any refusal does: the items
            # before it, done already, and after it keep their own answers.
            results.append(Confirmed(item, failure=refused))
    return results


def _run(
    actions: OrderActions, item: Confirmation, actor: str, channel: str | None, location_ids: Collection[str] | None
) -> Order:
    if ORDER_ID.fullmatch(item.order_id) is None:
        raise NotFound("no order has this id")
    if SHIPMENT_ID.fullmatch(item.shipment_id) is None:
        raise NotFound(f"no shipment has this id on order {item.order_id}")
    actions.refuse_parcel_elsewhere(item.order_id, item.shipment_id, channel, location_ids)
    if item.action is ConfirmationAction.SHIP:
        return actions.ship(item.order_id, item.shipment_id, item.tracking_number, actor=actor, channel=channel,
                            shipped_at=item.shipped_at)  # fmt: skip
    if item.action is ConfirmationAction.DELIVER:
        return actions.deliver_or_collect(item.order_id, item.shipment_id, actor=actor, channel=channel)
    return actions.ready(item.order_id, item.shipment_id, actor=actor, channel=channel)

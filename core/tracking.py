"""Carrier tracking webhooks: a carrier plugin reads the webhook, the OMS applies what it says.

A real carrier's webhook names a parcel by its tracking number and by the reference the shipper
gave when booking. The OMS has no index from tracking numbers to shipments, so carrier plugins
book with `shipment_reference(order_id, shipment_id)` as that reference and read it back.

Only deliveries are applied: a shipment has no place for in-transit scans, so those are
reported back to the sender as `not_recorded` and kept nowhere (or as `unknown_shipment`, as a
delivery would be, when they name no shipment the caller may see, or as `withdrawn`, as a delivery
would be, when they name one a change withdrew from its order). An event the plugin will not
read (RefusedTrackingEvent) is refused alone, at its position, and the others are applied.
"""

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import pluggy
from pydantic import AwareDatetime, BaseModel, Field

from core.errors import (
    InvalidTransition,
    NoPaymentPlugin,
    NotFound,
    ParcelWithdrawn,
    PaymentRefused,
)
from core.fields import empty_list
from core.hook_calls import call_hook
from core.ids import ORDER_ID, SHIPMENT_ID

# The references live in core.ids: the built-in carrier plugin, which every new API container loads,
# reads them without this module. Carrier plugins import them from here too (the plugin guide).
from core.ids import parse_shipment_reference as parse_shipment_reference
from core.ids import shipment_reference as shipment_reference
from core.log_text import escape_for_log
from core.models import Shown
from core.workflow_types import RefusedField, RefusedTrackingEvent, TrackingUpdate

logger = logging.getLogger(__name__)

Outcome = Literal["delivered", "not_recorded", "unknown_shipment", "not_shipped", "payment_refused", "withdrawn"]


class AppliedTrackingUpdate(BaseModel, defer_build=True):
    """One update of a webhook and what the OMS did with it:
    - `delivered`: the shipment is delivered (now, or it already was),
    - `not_recorded`: an in-transit scan of a shipment the caller may see, which the OMS does not store,
    - `unknown_shipment`: no such order or shipment that this API key may see,
    - `not_shipped`: the shipment has not been confirmed shipped, so it cannot be delivered yet; a
      delivered scan of a pending parcel is kept (OrderActions.deliver_scanned), and the ship that
      confirms the hand-over delivers it at the carrier's time (nothing captured before that ship),
    - `payment_refused`: the shipment was not confirmed shipped (its ship died after asking for its
      capture), and shipping it as the report does, the gateway refused its capture: the order
      records `delivery_not_recorded` for a person (DeliveriesNotRecordedAlarm); sending it again
      meets the same refusal,
    - `withdrawn`: a scan (delivered or in transit) of a parcel a change withdrew from its order (an
      edit, a reject, a stock take sent the order back to be sourced), which the carrier had all the same: nothing
      changed, and a WARNING line names the order, the parcel and what withdrew it, for a person to
      settle (the customer may have these goods and the order's new parcel), as the location's
      delivery of it is answered 409 `invalid_transition` naming the change."""

    position: int  # the update's place in what the carrier's plugin read: its event's, one per event
    order_id: str
    shipment_id: str
    status: Literal["in_transit", "delivered"]
    at: AwareDatetime
    description: str
    outcome: Outcome


class RefusedUpdateError(Shown):
    """Why an event was refused, in the contract's error shape: `validation_error`, with `details`
    naming the fields of the webhook's body that are wrong."""

    code: Literal["validation_error"] = "validation_error"
    message: str
    details: list[RefusedField]


class RefusedUpdate(Shown):
    """An event of the webhook its carrier's plugin would not read (RefusedTrackingEvent): nothing
    was done for it, and sending it again as it is would be refused again."""

    position: int
    error: RefusedUpdateError


class TrackingReport(Shown):
    """What was done with each event: `updates` (read, each with its outcome) and `refused` (not
    read), both in the order sent, each with its event's `position`."""

    carrier: str
    updates: list[AppliedTrackingUpdate]
    refused: list[RefusedUpdate] = Field(default_factory=empty_list)


class CarrierTracking:
    """Reads a carrier's webhook through the `oms_carrier_tracking_update` hook and applies it."""

    def __init__(self, plugins: pluggy.PluginManager):
        self._hook = plugins.hook

    def read(
        self, carrier: str, payload: Any, headers: dict[str, str], body: str
    ) -> list[TrackingUpdate | RefusedTrackingEvent]:
        """The updates the carrier's plugin found in the webhook, each re-validated (call_hook), and
        in the place of each event it would not read, its refusal (RefusedTrackingEvent).
        NotFound when no plugin answers for `carrier`; PluginError naming the plugin when it fails
        or answers something else than documented; the plugin's InvalidRequest (the sender's
        malformed body, 422) and TransientError (the carrier briefly down, 503) as it raised them."""
        # The plugin's InvalidRequest, the hook's documented refusal of a body, passes through
        # call_hook as raised (the spec's `refusals`): the sender's fault, not the plugin's.
        updates = call_hook(
            self._hook.oms_carrier_tracking_update, carrier=carrier, payload=payload, headers=headers, body=body
        )
        if updates is None:
            raise NotFound(f"no carrier plugin reads tracking updates for {carrier!r}")
        return updates

    def apply(
        self,
        carrier: str,
        payload: Any,
        headers: dict[str, str],
        body: str,
        deliver: Callable[[str, str, datetime], object],
        find: Callable[[str, str], object],
    ) -> TrackingReport:
        """Read the webhook, then mark each delivered shipment delivered with `deliver(order_id,
        shipment_id, at)`, `at` when the carrier says it was (idempotent, so a carrier's retry
        changes nothing); an in-transit scan is only looked up, with `find(order_id, shipment_id)`
        (NotFound for a shipment the caller may not see, as `deliver` raises). A failure worth a
        retry (a version conflict, a transient error, no payment plugin for the order's method)
        propagates, so the carrier sends the webhook again; the gateway's refusal, which a retry
        meets again, is that update's outcome (`payment_refused`), and the webhook's other updates
        are applied. An event the plugin refused (RefusedTrackingEvent) is answered under
        `refused` at its position, and stops none of the others."""
        applied: list[AppliedTrackingUpdate] = []
        refused: list[RefusedUpdate] = []
        for position, update in enumerate(self.read(carrier, payload, headers, body)):
            if isinstance(update, RefusedTrackingEvent):
                error = RefusedUpdateError(message=update.message, details=update.details)
                refused.append(RefusedUpdate(position=position, error=error))
                continue
            outcome = _apply(update, deliver, find)
            applied.append(AppliedTrackingUpdate(**update.model_dump(), position=position, outcome=outcome))
        return TrackingReport(carrier=carrier, updates=applied, refused=refused)


def _apply(
    update: TrackingUpdate, deliver: Callable[[str, str, datetime], object], find: Callable[[str, str], object]
) -> Outcome:
    if ORDER_ID.fullmatch(update.order_id) is None or SHIPMENT_ID.fullmatch(update.shipment_id) is None:
        return "unknown_shipment"  # no id of the OMS's: names nothing, never looked up
    try:
        if update.status != "delivered":
            find(update.order_id, update.shipment_id)
            return "not_recorded"
        deliver(update.order_id, update.shipment_id, update.at)
    except NotFound:
        return "unknown_shipment"
    except ParcelWithdrawn as withdrawn:
        logger.warning(
            "carrier delivered a parcel withdrawn from its order: order %s, shipment %s; a person is to settle it: %s",
            update.order_id, update.shipment_id, escape_for_log(withdrawn.message),
            extra={"order_id": update.order_id, "shipment_id": update.shipment_id, "withdrawn": withdrawn.details},
        )  # fmt: skip
        return "withdrawn"
    except InvalidTransition:
        return "not_shipped"
    except NoPaymentPlugin:
        raise  # nobody asked the gateway: worth a retry once the plugin is back
    except PaymentRefused:
        return "payment_refused"  # recorded on the order (delivery_not_recorded), for a person
    return "delivered"

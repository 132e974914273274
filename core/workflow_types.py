"""What payment, sourcing and carrier plugins receive and return."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from core.errors import PluginError
from core.fields import empty_list
from core.hook_calls import call_hook, plugin_words
from core.models import (
    PICK_SLIP_CARRIER,
    Allocation,
    CleanText,
    Location,
    Order,
    ShipmentLine,
    TrackingNumber,
    VisibleText,
    is_pick_slip,
)
from core.money import Money
from core.pick_slips import PICK_SLIP_SERVICE, pick_slip
from core.ports import LabelStore


class PaymentResult(BaseModel):
    """A payment plugin's answer. `reference` is the gateway's id for the operation (for an
    authorization: the id later captures, voids and refunds name). `message`, the gateway's words
    on a refusal, reaches the order's history, its events and the client's 502: controls and bidi
    overrides in it are made visible and it is cut to 500 characters, as a transient failure's
    words are (core.hook_calls.plugin_words; refusing it would lose what the gateway answered).
    `amount`, optional, is what the gateway says it authorized, captured or refunded: an approval
    of another amount or currency than the one asked is no approval of it (core.payments refuses
    it as the plugin's error); None means the amount asked."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    outcome: Literal["approved", "declined"]
    reference: str = Field(min_length=1, max_length=200)
    message: Annotated[str, AfterValidator(plugin_words)] = ""
    amount: Money | None = None


class SourcingPlan(BaseModel):
    """Where each line's units come from, and why (one sentence per choice, for the history).
    `reasons` reach the order's history, its events and a simulation's answer: controls and bidi
    overrides in them are made visible, and the core keeps at most 20 of at most 500 characters
    (core.sourcing.MAX_REASONS): refusing them would fail the sourcing of a paid order."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    allocations: list[Allocation]
    reasons: list[Annotated[str, VisibleText]] = Field(default_factory=empty_list)


class CarrierShipment(BaseModel):
    """A carrier plugin's answer for one shipment: its service, tracking number and label: the
    document itself (`label`, which the OMS stores and links to, signed at each read), or the
    address where the carrier hosts it (`label_url`, https; EasyPost's `postage_label.label_url`,
    Shippo's `label_url`), which the OMS shows as it is and stores no bytes for.

    `carrier`, `service` and `tracking_number` reach the order and the customer's shipped
    notification: one with a control character or a bidi override is refused, as a location's
    tracking number is, not mended (a replaced character would send the customer a wrong number)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    carrier: Annotated[str, Field(min_length=1, max_length=60), CleanText]
    service: Annotated[str, Field(min_length=1, max_length=60), CleanText]
    tracking_number: TrackingNumber
    label: bytes | None = Field(default=None, min_length=1, max_length=5_000_000)
    label_content_type: Literal["application/pdf", "image/png"] = "application/pdf"
    # An https URL is visible ASCII (RFC 3986 percent-encodes the rest): a control, bidi or invisible
    # character in the carrier's link is refused, as in a tracking number, not shown as it is.
    label_url: str | None = Field(default=None, max_length=2048, pattern=r"^https://[!-\x22$-.0->@-~]+[!-~]*$")

    @model_validator(mode="after")
    def _one_label(self) -> "CarrierShipment":
        if (self.label is None) == (self.label_url is None):
            raise ValueError("give the label document (label) or the carrier's link to it (label_url), one of them")
        return self


def book_parcel(
    hook: Any, order: Order, shipment_id: str, key: str, origin: Location, lines: list[ShipmentLine], weight: int
) -> CarrierShipment:
    """The carrier plugins' booking of one parcel (oms_carrier_create_shipment), asked under its
    booking `key` (core.ids.booking_key); for a pickup order, the OMS's own pick slip
    (core.pick_slips), for which no carrier plugin is asked: the parcel never travels."""
    if order.fulfillment.type == "pickup":
        slip = pick_slip(order, shipment_id, origin, lines, weight)
        return CarrierShipment(
            carrier=PICK_SLIP_CARRIER, service=PICK_SLIP_SERVICE, tracking_number=slip.code, label=slip.document
        )
    booked = call_hook(
        hook.oms_carrier_create_shipment,
        order=order, shipment_id=shipment_id, booking_key=key, origin=origin, lines=lines, weight_grams=weight,
    )  # fmt: skip
    if not isinstance(booked, CarrierShipment):
        raise PluginError(f"oms_carrier_create_shipment returned {type(booked).__name__}, expected CarrierShipment")
    if is_pick_slip(booked.carrier):
        # Read as a pick slip, such a booking would never be cancelled when its parcel is given up.
        raise PluginError(
            f"oms_carrier_create_shipment answered carrier {booked.carrier!r}, the name of the OMS's own pick slips:"
            " a carrier plugin names its carrier otherwise"
        )
    return booked


def stored_label(labels: LabelStore, booked: CarrierShipment, order_id: str, item_id: str) -> str:
    """What a shipment (`item_id` its booking key) or a return (its booking key) keeps of its label: the
    carrier's link when the carrier hosts it, else the key of the document put in the label store."""
    if booked.label_url is not None:
        return booked.label_url
    assert booked.label is not None  # one of the two, by CarrierShipment's validation
    return labels.put_label(order_id, item_id, booked.label, booked.label_content_type)


def _in_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00: no such moment in UTC, a malformed time
        raise ValueError("a time out of range once in UTC") from None


# A carrier's time: with its zone, kept and shown in UTC, as every time the API answers (API.md).
UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class TrackingUpdate(BaseModel):
    """One tracking event a carrier plugin read from its webhook: which shipment, what happened
    and when. `order_id` and `shipment_id` come from the booking's reference, which the carrier
    echoes (see core.tracking.shipment_reference). `description`, the carrier's words, reaches the
    webhook's answer: controls and bidi overrides in it are made visible (refusing it would have
    the carrier send the webhook again and again)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    order_id: str = Field(min_length=1, max_length=64)
    shipment_id: str = Field(min_length=1, max_length=64)
    status: Literal["in_transit", "delivered"]
    # Kept and shown in UTC, as every time the API answers (API.md): a carrier may write its
    # depot's local time, which becomes the shipment's delivered_at (or shipped_at).
    at: UtcTime
    description: Annotated[str, Field(max_length=500), VisibleText] = ""


class RefusedField(BaseModel):
    """What is wrong with a refused tracking event: the field of the webhook's body (as the
    carrier wrote it: "events[3].tracking_number") and why."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    field: Annotated[str, Field(min_length=1, max_length=200), VisibleText]
    message: Annotated[str, Field(min_length=1, max_length=500), VisibleText]


class RefusedTrackingEvent(BaseModel):
    """An event of a carrier's webhook its plugin will not read (a field missing, a time without
    a zone, a reference on no label of the OMS's, a tracking number not its shipment's): answered
    in its place of the plugin's list instead of a TrackingUpdate, it is refused alone (the
    webhook's answer lists it under `refused`, `validation_error`) while the others are applied,
    so the carrier's retry of a webhook with one bad event neither resends the good ones for ever
    nor drops them. `message` and `details` reach that answer: controls and bidi overrides in them
    are made visible."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    message: Annotated[str, Field(min_length=1, max_length=500), VisibleText]
    details: Annotated[list[RefusedField], Field(max_length=20)] = Field(default_factory=empty_list)

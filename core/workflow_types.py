"""What payment, sourcing and carrier plugins receive and return."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from core.models import Allocation


class PaymentResult(BaseModel):
    """A payment plugin's answer. `reference` is the gateway's id for the operation (for an
    authorization: the id later captures, voids and refunds name)."""

    model_config = ConfigDict(frozen=True)

    outcome: Literal["approved", "declined"]
    reference: str = Field(min_length=1, max_length=200)
    message: str = ""


class SourcingPlan(BaseModel):
    """Where each line's units come from, and why (one sentence per choice, for the history)."""

    model_config = ConfigDict(frozen=True)

    allocations: list[Allocation]
    reasons: list[str] = Field(default_factory=list)


class CarrierShipment(BaseModel):
    """A carrier plugin's answer for one shipment: its service, tracking number and label."""

    model_config = ConfigDict(frozen=True)

    carrier: str = Field(min_length=1, max_length=60)
    service: str = Field(min_length=1, max_length=60)
    tracking_number: str = Field(min_length=4, max_length=60)
    label: bytes = Field(min_length=1, max_length=5_000_000)
    label_content_type: Literal["application/pdf", "image/png"] = "application/pdf"


class TrackingUpdate(BaseModel):
    """One tracking event a carrier plugin read from its webhook: which shipment, what happened
    and when. `order_id` and `shipment_id` come from the booking's reference, which the carrier
    echoes (see core.tracking.shipment_reference)."""

    model_config = ConfigDict(frozen=True)

    order_id: str = Field(min_length=1, max_length=64)
    shipment_id: str = Field(min_length=1, max_length=64)
    status: Literal["in_transit", "delivered"]
    at: AwareDatetime
    description: str = Field(default="", max_length=500)

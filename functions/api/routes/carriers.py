"""Carriers: tracking webhooks, read by the carrier's plugin and applied to the shipments they name."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body

from core.access import Scope
from core.errors import Forbidden
from core.tracking import CarrierTracking, TrackingReport
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.paths import existing
from functions.api.routes.plugins import plugins_loaded
from functions.api.schemas import errors, ok

router = Router()

# Any name of up to 64 characters: a carrier no plugin answers for is 404, whatever it looks like,
# and so is a name longer than any carrier's (a length bound answered it 422, as if invalid).
CarrierPath = existing("carrier", r"^.{1,64}$", "The carrier's name, e.g. oms-flat-rate")
Webhook = Annotated[
    dict[str, Any] | list[Any],
    Body(description="The carrier's webhook body, as its plugin documents it (a JSON object or array)"),
]
# The caller's API key and cookies stay with the API; a plugin sees what the carrier sent.
WITHHELD_HEADERS = frozenset({"authorization", "cookie"})


@router.post(
    "/carriers/<carrier>/tracking",
    summary="A carrier's tracking webhook: delivered shipments are marked delivered",
    responses={
        **ok(200, TrackingReport, "What was done with each update"),
        **errors(400, 403, 404, 409, 413, 502, 503),
    },
    middlewares=[plugins_loaded],
)
@requires(Scope.FULFILLMENT_WRITE)
def carrier_tracking(carrier: CarrierPath, webhook: Webhook) -> TrackingReport:
    who = caller(router)
    if who.location_ids is not None:
        # A carrier's report names parcels of any location: a location's key is no carrier's.
        raise Forbidden("this API key acts at its own locations only: a carrier's tracking report is not a location's")
    event = router.current_event
    headers = {name.lower(): value for name, value in (event.headers or {}).items()}
    c = container()
    return CarrierTracking(c.plugins).apply(
        carrier,
        webhook,
        {name: value for name, value in headers.items() if name not in WITHHELD_HEADERS},
        event.decoded_body or "",
        deliver=lambda order_id, shipment_id, at: c.actions.deliver_scanned(
            order_id, shipment_id, actor=who.key_id, channel=who.channel, delivered_at=at
        ),
        find=lambda order_id, shipment_id: c.actions.parcel(order_id, shipment_id, channel=who.channel),
    )

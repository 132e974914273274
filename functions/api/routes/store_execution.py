"""Store and warehouse execution: a location rejects a shipment, a store readies a pickup."""

from __future__ import annotations

from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.models import Order, RejectRequest
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.routes.orders import OrderIdPath, ShipmentIdPath, changed, seen_by
from functions.api.routes.plugins import plugins_loaded
from functions.api.schemas import OrderReceipt, errors

router = Router()


@router.post(
    "/orders/<order_id>/shipments/<shipment_id>/reject",
    summary="A location cannot fulfil a pending shipment: the order is sourced again without it",
    description="The order goes back to `authorized` with nothing allocated and its pending shipments removed, the "
    "rejecting location is excluded for this order, the units it held are released, and the order "
    "workflow sources the order again: from another location, else it waits `backordered` (products that "
    "allow it) or ends `cancelled` with reason `out_of_stock`. The reason is in the history "
    "(`shipment_rejected`). Rejecting the same shipment again answers the order unchanged (but after a stock "
    "take's reject of it, a person's makes the exclusion stay, which the sku's restock there would lift: a "
    "`shipment_rejected` entry with `counted_out: true`), and so does "
    "rejecting one that another location's reject withdrew meanwhile (its location is excluded too), "
    "unless that location holds a parcel of the order sourced there since: 409 `invalid_transition`, "
    "`details` `[{shipment_id, location_id, withdrawn_by}]` naming the withdrawal, nothing changed "
    "(reject the parcel it holds instead). A held allocated order's shipment is rejected the same way, "
    "and the order stays `on_hold` until its release sends it to be sourced again. On a "
    "`partially_shipped` order only that parcel's units are sourced again, in the request (never at a "
    "location that has a parcel of the order): new pending parcels replace it, the order stays "
    "`partially_shipped`, and the units no location has are cancelled `out_of_stock` (`units_cancelled`),"
    " the payment settled to the new total as for a cancel of units (the order `shipped` when nothing is "
    "left to go). 409 once the shipment is not pending; 409 `parcel_not_confirmed` (`details` naming the "
    "shipment) while the order is held for a person to confirm whether one of its parcels left (its ship "
    "died after its capture), and while its carrier has scanned one of its pending parcels delivered "
    "(`delivery_scan_kept`: ship that one). A capture a ship of the order asked for and never recorded is"
    " refunded first: a gateway that keeps failing then answers 503, a payment plugin that fails 502 "
    "`payment_plugin_error`, and the shipment is not rejected (repeat it).",
    responses={
        **changed("The order, authorized again (or its parcel replaced)"),
        **errors(400, 403, 404, 409, 413, 502, 503),
    },
    middlewares=[plugins_loaded],
)
@requires(Scope.FULFILLMENT_WRITE)
def reject_shipment(order_id: OrderIdPath, shipment_id: ShipmentIdPath, request: RejectRequest) -> Order | OrderReceipt:
    who = caller(router)
    container().actions.refuse_parcel_elsewhere(order_id, shipment_id, who.channel, who.location_ids)
    rejected = container().actions.reject(order_id, shipment_id, request.reason, actor=who.key_id, channel=who.channel)
    return seen_by(who, rejected)


@router.post(
    "/orders/<order_id>/shipments/<shipment_id>/ready",
    summary="A store has picked a pickup: it waits ready_for_pickup until collected",
    description="Only a pickup order's pending shipment. The shipment shows `ready_at` and `collect_by` (after "
    "`OMS_PICKUP_EXPIRY_DAYS`, default 7; null when it is 0, which never expires a pickup); `POST .../deliver` "
    "records the collection and captures its share of the payment then. Uncollected by `collect_by`, the scheduled "
    "reconciler cancels it (`pickup_expired`) and its units go back, unless the order is on hold then (the time "
    "held does not count: its release moves `collect_by` later by it, to at least 24 hours after the release, and "
    "the customer is told again) or a collect of it asked for the capture and did not record it "
    "(collected again, it is; otherwise the order is held for a person once late). Readying it again, collected "
    "since or not, answers the order unchanged. A pickup a change withdrew from its order (its store rejected it, "
    "an edit) is 409 `invalid_transition`, `details` naming what withdrew it.",
    responses={**changed("The order"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.FULFILLMENT_WRITE)
def ready_for_pickup(order_id: OrderIdPath, shipment_id: ShipmentIdPath) -> Order | OrderReceipt:
    who = caller(router)
    container().actions.refuse_parcel_elsewhere(order_id, shipment_id, who.channel, who.location_ids)
    return seen_by(who, container().actions.ready(order_id, shipment_id, actor=who.key_id, channel=who.channel))

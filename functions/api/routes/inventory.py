"""Inventory: stock counts and adjustments per sku and location."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope, allows, refuse_elsewhere
from core.models import InventorySummary, StockAdjustment, StockCount, StockLevel
from core.services import MAX_COUNT_REJECTS
from functions.api.access import ANY_KEY, caller, requires
from functions.api.dependencies import container
from functions.api.routes.catalog import KnownLocationPath, KnownSkuPath
from functions.api.routes.orders import IdempotencyKey
from functions.api.schemas import errors, ok

router = Router()


# A reorder point names the vendor a location buys from and the unit cost it pays: purchasing's,
# which GET /purchase-orders and GET /vendors keep behind purchasing:write. Stock reads take any
# key (a storefront's) and a stock take or adjustment inventory:write: they show it only to a key
# that may set it, and null (as where none is set) to the others.
def _may_see_reorder() -> bool:
    return allows(caller(router), Scope.PURCHASING_WRITE)


def _level_shown(level: StockLevel) -> StockLevel:
    return level if level.reorder is None or _may_see_reorder() else level.model_copy(update={"reorder": None})


@router.put(
    "/inventory/<sku>/<location_id>",
    summary="Set the counted units on hand (a stock take)",
    description="A count below the units reserved there (held by orders not yet shipped) is recorded, and the "
    "units backordered orders hold there (on hold or not: a held one stays held), then the pending shipments at "
    "that location holding the sku, newest order first within each, are sent elsewhere until what stays reserved "
    "fits the count (a backordered order: `sourced_again`, reason `stock_count`; then as a reject): each order "
    "goes back to be sourced without that location (one waiting `backordered` may take it again once the sku is "
    "restocked there; from another one, else "
    "`backordered` or `cancelled` `out_of_stock`, as for `POST /orders/{id}/shipments/{shipment_id}/reject`; of a "
    "`partially_shipped` order only that parcel, as its reject), its "
    "history saying why (`shipment_rejected`, reason `stock_count`, the key as actor). The released units are "
    "never reserved by another order first. The same count sent again changes nothing, and finishes one whose "
    "answer was lost. 409 `insufficient_stock`, recording nothing, when even rejecting every such shipment would "
    "leave more reserved than counted (units held by ready pickups, or by orders on hold, but those held while "
    f"backordered, or not allocated there yet), or when it would send more than {MAX_COUNT_REJECTS} orders "
    "elsewhere (count in steps). A key bound to a channel sends no order elsewhere: its count below the units "
    "reserved is that 409 (but the count recorded already, sent again). With an Idempotency-Key a count retried "
    "is answered as the first was for 24 h, nothing written again (another body with that key is 409), also when "
    "the first's answer was lost after its count was written (answered the stock as stored; the reconciler "
    "finishes any rejects it owes); without one, a count sent again is recorded as counted when it came.",
    responses={**ok(200, StockLevel, "The stock record"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.INVENTORY_WRITE)
def set_stock(
    sku: KnownSkuPath, location_id: KnownLocationPath, count: StockCount, idempotency_key: IdempotencyKey = None
) -> StockLevel:
    who = caller(router)
    refuse_elsewhere(who.location_ids, location_id)
    if idempotency_key is None:  # a count sent again is a count made again, at its own time
        return _level_shown(container().inventory.count(sku, location_id, count.on_hand, who.key_id, who.channel))

    # The count's own key, recorded in the same write as the count (as an adjustment's): a retry
    # whose first attempt was written but whose answer (and idempotency record) was lost writes nothing.
    key = f"api:{who.key_id}:{idempotency_key}"

    def counted() -> dict[str, Any]:
        level = container().inventory.count(sku, location_id, count.on_hand, who.key_id, who.channel, key)
        return level.model_dump(mode="json")

    from functions.api.idempotency import once

    # Answered from the key's record, a retry writes nothing: counted again, its later counted_at
    # would take a parcel handed over since the first for counted without its units.
    route = f"PUT /inventory/{quote(sku, safe=':')}/{quote(location_id, safe=':')}"
    body = once(route, who.key_id, idempotency_key, count.model_dump(mode="json"), counted, router.lambda_context)
    return _level_shown(StockLevel.model_validate(body))


@router.post(
    "/inventory/<sku>/<location_id>/adjustments",
    summary="Adjust units on hand (receipt, damage, correction)",
    description="An adjustment retried with the same Idempotency-Key is counted once (another body with that key "
    "is 409). One that would take on_hand below the reserved units is 409 `insufficient_stock`, past "
    "1,000,000,000 (the most a stock take counts) 409 `stock_limit_reached`.",
    responses={**ok(200, StockLevel, "The stock record"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.INVENTORY_WRITE)
def adjust_stock(
    sku: KnownSkuPath,
    location_id: KnownLocationPath,
    adjustment: StockAdjustment,
    idempotency_key: IdempotencyKey = None,
) -> StockLevel:
    who = caller(router)
    refuse_elsewhere(who.location_ids, location_id)
    if idempotency_key is None:
        return _level_shown(container().inventory.adjust(sku, location_id, adjustment.delta, adjustment.reason))
    # The adjustment's own key, recorded in the same write as the count: a retry whose first
    # attempt was written but whose answer (and idempotency record) was lost counts nothing twice.
    key = f"api:{who.key_id}:{idempotency_key}"

    def adjust() -> dict[str, Any]:
        level = container().inventory.adjust(sku, location_id, adjustment.delta, adjustment.reason, key)
        return level.model_dump(mode="json")

    from functions.api.idempotency import once

    # Ids may hold "/": written as the path writes it (%2F), sku S/B at L and sku S at B/L are two
    # routes. Every other character an id may hold is left as it is, so keys stored before read the same.
    route = f"POST /inventory/{quote(sku, safe=':')}/{quote(location_id, safe=':')}/adjustments"
    body = once(route, who.key_id, idempotency_key, adjustment.model_dump(mode="json"), adjust, router.lambda_context)
    return _level_shown(StockLevel.model_validate(body))


@router.get(
    "/inventory/<sku>",
    summary="Stock of a sku across locations",
    responses={**ok(200, InventorySummary, "Stock by location"), **errors(403, 404)},
)
@requires(ANY_KEY)
def get_stock(sku: KnownSkuPath) -> InventorySummary:
    summary = container().inventory.summary(sku)
    if _may_see_reorder() or all(location.reorder is None for location in summary.locations):
        return summary
    hidden = [location.model_copy(update={"reorder": None}) for location in summary.locations]
    return summary.model_copy(update={"locations": hidden})

"""Purchasing: vendors, purchase orders and receiving them into stock (issue 15)."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from core.access import Scope, refuse_elsewhere
from core.ids import new_id, purchase_order_id_for
from core.purchasing import (
    NewPurchaseOrder,
    PurchaseOrder,
    PurchaseOrderFilter,
    PurchaseOrderPage,
    Receipt,
    Submission,
    Vendor,
    VendorPage,
    VendorRequest,
)
from core.reorder import ReorderPoint, ReorderRequest
from core.status import PurchaseOrderStatus
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.pages import page_that_fits
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.routes.catalog import IDENTIFIER, KnownLocationPath, KnownSkuPath
from functions.api.routes.orders import IdempotencyKey
from functions.api.schemas import errors, ok
from functions.api.versions import if_match_header, seen_version

router = Router()

VendorPath = Annotated[str, Path(pattern=IDENTIFIER, description="Vendor id")]
PurchaseOrderIdPath = existing("purchase order", r"^po_[a-z2-7]{24}$", "Purchase order id")
VendorFilter = Annotated[str | None, Query(pattern=IDENTIFIER)]


@router.put(
    "/vendors/<vendor_id>",
    summary="Create or replace a vendor",
    responses={**ok(200, Vendor, "Replaced"), **ok(201, Vendor, "Created"), **errors(400, 403, 413)},
)
@requires(Scope.PURCHASING_WRITE)
def put_vendor(vendor_id: VendorPath, request: VendorRequest) -> Response[Vendor]:
    vendor, created = container().purchasing.put_vendor(vendor_id, request)
    return Response(201 if created else 200, content_types.APPLICATION_JSON, vendor)


@router.get(
    "/vendors",
    summary="List vendors, in id order",
    responses={**ok(200, VendorPage, "A page of vendors"), **errors(403)},
)
@requires(Scope.PURCHASING_WRITE)
def list_vendors(limit: Limit = 25, cursor: Cursor = None) -> VendorPage:
    items, next_cursor = container().purchasing.vendors(limit, cursor)
    return VendorPage(items=items, next_cursor=next_cursor)


@router.post(
    "/purchase-orders",
    summary="Create a purchase order, open at once: its units are incoming stock until received",
    description="Without `expected_at` the goods are expected the vendor's `lead_time_days` from now. Its units "
    "count as `incoming` at its location until they are received or it is cancelled. A create retried with the "
    "same Idempotency-Key answers the PO the first one made (another body with that key is 409). A PO whose "
    "lines would cost 10^15 of its currency or more (quantity × unit_cost, summed) is 422 `amount_too_large`.",
    responses={**ok(201, PurchaseOrder, "The open purchase order"), **errors(400, 403, 409, 413)},
)
@requires(Scope.PURCHASING_WRITE)
def create_purchase_order(request: NewPurchaseOrder, idempotency_key: IdempotencyKey = None) -> Response[PurchaseOrder]:
    who = caller(router)
    refuse_elsewhere(who.location_ids, request.location_id)
    if idempotency_key is None:
        return Response(201, content_types.APPLICATION_JSON, container().purchasing.create(request))
    # The PO's id comes from the key: a retry whose first attempt was written but whose answer
    # (and idempotency record) was lost finds that PO instead of opening a second one.
    po_id = purchase_order_id_for(who.key_id, idempotency_key)

    def create() -> dict[str, Any]:
        return container().purchasing.create(request, po_id).model_dump(mode="json")

    from functions.api.idempotency import once

    body = once("POST /purchase-orders", who.key_id, idempotency_key, request.model_dump(mode="json"), create,
                router.lambda_context)  # fmt: skip
    return Response(201, content_types.APPLICATION_JSON, PurchaseOrder.model_validate(body))


@router.get(
    "/purchase-orders",
    summary="List purchase orders, in id order, by status and vendor",
    description="Filtered, a page may hold fewer than `limit` POs (each page reads up to 1,000 of them), as may a "
    "page of POs listing many receipts (it stops short of Lambda's 6 MB response): follow `next_cursor` until it is "
    "null.",
    responses={**ok(200, PurchaseOrderPage, "A page of purchase orders"), **errors(403)},
)
@requires(Scope.PURCHASING_WRITE)
def list_purchase_orders(
    status: PurchaseOrderStatus | None = None, vendor_id: VendorFilter = None, limit: Limit = 25, cursor: Cursor = None
) -> Response[str]:
    where = PurchaseOrderFilter(status=status, vendor_id=vendor_id)

    def read(size: int) -> tuple[list[PurchaseOrder], str | None]:
        return container().purchasing.list(where, size, cursor)

    # A PO lists its receipts (up to 256 KiB of them kept, more once shown): a page of such POs
    # would pass Lambda's 6 MB response, so the page is cut to what fits, its cursor after the last.
    return page_that_fits(read, limit, PurchaseOrderPage)


@router.get(
    "/purchase-orders/<po_id>",
    summary="Get a purchase order",
    responses={**ok(200, PurchaseOrder, "The purchase order"), **errors(403, 404)},
)
@requires(Scope.PURCHASING_WRITE)
def get_purchase_order(po_id: PurchaseOrderIdPath) -> PurchaseOrder:
    return container().purchasing.get(po_id)


def _refuse_purchase_order_elsewhere(po_id: str) -> None:
    """A key bound to locations changes only the purchase orders of its own (403 otherwise): what
    is bought, cancelled or received there is that location's stock. A PO's location never changes."""
    location_ids = caller(router).location_ids
    if location_ids is not None:
        refuse_elsewhere(location_ids, container().purchasing.get(po_id).location_id)


# Optional (the contract names none): a draft waits for a person while crossings grow it, so a submit
# made from the version its submitter read never opens units they have not seen.
SubmitIfMatch = Annotated[
    str, if_match_header("The draft's `version` you read: a draft changed since is 409 `version_conflict`.")
]


@router.post(
    "/purchase-orders/<po_id>/submit",
    summary="Submit a draft to its vendor (draft -> open): its units become incoming stock",
    description="The body is optional: `{lines: [{sku, unit_cost}]}` prices the draft's lines (a draft made by a "
    "reorder point without a `unit_cost` has unpriced lines). A line left without a cost is 422 "
    "`unpriced_lines`, and costs in more than one currency are 422 `mixed_currencies`; either way nothing "
    "changes, as when its costs would reach 10^15 (422 `amount_too_large`). The goods are then due the vendor's "
    "`lead_time_days` from now, and `submitted_at` says when it was sent. A draft submitted already (open, or "
    "received since) is answered as it is, nothing changed, when the body's costs are its own (a submit sent "
    "again); one that would price it otherwise, a cancelled PO, and a PO created open (never a draft: it has no "
    "`submitted_at`) are 409 `invalid_transition`. With `If-Match` (optional) naming the version read, a draft "
    "changed since (a reorder point's crossing grew it) is 409 `version_conflict` and stays a draft.",
    responses={**ok(200, PurchaseOrder, "The open purchase order"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.PURCHASING_WRITE)
def submit_purchase_order(
    po_id: PurchaseOrderIdPath, submission: Submission | None = None, if_match: SubmitIfMatch = None
) -> PurchaseOrder:
    expected = seen_version(if_match)
    _refuse_purchase_order_elsewhere(po_id)
    return container().purchasing.submit(po_id, submission, expected_version=expected)


# Optional: an open PO is withdrawn from its vendor by a person who saw it as it is.
CancelIfMatch = Annotated[
    str, if_match_header("The PO's `version` you read: a PO changed since is 409 `version_conflict`.")
]


@router.post(
    "/purchase-orders/<po_id>/cancel",
    summary="Cancel a purchase order that is not fully received: what has not arrived is no longer incoming",
    description="A fully received PO is 409 `invalid_transition`. A cancelled one is answered as it is, nothing "
    "changed (a cancel sent again). With `If-Match` (optional) naming the version read, a PO changed since "
    "(submitted, received into, cancelled) is 409 `version_conflict`, nothing written.",
    responses={**ok(200, PurchaseOrder, "The cancelled purchase order"), **errors(400, 403, 404, 409)},
)
@requires(Scope.PURCHASING_WRITE)
def cancel_purchase_order(po_id: PurchaseOrderIdPath, if_match: CancelIfMatch = None) -> PurchaseOrder:
    expected = seen_version(if_match)
    _refuse_purchase_order_elsewhere(po_id)
    return container().purchasing.cancel(po_id, expected_version=expected)


@router.post(
    "/purchase-orders/<po_id>/receive",
    summary="Receive units of an open purchase order into stock at its location",
    description="One transaction adds the units to on hand (and available) at the PO's location, lowers its "
    "incoming, and records the received quantities; the rise of available then allocates waiting backorders. "
    "More than ordered minus received is 422 `over_receipt`, and nothing is counted; units that would take on hand "
    "past 1,000,000,000 (the most a stock take counts) are 409 `stock_limit_reached`, naming the receipt's lines of "
    "that sku, and nothing is counted. A receipt sent again with "
    "the same Idempotency-Key, however late, is counted once: the same body answers the purchase order as that "
    "receipt left it, another body is 409 `idempotency_key_reused`. A purchase order keeps a few thousand "
    "receipts (256 KiB of them): past that a receipt is 409 `too_many_receipts`. Extension: the answer lists the "
    "receipt last of the PO's `receipts`, with its `received_at`, and `updated_at` is that time.",
    responses={**ok(200, PurchaseOrder, "The purchase order after the receipt"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.PURCHASING_WRITE)
def receive_purchase_order(
    po_id: PurchaseOrderIdPath, request: Receipt, idempotency_key: IdempotencyKey = None
) -> PurchaseOrder:
    who = caller(router)
    _refuse_purchase_order_elsewhere(po_id)
    # The receipt's own key, derived from the client's and kept on the PO: a retry whose first
    # attempt was written but whose answer was lost, or one sent after the idempotency record
    # expired, finds it there and counts nothing twice.
    receipt_key = f"api:{who.key_id}:{idempotency_key}" if idempotency_key else new_id("rcp")

    def receive() -> dict[str, Any]:
        return container().purchasing.receive(po_id, request, receipt_key).model_dump(mode="json")

    if idempotency_key is None:
        body = receive()
    else:
        from functions.api.idempotency import once

        body = once(f"POST /purchase-orders/{po_id}/receive", who.key_id, idempotency_key,
                    request.model_dump(mode="json"), receive, router.lambda_context)  # fmt: skip
    return PurchaseOrder.model_validate(body)


# --- Reorder points (issue 15 item 3) ---------------------------------------------------------------
# purchasing:write rather than inventory:write: a reorder point commits money (it makes purchase
# orders for a vendor), which is what purchasing:write grants; inventory:write only counts stock.


@router.put(
    "/inventory/<sku>/<location_id>/reorder",
    summary="Set the reorder point of a sku at a location",
    description="When `available` drops from at or above `reorder_point` to below it, `inventory.low` is emitted. "
    "When `available` plus `incoming` (open purchase order units not yet received) does, `reorder_quantity` is "
    "added to the draft purchase order for `vendor_id` and this location (one is made when none is open), once "
    "per crossing: units already on order are not bought again. Extension: an optional `unit_cost` prices the "
    "draft's line (`reorder_quantity` × `unit_cost` reaching 10^15 is 422 `amount_too_large`: no such draft could "
    "be submitted). Setting the point alone crosses nothing, even when stock is already below it, except raising "
    "it above stock that was at or above the point before: that is a crossing.",
    responses={**ok(200, ReorderPoint, "The reorder point"), **errors(400, 403, 404, 413)},
)
@requires(Scope.PURCHASING_WRITE)
def set_reorder_point(sku: KnownSkuPath, location_id: KnownLocationPath, request: ReorderRequest) -> ReorderPoint:
    refuse_elsewhere(caller(router).location_ids, location_id)
    return container().replenishment.set_point(sku, location_id, request)


@router.delete(
    "/inventory/<sku>/<location_id>/reorder",
    summary="Remove the reorder point of a sku at a location (no more drafts are made for it)",
    responses={204: {"description": "Removed (or there was none)"}, **errors(403, 404)},
)
@requires(Scope.PURCHASING_WRITE)
# No return annotation: powertools would try to build a response schema from a bare Response.
def clear_reorder_point(sku: KnownSkuPath, location_id: KnownLocationPath):
    refuse_elsewhere(caller(router).location_ids, location_id)
    container().replenishment.clear_point(sku, location_id)
    return Response(204, content_types.APPLICATION_JSON, "")

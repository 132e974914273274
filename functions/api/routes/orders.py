"""Orders: capture, read, list and history."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Query

from core.access import Caller, Scope, allows, refuse_elsewhere
from core.errors import DuplicateOrder
from core.ids import order_id_for_request, order_request_key, short_hash
from core.models import IDENTIFIER_PATTERN, CancelRequest, HistoryPage, Order, OrderEdit, PlaceOrder, ShipRequest
from core.ports import OrderFilter
from core.shown_references import history_shown
from core.status import OrderStatus
from functions.api.access import caller, requires
from functions.api.app import logger
from functions.api.dependencies import container
from functions.api.errors import ApiError
from functions.api.label_links import with_label_links
from functions.api.pages import page_that_fits
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.routes.plugins import plugins_loaded
from functions.api.schemas import OrderPage, OrderReceipt, errors, ok
from functions.api.versions import if_match_header, seen_version, version_in

router = Router()
# `logger` is the app's, not a child made here: this module is imported on its first request, when
# POWERTOOLS_SERVICE_NAME (by which a child finds its parent) may have changed in a process
# hosting other functions too (tests, the local runtime): an orphaned child cannot append keys.


def shown(order: Order) -> Order:
    """The order as a reader sees it: a fresh link per label, and on a backordered order what it
    waits for and when more is expected (`awaiting_stock`, computed now, never stored)."""
    return with_label_links(container().expected_arrivals.shown([order])[0])


def seen_by(who: Caller, order: Order) -> Order | OrderReceipt:
    """The order as `who` may see it after changing it. A key that may not read orders learns that
    its change was made, not the order (customer, address, payment): otherwise repeating a cancel
    or an edit would read any order of its channel. POST /orders alone answers such a key with
    the whole order, the one it has just placed."""
    if allows(who, Scope.ORDERS_READ):
        return shown(order)
    return OrderReceipt(id=order.id, status=order.status, version=order.version)


def changed(description: str) -> dict[int, dict[str, Any]]:
    """The 200 answer of a change to an order: the order, or a receipt for a key without orders:read."""
    return ok(
        200,
        Order | OrderReceipt,
        f"{description}; a key without `orders:read` gets an OrderReceipt `{{id, status, version}}` instead",
    )


OrderIdPath = existing("order", r"^ord_[a-z2-7]{24}$", "Order id")
# Optional headers are typed str with a None default (never `str | None`): a header is text or is
# not sent, and a schema allowing null had clients (schemathesis) send the text "null".
IdempotencyKey = Annotated[
    str,
    Header(
        alias="idempotency-key",
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Retry-safe key: the same key and body return the first response for 24 h.",
    ),
]


@router.post(
    "/orders",
    summary="Place an order",
    responses={**ok(201, Order, "The order, pending"), **errors(400, 403, 409, 413, 502, 503)},
    middlewares=[plugins_loaded],
)
@requires(Scope.ORDERS_WRITE)
def place_order(order: PlaceOrder, idempotency_key: IdempotencyKey = None) -> Response[Order]:
    who = caller(router)
    if who.channel is not None and order.channel != who.channel:
        raise ApiError(403, "forbidden", f"this API key places orders for channel {who.channel} only")

    request_id = (router.current_event.get("requestContext") or {}).get("requestId")
    placed_here: list[Order] = []
    payload = order.model_dump(mode="json") if idempotency_key is not None else None
    # Without an external id, the id comes from the request (key, Idempotency-Key and body): a retry
    # whose first attempt was written but whose answer (and idempotency record) was lost finds that
    # order, as the same key and body find the first answer, instead of placing a second one.
    # With one, the order's id comes from its channel and external id, taken by whatever placed it
    # first: its created entry keeps this request (`request_key` beside `request_hash`, never shown),
    # by which such a retry tells its own order from another request's (409 duplicate_order). Only
    # then: the order item is written ~7 times an order and billed per started KB, and an id from the
    # request says it already. An entry written before kept a hash of the key and body ("api:" and 24
    # characters, `earlier_key`): a retry of such a request is still recognised (needed for 24 h after
    # the deploy that shortened it: the key is honoured no longer).
    order_id = request_key = earlier_key = None
    if idempotency_key is not None:
        request = json.dumps(payload, sort_keys=True)
        if order.external_id is None:
            order_id = order_id_for_request(who.key_id, idempotency_key, request)
        else:
            request_key = order_request_key(who.key_id, idempotency_key)
            earlier_key = "api:" + short_hash(f"{who.key_id}:{idempotency_key}#{request}")

    def place(order_id: str | None = order_id) -> Order:
        placed = container().capture.place(
            order, actor=who.key_id, request_id=request_id, order_id=order_id, request_key=request_key
        )
        placed_here.append(placed)
        # The first line of an order's trail: its id beside the request id (`correlation_id`).
        logger.append_keys(order_id=placed.id)
        logger.info("order placed")
        return placed

    logger.append_keys(channel=order.channel)

    if idempotency_key is None:
        # The order as placed, never dumped: only the idempotency record needs its JSON.
        answer = place()
    else:
        from functions.api.idempotency import TTL_SECONDS, once

        def place_once() -> dict[str, Any]:
            try:
                return place().model_dump(mode="json")
            except DuplicateOrder as duplicate:
                # That attempt's order (read consistently: its write may be a moment old), whatever
                # placing it again would say now (CaptureService.place). With an external id, only
                # if this request placed it: another's (or this key's with another body) stays 409.
                if order_id is None:
                    assert request_key is not None
                    first = container().capture.placed_under(duplicate.order_id, request_key, order, earlier_key)
                else:
                    first = container().order_repository.get(order_id, consistent=True)
                if first is None:
                    raise
                if first.created_at <= container().clock() - timedelta(seconds=TTL_SECONDS):
                    # The key is honoured for 24 h: placed before that, it is an earlier order, and
                    # this one is new (its id random, as without a key); with an external id, a
                    # second order of it (409), as without a key.
                    if order_id is None:
                        raise
                    return place(None).model_dump(mode="json")
                return first.model_dump(mode="json")

        body = once("POST /orders", who.key_id, idempotency_key, payload, place_once, router.lambda_context)
        # The order placed by this request as it is; only a replayed answer is read back from its
        # JSON (validating a whole order again was about 6 % of the API's own CPU per order).
        answer = placed_here[0] if placed_here else Order.model_validate(body)
    return Response(201, content_types.APPLICATION_JSON, with_label_links(answer))


@router.get(
    "/orders/<order_id>",
    summary="Get an order",
    responses={**ok(200, Order, "The order"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def get_order(order_id: OrderIdPath) -> Order:
    return shown(container().orders.get(order_id, caller(router).channel))


@router.get(
    "/orders",
    summary="List orders, newest first",
    description="Filtered by `customer_id`, `status`, `channel`, `jeopardy` and `pickup_location_id`, each "
    "narrowing the others. Filtered, a page may hold fewer than `limit` orders, even none, while more follow (a "
    "`status` or `jeopardy` is judged on the orders a page read: a store's first page of `status=allocated` may "
    "have read only newer pickups held or backordered): follow `next_cursor` until it is null. "
    "`pickup_location_id` is a store's pickup list, what its counter works through: the "
    "pickup orders (`fulfillment.type` pickup) to be collected there, from when each is placed until it is "
    "collected (`delivered`) or ends (`cancelled`, `payment_failed`), so in `pending`, `authorized`, "
    "`backordered`, `on_hold` or `allocated`; each order's status and its shipments say what waits (to pick: a "
    "`pending` shipment; on the shelf: `ready_for_pickup`). A location the network does not have is 422 "
    "`unknown_location` (never an empty page a mistyped store would read as no work), and so is a `status` the "
    "list never holds (422 `validation_error` naming `status`). "
    "`external_id` finds the one order its customer was given that number for (by the storefront, the OMS's "
    "notices, a pickup's slip): `items` holds that order, or none, and `next_cursor` is null. A number names an "
    "order only with its channel: a channel-bound key's own, otherwise `channel`; neither is 422 naming "
    "`external_id`. It takes what POST /orders takes as an `external_id` (another value is 422, never an empty "
    "page), the other filters still apply to the order found, and a `cursor` with it is 422 (nothing to page). "
    "Read as GET /orders/{id} reads, with one read of the order and no index.",
    responses={**ok(200, OrderPage, "A page of orders"), **errors(403)},
)
@requires(Scope.ORDERS_READ)
def list_orders(
    # Not empty: an empty id named no customer, and read as no filter it listed everyone's orders.
    # Nor one no customer id can be (sent twice, the gateway joins the values with a comma): 422,
    # not a page read as "no orders".
    customer_id: Annotated[str | None, Query(pattern=IDENTIFIER_PATTERN)] = None,
    status: Annotated[OrderStatus | None, Query()] = None,
    channel: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")] = None,
    limit: Limit = 25,
    cursor: Cursor = None,
    jeopardy: Annotated[
        Literal["true"] | None,
        Query(description="`true`: only orders past the deadline of their current status (OMS_SLA)"),
    ] = None,
    pickup_location_id: Annotated[
        str | None,
        Query(
            pattern=IDENTIFIER_PATTERN,
            description="A store's pickup list: its pickup orders still to be collected there, newest placed first",
        ),
    ] = None,
    # POST /orders' own rule: a number it would refuse names no order, and is 422, not an empty page.
    external_id: Annotated[
        str | None,
        Query(
            pattern=IDENTIFIER_PATTERN,
            description="The order's number on its channel (its `external_id`); needs a channel, takes no `cursor`",
        ),
    ] = None,
) -> Response[str]:
    who = caller(router)
    if who.channel is not None:
        # A channel-bound key lists its own channel only; asking for another is 403, as for its
        # reports: an empty page read as "that channel has no orders".
        if channel not in (None, who.channel):
            raise ApiError(403, "forbidden", f"this API key lists channel {who.channel}'s orders only")
        channel = who.channel
    if pickup_location_id is not None:
        # A store's pickup list is its counter's work: a key bound to locations reads its own stores'.
        refuse_elsewhere(who.location_ids, pickup_location_id)
    if external_id is not None:
        if channel is None:
            # Two storefronts may each have a web-1001: the number alone names no order.
            raise ApiError(
                422,
                "validation_error",
                "the request is not valid",
                [
                    {
                        "field": "external_id",
                        "message": "an external_id names an order only with its channel: send channel",
                    }
                ],
            )
        if cursor is not None:
            raise ApiError(
                422,
                "validation_error",
                "the request is not valid",
                [{"field": "cursor", "message": "an external_id names one order: there is no page to follow"}],
            )
    where = OrderFilter(
        customer_id=customer_id, status=status, channel=channel, jeopardy=jeopardy == "true",
        pickup_location_id=pickup_location_id,
    )  # fmt: skip

    def read(size: int) -> tuple[list[Order], str | None]:
        if external_id is None:
            items, next_cursor = container().orders.list(where, size, cursor)
        else:
            found = container().orders.by_external_id(where, external_id)
            items, next_cursor = ([] if found is None else [found]), None
        # One batched stock read for the page's backordered orders, none when the page has none.
        return [with_label_links(order) for order in container().expected_arrivals.shown(items)], next_cursor

    # A page of the largest orders (~560 KB of JSON each) would pass Lambda's 6 MB response at 11.
    return page_that_fits(read, limit, OrderPage)


@router.get(
    "/orders/<order_id>/history",
    summary="An order's history, oldest first",
    description="Paged as every list: `limit` entries (default 25) and the `next_cursor` of the rest, null on the "
    "last page; follow it until it is null to read the whole history. A cursor names a place in this order's "
    "history, which only grows: one issued for another order or list is 422 `invalid_cursor`.",
    responses={**ok(200, HistoryPage, "A page of the changes, each with its actor"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def get_history(
    order_id: OrderIdPath,
    limit: Limit = 25,
    cursor: Cursor = None,
) -> HistoryPage:
    items, next_cursor = container().orders.history_page(order_id, caller(router).channel, limit, cursor)
    return HistoryPage(items=history_shown(items), next_cursor=next_cursor)


ShipmentIdPath = existing("shipment", r"^shp_[a-z2-7]{24}$", "Shipment id")
# Required: without it the answer is 428 if_match_required (errors.py), never an edit made blind.
IfMatch = Annotated[str, if_match_header("The order's `version` you read.")]
# Optional: without it a cancel, a hold or a release is decided on the order as it is (Order.check_seen).
SeenIfMatch = Annotated[
    str, if_match_header("The order's `version` you read: an order changed since is 409 `version_conflict`.")
]


@router.patch(
    "/orders/<order_id>",
    summary="Edit lines, address or shipping method until the first shipment ships",
    description="An authorized, allocated or backordered order whose total grows is authorized again for the new "
    "total first: a declined re-authorization is 409 `payment_declined`, a gateway that keeps failing 503, an order "
    "that has 10 authorizations edits replaced and the gateway has not voided yet 409 `too_many_authorizations` "
    "(nothing asked), a payment "
    "plugin that fails (raises, or answers what the OMS cannot take) 502 `payment_plugin_error`; each way the order "
    "is unchanged and the failed attempts are in its history (one the gateway may have approved all the same is "
    "voided by the order's next change, its cancel, or the reconciler). An allocated or backordered order goes "
    "back to `authorized` with nothing allocated and its pending shipments removed (a pickup `ready_for_pickup` "
    "too: it has not shipped, and its store picks the new parcel), and the order workflow sources it again; but "
    "a pickup order's address edited alone sends nothing back: its parcel is its lines at its store, which stay "
    "as they are, pending or ready. "
    "A held allocated or backordered order is edited the same way and stays on hold; released, it is sourced "
    "again. Review rules look at the edited order as at capture: one "
    "they ask to review that they did not ask for as it was (`OMS_REVIEW_THRESHOLD` crossed) is answered `on_hold` "
    "(reason in `hold`, actor `review_rules` in the history) and waits for its release; one a person holds already "
    "takes the rule's reason and note in its `hold`. Once a shipment has "
    "shipped (or a pickup was collected) 409. An order held for a person to confirm whether a parcel left (its ship "
    "died after its capture) is 409 `parcel_not_confirmed`, `details` naming the shipment, until its hold is "
    "released. So is an order one of whose pending parcels its carrier scanned delivered before its location confirmed "
    "the ship (`delivery_scan_kept`): the location's ship records it delivered. Totals are priced exactly as "
    "capture prices the edited order (a promo code's minimum no longer reached drops its discount). `lines` replace "
    "the order's lines whole, each under a new `line_id` after every one the order has had: an id never names "
    "other goods, so a cancel naming one from before the edit is 422 (`no line L1`). The lines an edit replaces "
    "stay on the order until it is sourced: while it is `pending` or held, an edit of its lines that would keep more "
    "than 64 KiB of them (20 edits of 100 lines) is 409 `too_many_edits`, nothing written or asked of the gateway "
    "(its address and method can still be edited; its lines once it is sourced, a held one released). An allocated or "
    "backordered order that owes its carrier 50 cancels of bookings its changes gave up (the carrier's cancel down) "
    "is 409 `too_many_bookings_to_cancel`, nothing written, until the carrier takes them (not for a pickup's "
    "address edited alone, which sends nothing back). An edit whose "
    "lines (in any order), address and method are those the order has is 200 with the order as it is, nothing "
    "written (a stale `If-Match` is still 409); one that sends no lines, or the order's in any order, keeps "
    "their ids.",
    responses={**changed("The order, priced again"), **errors(400, 403, 404, 409, 413, 428, 502, 503)},
    middlewares=[plugins_loaded],
)
@requires(Scope.ORDERS_WRITE)
def edit_order(order_id: OrderIdPath, edit: OrderEdit, if_match: IfMatch) -> Order | OrderReceipt:
    who = caller(router)
    version = version_in(if_match)
    return seen_by(who, container().actions.edit(order_id, version, edit, actor=who.key_id, channel=who.channel))


@router.post(
    "/orders/<order_id>/cancel",
    summary="Cancel an order that has not shipped, what has not shipped of it, or chosen units",
    description="Before anything shipped (without `lines`, or with `lines` naming every unit) the cancel is "
    "recorded, every line's `quantity` dropping to 0 (its `cancelled_quantity` grows by it) and the totals to zero "
    "(the `cancelled` history entry keeps the old and new grand total), its `allocations` emptied and its "
    "shipments `cancelled` (with no `label_url`), its reservations released, then its authorization voided. A "
    "void the gateway refuses or cannot do now, or its payment plugin failed in (kind `plugin_error`), still "
    "answers 200: the order is "
    "`cancelled`, its `payment.status` stays `authorized` and the history has a `payment_void_failed` entry per "
    "attempt. Cancelling again retries the void; one the gateway could not do now, or the plugin failed in, is also "
    "retried by the scheduled reconciler, which records it `voided`.\n\nOn a `partially_shipped` order it cancels "
    "every unit not "
    "shipped, and with `lines` the chosen units of a pending, authorized, allocated (held or not), partly shipped or "
    "backordered order, held or not (a pending or authorized one keeps its status, and one not authorized yet is "
    "authorized for the new total; a backordered one goes back to `authorized` to be sourced again, as after an edit, "
    "and a held one stays on hold, what it no longer needs given back at once, until its release sends it there): "
    "each line's `quantity` drops and its `cancelled_quantity` grows, totals are priced again as for an edit, the "
    "shipments not yet left (pending, or a pickup `ready_for_pickup` at its store) and their reservations shrink "
    "(one emptied stays on the order `cancelled`, with no `label_url`, as a whole cancel leaves it), and the payment "
    "is settled (a capture beyond the new total is refunded; once nothing is left to ship or collect the rest is "
    "captured or the authorization released). Units that shipped are 409, and so are `lines` that would raise the "
    "total (a volume price lost with the units) beyond what the authorization has left to capture: cancel the "
    "whole order or edit it instead. On an order held for a person to confirm whether a parcel left (its ship died "
    "after its capture), units that would come from that parcel, or any units while its capture still stands, are "
    "409 `parcel_not_confirmed`, `details` naming the shipment: they may be with the carrier; so is a cancel of the "
    "whole order by a key without `orders:approve` (a person who may release its hold answers whether it left). "
    "A pending parcel its carrier scanned delivered before its location confirmed the ship (`delivery_scan_kept`) is "
    "treated the same way: units from it, or the whole order, are 409 `parcel_not_confirmed` for a key without "
    "`orders:approve`, whose cancel is a person's answer that it never left. "
    "Idempotency-Key is honoured (cancelling units twice would cancel twice as many). With `If-Match` (optional) "
    "naming the version read, an order changed since (a cancelled one too) is 409 `version_conflict`, nothing "
    "written, no stock or payment touched; a retry under its `Idempotency-Key` still answers the cancel it made.",
    responses={
        **changed("The order, cancelled (payment `voided`, or still `authorized` if the void failed)"),
        **errors(400, 403, 404, 409, 413, 502, 503),
    },
    middlewares=[plugins_loaded],
)
@requires(Scope.ORDERS_WRITE)
def cancel_order(
    order_id: OrderIdPath, request: CancelRequest, idempotency_key: IdempotencyKey = None, if_match: SeenIfMatch = None
) -> Order | OrderReceipt:
    who = caller(router)
    expected = seen_version(if_match)
    lines = {line.line_id: line.quantity for line in request.lines} if request.lines else None

    # Kept in the cancel's entry, so a retry finds it even when the first request stopped before its
    # answer was stored.
    request_key = f"api:{who.key_id}:{idempotency_key}" if idempotency_key else None

    def cancel() -> dict[str, Any]:
        # Only a key that may release a hold answers whether a held order's parcel left by
        # cancelling it (core.cancellation.Cancellation.cancel).
        cancelled = container().actions.cancel(order_id, request.reason, actor=who.key_id, channel=who.channel,
                                               lines=lines, request_key=request_key, expected_version=expected,
                                               confirms_parcels=allows(who, Scope.ORDERS_APPROVE))  # fmt: skip
        return cancelled.model_dump(mode="json")

    if idempotency_key is None:
        body = cancel()
    else:
        from functions.api.idempotency import once

        # A cancel of chosen units is not idempotent by itself (twice cancels twice as many).
        body = once(f"POST /orders/{order_id}/cancel", who.key_id, idempotency_key, request.model_dump(mode="json"),
                    cancel, router.lambda_context)  # fmt: skip
    return seen_by(who, Order.model_validate(body))


@router.post(
    "/orders/<order_id>/shipments/<shipment_id>/ship",
    summary="Confirm a shipment left: its units leave stock and its share of the payment is captured",
    description="The capture comes first, retried within the request while the gateway fails transiently; an "
    "authorization older than `OMS_AUTHORIZATION_VALID_DAYS` (default 7) is authorized again first and the old "
    "one voided, a decline of it answering as a refused capture does. A "
    "refused capture is 502 `payment_gateway_error`, a gateway that keeps failing 503 `payment_gateway_unavailable` "
    "with Retry-After, a payment plugin that fails (raises, or answers what the OMS cannot take) 502 "
    "`payment_plugin_error`: the shipment stays `pending`, nothing is recorded as captured or moved, each failed "
    "attempt is in the history, and repeating the call tries again with the same idempotency key (a capture the "
    "gateway made all the same is then recorded once). Once the shipment is recorded shipped, a settlement after it "
    "that fails (releasing what an order that lost units holds beyond its total) does not change the answer: 200, "
    "the failure in the history, asked again by a repeat or the reconciler. A capture whose shipment was "
    "cancelled meanwhile is refunded at once (409). A pickup order's shipment is never shipped (409): it is made "
    "ready, then collected (`POST .../deliver`). A shipment shipped already answers 200 and changes nothing, unless "
    "the call names another `tracking_number` than the one recorded (the same in another case or spacing is the "
    "same number, kept as first recorded): one shipped without naming a number (it kept "
    "its label's) takes it, once (history `shipment_tracking_number_set`; `shipment.shipped` goes out again with "
    "it); otherwise 409 "
    "`tracking_number_conflict`, whose `details` name the `shipment_id` and the recorded `tracking_number`. A "
    "shipment a change withdrew from its order (a stock take that counted fewer units than it held, a reject, an "
    "edit: the order went back to be sourced) is 409 `invalid_transition`, `details` `[{shipment_id, location_id, "
    "withdrawn_by}]` (the history entry that withdrew it), as is a ship that change overtakes; one the order never "
    "had is 404.",
    responses={**changed("The order"), **errors(400, 403, 404, 409, 413, 502, 503)},
    middlewares=[plugins_loaded],
)
@requires(Scope.FULFILLMENT_WRITE)
def ship_shipment(
    order_id: OrderIdPath, shipment_id: ShipmentIdPath, request: Annotated[ShipRequest | None, Body()] = None
) -> Order | OrderReceipt:
    who = caller(router)
    container().actions.refuse_parcel_elsewhere(order_id, shipment_id, who.channel, who.location_ids)
    tracking_number = request.tracking_number if request else None
    shipped = container().actions.ship(order_id, shipment_id, tracking_number, actor=who.key_id, channel=who.channel)
    return seen_by(who, shipped)


@router.post(
    "/orders/<order_id>/shipments/<shipment_id>/deliver",
    summary="Confirm a shipment was delivered, or a pickup collected",
    description="A shipped parcel arrived; or a pickup `ready_for_pickup` was collected at its store, when its "
    "share of the payment is captured (as a ship captures: a refused capture is 502 `payment_gateway_error`, a "
    "payment plugin that fails 502 `payment_plugin_error`, a gateway that keeps failing 503, and the pickup stays "
    "ready). A parcel still `pending` is 409, unless its ship died after its capture "
    "(its fate unknown, the order held by the system for a person to confirm whether it left, or its capture request "
    "still standing): the report is proof it left, and it is shipped (captured as a ship captures) and delivered. A "
    "hold that names other parcels too stays on for them (409, the report recorded: the parcel is shipped and "
    "delivered once that hold ends); until then nothing puts the parcel's units back on sale (a reject, an edit or a "
    "cancel touching it is 409). A shipment a change withdrew from its order is 409 `invalid_transition`, as its "
    "ship is.",
    responses={**changed("The order"), **errors(400, 403, 404, 409, 413, 502, 503)},
    middlewares=[plugins_loaded],
)
@requires(Scope.FULFILLMENT_WRITE)
def deliver_shipment(order_id: OrderIdPath, shipment_id: ShipmentIdPath) -> Order | OrderReceipt:
    who = caller(router)
    container().actions.refuse_parcel_elsewhere(order_id, shipment_id, who.channel, who.location_ids)
    delivered = container().actions.deliver_or_collect(order_id, shipment_id, actor=who.key_id, channel=who.channel)
    return seen_by(who, delivered)

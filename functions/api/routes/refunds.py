"""Refunds: an appeasement through the payment plugin, and every refund of an order."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.ids import new_id
from core.refunds import Refund, RefundPage, RefundRequest
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.queries import Cursor, Limit
from functions.api.routes.orders import IdempotencyKey, OrderIdPath, SeenIfMatch
from functions.api.routes.plugins import plugins_loaded
from functions.api.schemas import errors, ok
from functions.api.versions import seen_version

router = Router()


@router.post(
    "/orders/<order_id>/refunds",
    summary="Refund part of what was captured, without a return (an appeasement)",
    description="Asked of the payment plugin at once. A refund the gateway refuses is still 201, with "
    "`status: failed`: it is kept on the order, never counted in `payment.refunded`, and what it held can be "
    "refunded again by a new request (a new Idempotency-Key). One split over two authorizations that the gateway "
    "refused after approving a part of it answers `failed` with the amount that did not go back; the list shows "
    "what did as its own `succeeded` refund. More than captured minus refunded is 422 "
    "`refund_exceeds_captured` (any amount when nothing is captured yet). While a refund of what units "
    "cancelled left captured beyond the order's total is `pending` (its answer not known), a new appeasement is 409 "
    "`settlement_refund_pending` naming it (`details[0].refund_id`): retry once it is answered. An order keeps 64 "
    "KiB of appeasements with their reasons (about 65 at the longest reason, 400 of a short one): past that a new "
    "one is 409 `too_many_refunds`, nothing asked of the gateway. "
    "A gateway that keeps failing answers 503 with the "
    "refund `pending` (it holds its amount): repeat the request with the same Idempotency-Key to finish it; "
    "one nobody repeats is finished by the scheduled reconciler about 15 minutes later. A payment plugin that fails "
    "(raises, or answers what the OMS cannot take) answers 502 `payment_plugin_error` with the refund `pending` "
    "the same way (the gateway may have refunded it): repeated with the same Idempotency-Key once the plugin works, "
    "or by the reconciler, it is asked again under its key and refunds once. No payment plugin for the "
    "order's method: a new refund is 201 `failed` (nothing was asked), but a repeat of one left `pending` is 502 "
    "`payment_gateway_error` with the refund still `pending`, as the first request may have refunded it through "
    "the removed plugin: repeat it once the plugin is back. With `If-Match` (optional) naming the order's version "
    "read, an order changed since (another refund, a ship, a cancel) is 409 `version_conflict`, nothing written or "
    "asked of the gateway (a retry under its `Idempotency-Key` still answers the refund it made).",
    responses={**ok(201, Refund, "The refund, succeeded or failed"), **errors(400, 403, 404, 409, 413, 502, 503)},
    middlewares=[plugins_loaded],
)
@requires(Scope.REFUNDS_WRITE)
def refund_order(
    order_id: OrderIdPath, request: RefundRequest, idempotency_key: IdempotencyKey = None, if_match: SeenIfMatch = None
) -> Response[Refund]:
    who = caller(router)
    expected = seen_version(if_match)
    # The refund's own key: derived from the client's, so a retried request names the same refund
    # even when the first one stopped before its response was stored.
    refund_key = f"api:{who.key_id}:{idempotency_key}" if idempotency_key else new_id("rfk")

    def refund() -> dict[str, Any]:
        issued = container().refunds.issue_refund(
            order_id,
            request.amount,
            request.reason,
            refund_key,
            who.key_id,
            channel=who.channel,
            same_request=idempotency_key is not None,
            expected_version=expected,
        )
        return issued.model_dump(mode="json")

    if idempotency_key is None:
        body = refund()
    else:
        from functions.api.idempotency import once

        body = once(
            f"POST /orders/{order_id}/refunds",
            who.key_id,
            idempotency_key,
            request.model_dump(mode="json"),
            refund,
            router.lambda_context,
        )
    return Response(201, content_types.APPLICATION_JSON, Refund.model_validate(body))


@router.get(
    "/orders/<order_id>/refunds",
    summary="Every refund of an order, oldest first: appeasements, returns' and cancellations'",
    responses={**ok(200, RefundPage, "A page of the order's refunds"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def list_refunds(
    order_id: OrderIdPath,
    limit: Limit = 25,
    cursor: Cursor = None,
) -> RefundPage:
    items, next_cursor = container().refunds.page(order_id, caller(router).channel, limit, cursor)
    return RefundPage(items=items, next_cursor=next_cursor)

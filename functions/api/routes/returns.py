"""Returns (RMA): request, approve or reject, receive, read and list."""

from typing import Annotated

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query

from core.access import Scope, refuse_elsewhere
from core.models import Shown
from core.return_models import ReceiveReturn, RequestReturn, Return, ReturnNote
from core.status import ReturnStatus
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.label_links import with_return_label_link
from functions.api.pages import page_that_fits
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.routes.orders import IdempotencyKey, OrderIdPath
from functions.api.routes.plugins import plugins_loaded
from functions.api.schemas import errors, ok
from functions.api.versions import if_match_header, seen_version

router = Router()

ReturnIdPath = existing("return", r"^rma_[a-z2-7]{24}$", "Return id")


class ReturnPage(Shown):  # written out: see OrderPage (functions/api/schemas.py)
    items: list[Return]
    next_cursor: str | None = None


def _shown(item: Return) -> dict:
    return with_return_label_link(item).model_dump(mode="json")


@router.post(
    "/orders/<order_id>/returns",
    summary="Request a return of shipped units",
    description="The return policy plugin decides at once: `authorized` (with a return label from the carrier "
    "plugin in `label_url`) or `requested` (approve or reject it). More units than shipped minus earlier returns "
    "is 422; an order with nothing shipped is 409; an order with 100 returns already (rejected and cancelled ones "
    "counted: each is kept on its record) is 409 `too_many_returns`; outside the policy's window 422 "
    "`return_window_closed`. With "
    "an `Idempotency-Key`, a retry returns the first answer instead of a second return. With `exchange.lines` "
    "the replacement order is placed through the capture path once the return is received, paid for first by "
    "the refund due (its `exchange_credit`); an unknown sku there is 422 `unknown_sku`, one with no price in the "
    "order's currency 422 `no_price`, and one for an order paid with a method the shop no longer takes 422 "
    "`unknown_payment_method`, as POST /orders answers them. A replacement that cannot be placed at "
    "receipt (no stock, no price, no shipping, its payment method or pickup store no longer taken, or its "
    "external_id taken by an order of the channel) is given up: the received units are refunded instead and the "
    "return shows `exchange_not_placed`.",
    responses={**ok(201, Return, "The return"), **errors(400, 403, 404, 409, 413, 502)},
    middlewares=[plugins_loaded],
)
@requires(Scope.RETURNS_WRITE)
def request_return(
    order_id: OrderIdPath, request: RequestReturn, idempotency_key: IdempotencyKey = None
) -> Response[Return]:
    who = caller(router)
    # Kept on the return, so a retry finds it even when the first request stopped before its answer was stored.
    request_key = f"api:{who.key_id}:{idempotency_key}" if idempotency_key else None

    def create() -> dict:
        return (
            container()
            .returns.request(order_id, request, actor=who.key_id, channel=who.channel, request_key=request_key)
            .model_dump(mode="json")
        )

    if idempotency_key is None:
        body = create()
    else:
        from functions.api.idempotency import once

        body = once(
            f"POST /orders/{order_id}/returns", who.key_id, idempotency_key, request.model_dump(mode="json"), create,
            router.lambda_context,
        )  # fmt: skip
    return Response(201, content_types.APPLICATION_JSON, _shown(Return.model_validate(body)))


@router.get(
    "/orders/<order_id>/returns",
    summary="An order's returns, oldest first",
    responses={**ok(200, ReturnPage, "A page of the order's returns"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def list_order_returns(
    order_id: OrderIdPath,
    limit: Limit = 25,
    cursor: Cursor = None,
) -> Response[str]:
    who = caller(router)

    def read(size: int) -> tuple[list[Return], str | None]:
        items, next_cursor = container().returns.page_for_order(order_id, who.channel, size, cursor)
        return [with_return_label_link(item) for item in items], next_cursor

    # A return of 100 lines with the longest reasons answers ~280 KB: 21 of them pass Lambda's 6 MB.
    return page_that_fits(read, limit, ReturnPage)


@router.get(
    "/returns",
    summary="List returns, newest first",
    responses={**ok(200, ReturnPage, "A page of returns"), **errors(403)},
)
@requires(Scope.ORDERS_READ)
def list_returns(
    status: Annotated[ReturnStatus | None, Query()] = None,
    limit: Limit = 25,
    cursor: Cursor = None,
) -> Response[str]:
    channel = caller(router).channel

    def read(size: int) -> tuple[list[Return], str | None]:
        items, next_cursor = container().returns.list(status, channel, size, cursor)
        return [with_return_label_link(item) for item in items], next_cursor

    return page_that_fits(read, limit, ReturnPage)


@router.get(
    "/returns/<return_id>",
    summary="Get a return",
    responses={**ok(200, Return, "The return"), **errors(403, 404)},
)
@requires(Scope.ORDERS_READ)
def get_return(return_id: ReturnIdPath) -> Return:
    return with_return_label_link(container().returns.get(return_id, caller(router).channel))


# Optional: without it an approval or a rejection is decided on the return as it is (Return.check_seen).
ReturnIfMatch = Annotated[
    str, if_match_header("The return's `version` you read: a return changed since is 409 `version_conflict`.")
]
SEEN = (
    "With `If-Match` (optional) naming the return's version read, a return changed since (approved, rejected, "
    "cancelled) is 409 `version_conflict`, nothing written{}."
)


@router.post(
    "/returns/<return_id>/approve",
    summary="Approve a requested return: it is authorized and gets its return label",
    description=SEEN.format(" and no label booked"),
    responses={**ok(200, Return, "The return, authorized"), **errors(400, 403, 404, 409, 413, 502)},
    middlewares=[plugins_loaded],
)
@requires(Scope.RETURNS_WRITE)
def approve_return(
    return_id: ReturnIdPath, request: Annotated[ReturnNote | None, Body()] = None, if_match: ReturnIfMatch = None
) -> Return:
    who = caller(router)
    note = request.note if request else None
    expected = seen_version(if_match)
    approved = container().returns.approve(return_id, note, actor=who.key_id, channel=who.channel,
                                           expected_version=expected)  # fmt: skip
    return with_return_label_link(approved)


@router.post(
    "/returns/<return_id>/reject",
    summary="Reject a requested return",
    description=SEEN.format(""),
    responses={**ok(200, Return, "The return, rejected"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.RETURNS_WRITE)
def reject_return(
    return_id: ReturnIdPath, request: Annotated[ReturnNote | None, Body()] = None, if_match: ReturnIfMatch = None
) -> Return:
    who = caller(router)
    note = request.note if request else None
    expected = seen_version(if_match)
    rejected = container().returns.reject(return_id, note, actor=who.key_id, channel=who.channel,
                                          expected_version=expected)  # fmt: skip
    return with_return_label_link(rejected)


@router.post(
    "/returns/<return_id>/receive",
    summary="Receive a return's parcel; the returns workflow restocks, counts and refunds it",
    description="Each line once per condition; more units than a line authorized is 422, a `location_id` the "
    "network does not have 422 `unknown_location`. The receipt is "
    "recorded at once, then the returns workflow puts the resellable units back on hand at `location_id` (damaged "
    "units stay out), counts the units on the order (`returned_quantity`; the order becomes `partially_returned`, "
    "or `returned` once every shipped unit is back) and refunds them through the payment plugin (each unit's share "
    "of its line total, plus shipping when the policy says so, minus the fee). 200 with the return `refunded` when "
    "that is done by the time the workflow was started; 202 with it `received` while the workflow finishes. "
    "Receiving again with the same body changes nothing that is done and starts the workflow again, which resumes "
    "where it stopped (a refund the gateway refused is recorded `failed` in GET /orders/{id}/refunds and asked "
    "again); another receipt of a return received already is 409 `invalid_transition`.",
    responses={
        **ok(200, Return, "The return, refunded"),
        **ok(202, Return, "The return, received; the returns workflow finishes it"),
        **errors(400, 403, 404, 409, 413),
    },
    middlewares=[plugins_loaded],
)
@requires(Scope.FULFILLMENT_WRITE)  # a location's work, as shipping is: a receipt refunds (README, Security)
def receive_return(return_id: ReturnIdPath, request: ReceiveReturn) -> Response[Return]:
    who = caller(router)
    refuse_elsewhere(who.location_ids, request.location_id)
    returns = container().returns
    item = returns.receive(return_id, request, actor=who.key_id, channel=who.channel)
    if item.status is not ReturnStatus.REFUNDED:
        request_id = (router.current_event.get("requestContext") or {}).get("requestId") or ""
        container().return_workflow.start(item.id, channel=item.channel, correlation_id=request_id)
        item = returns.as_new_as(item)  # the workflow may have refunded it by now
    status = 200 if item.status is ReturnStatus.REFUNDED else 202
    return Response(status, content_types.APPLICATION_JSON, _shown(item))

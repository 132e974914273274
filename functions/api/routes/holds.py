"""Holds for review: put an order on hold, release it (scope orders:approve)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import Scope
from core.holds import HoldRequest, ReleaseRequest
from core.models import Order
from functions.api.access import caller, requires
from functions.api.dependencies import container
from functions.api.routes.orders import IdempotencyKey, OrderIdPath, SeenIfMatch, changed, seen_by
from functions.api.schemas import OrderReceipt, errors
from functions.api.versions import seen_version

router = Router()


@router.post(
    "/orders/<order_id>/hold",
    summary="Put an order that has not shipped on hold for review",
    description="A `pending`, `authorized`, `backordered` or `allocated` order goes `on_hold`: its workflow stops "
    "before its next step, and nothing is reserved, captured, shipped or collected until it is released "
    "(shipping it, or handing over its pickup, is 409). Its payment is authorized while it is held only by an "
    "authorization under way when the hold landed (recorded, not asked again) or by an edit that grows its total. "
    "An order on hold already, shipped or closed is 409. The history names the caller, the reason and the note. "
    "With `Idempotency-Key` a retry answers the first answer again (another reason or note under the key is 409 "
    "`idempotency_key_reused`), even when the first answer was lost before it was stored (the key is kept in the "
    "hold's history entry): no 409 `on hold already` for a hold that took effect, and no second hold of an order "
    "released since. With `If-Match` (optional) naming the version read, an order changed since is 409 "
    "`version_conflict`, nothing written (a retry under its `Idempotency-Key` still answers the hold it made).",
    responses={**changed("The order, on hold"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.ORDERS_APPROVE)
def hold_order(
    order_id: OrderIdPath, request: HoldRequest, idempotency_key: IdempotencyKey = None, if_match: SeenIfMatch = None
) -> Order | OrderReceipt:
    who = caller(router)
    expected = seen_version(if_match)
    if idempotency_key is None:
        held = container().holds.hold(order_id, request, actor=who.key_id, channel=who.channel,
                                      expected_version=expected)  # fmt: skip
        return seen_by(who, held)
    from functions.api.idempotency import once

    request_key = f"api:{who.key_id}:{idempotency_key}"

    def hold() -> dict[str, Any]:
        held = container().holds.hold(order_id, request, actor=who.key_id, channel=who.channel,
                                      request_key=request_key, expected_version=expected)  # fmt: skip
        return held.model_dump(mode="json")

    answer = once(f"POST /orders/{order_id}/hold", who.key_id, idempotency_key, request.model_dump(mode="json"),
                  hold, router.lambda_context)  # fmt: skip
    return seen_by(who, Order.model_validate(answer))


@router.post(
    "/orders/<order_id>/release",
    summary="Release an order from its hold",
    description="The order goes back to the status it was held from and carries on where it stopped: a `pending` "
    "or `authorized` order's workflow starts again within seconds (it skips what is done, and a payment authorized "
    "before the hold is not authorized again). A pickup waiting at its store gets back the time the order was "
    "held: its `collect_by` moves later by it (to at least 24 hours after the release, never more than the wait it "
    "was given; not for a hold placed once it was past, but for the hold for a person to confirm whether a collect "
    "that died after its capture handed the pickup over, so the collect recorded after it is not overtaken by the "
    "pickup expiry), and its customer is told again until when. An order that "
    "is not on hold is 409. A person's hold on an order "
    "whose ship died after asking for its capture ends alone: the order stays `on_hold` (reason `other`, the note "
    "naming the shipments) until a person confirms whether the parcel left with a release of that hold; the same "
    "release sent again (same caller, same note, within 24 h: a blind retry) answers the order as it stands. With "
    "`Idempotency-Key` a retry answers the first answer again (another note under the key is 409 "
    "`idempotency_key_reused`), even once the hold it ended is gone (a carrier's delivery report ended the "
    "system's hold it left): no 409 `not on hold` for a release that took effect. With `If-Match` (optional) "
    "naming the version read, an order changed since is 409 `version_conflict`, nothing written (a retry under its "
    "`Idempotency-Key` still answers the release it made).",
    responses={**changed("The order, released"), **errors(400, 403, 404, 409, 413)},
)
@requires(Scope.ORDERS_APPROVE)
def release_order(
    order_id: OrderIdPath,
    request: ReleaseRequest | None = None,
    idempotency_key: IdempotencyKey = None,
    if_match: SeenIfMatch = None,
) -> Order | OrderReceipt:
    who = caller(router)
    body = request or ReleaseRequest()
    expected = seen_version(if_match)
    if idempotency_key is None:
        released = container().holds.release(order_id, body, actor=who.key_id, channel=who.channel,
                                             expected_version=expected)  # fmt: skip
        return seen_by(who, released)
    from functions.api.idempotency import once

    # Kept in the release's entry too, so a retry finds it when the first request stopped before its
    # answer was stored (and the hold it ended is gone: not 409 `not on hold`).
    request_key = f"api:{who.key_id}:{idempotency_key}"

    def release() -> dict[str, Any]:
        released = container().holds.release(
            order_id, body, actor=who.key_id, channel=who.channel, request_key=request_key, expected_version=expected
        )
        return released.model_dump(mode="json")

    answer = once(f"POST /orders/{order_id}/release", who.key_id, idempotency_key, body.model_dump(mode="json"),
                  release, router.lambda_context)  # fmt: skip
    return seen_by(who, Order.model_validate(answer))

"""Batched fulfilment confirmations: a warehouse system ships, delivers or readies many shipments in one call."""

import time
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from pydantic import BaseModel

from core.access import Scope
from core.confirmations import (
    DEADLINE_SECONDS,
    MAX_ITEMS,
    SKEW_SECONDS,
    ConfirmationAction,
    ConfirmationBatch,
    Confirmed,
    confirm,
)
from core.log_text import escape_for_log
from core.models import Shown
from core.status import OrderStatus, ShipmentStatus
from functions.api.access import caller, requires
from functions.api.app import logger
from functions.api.dependencies import container
from functions.api.errors import described
from functions.api.routes.orders import IdempotencyKey
from functions.api.routes.plugins import plugins_loaded
from functions.api.schemas import ErrorInfo, errors, ok

router = Router()
# `logger` is the app's, not a child made here: this module is imported on its first request, when
# POWERTOOLS_SERVICE_NAME (by which a child finds its parent) may have changed in a process
# hosting other functions too (tests, the local runtime): an orphaned child cannot append keys.

# What one item may take at most once started (a capture retried with backoff while the gateway
# fails, the writes after it): no item is started later than this before the function's timeout.
ITEM_MARGIN_SECONDS = 3.0


class ConfirmationResult(Shown):
    """One item's outcome. Confirmed: the shipment's and the order's status and version after it
    (what a receipt shows a key without orders:read). Refused: `error` in the contract's error
    shape, and whether sending the item again later may succeed (`retry`). An item that is no
    confirmation echoes what it names when that is an id's kind of text, or an action (else null)."""

    order_id: str | None
    shipment_id: str | None
    action: ConfirmationAction | None
    status: ShipmentStatus | None = None
    order_status: OrderStatus | None = None
    version: int | None = None
    error: ErrorInfo | None = None
    retry: bool = False


class ConfirmationResults(BaseModel, defer_build=True):
    items: list[ConfirmationResult]


class _Unfinished(Exception):
    """Some items may succeed if sent again: the batch's answer is not kept under its
    Idempotency-Key, so a retry with the same key runs them (the done ones change nothing)."""

    def __init__(self, answer: dict[str, Any]):
        super().__init__("unfinished batch")
        self.answer = answer


def _result(outcome: Confirmed) -> ConfirmationResult:
    item = outcome.item
    base = {"order_id": item.order_id, "shipment_id": item.shipment_id, "action": item.action}
    if outcome.failure is not None:
        _, code, message, details = described(outcome.failure)
        error = ErrorInfo(code=code, message=message, details=details)
        return ConfirmationResult(**base, error=error, retry=outcome.retry)
    order = outcome.order
    assert order is not None
    return ConfirmationResult(**base, status=outcome.shipment_status, order_status=order.status, version=order.version)


@router.post(
    "/shipments/confirmations",
    summary="Confirm many shipments at once: ship, deliver or ready each, as their single routes do",
    description=f"For warehouse systems that confirm in batches (1 to {MAX_ITEMS} items). Each item runs exactly "
    "what its single route runs, in the order sent: `ship` is `POST /orders/{id}/shipments/{shipment_id}/ship` "
    "(its share of the payment captured, with `tracking_number`; `shipped_at`, when the parcel was handed over, "
    "an RFC 3339 time with its offset, is recorded as the shipment's `shipped_at` in place of the confirmation's "
    "time, so a stock take counted after it keeps its count), `deliver` is `.../deliver` (a parcel arrived, or "
    "a pickup collected), `ready` is `.../ready`. The answer is 200 with one result per item, in order: the "
    "shipment's `status`, the order's `order_status` and `version`, or `error` `{code, message, details}` as the "
    "single route would have answered it (`not_found` for an unknown order or shipment or another channel's, "
    "`forbidden` for a parcel at a location the caller's key is not bound to, "
    "`invalid_transition` (a shipment a change withdrew from its order among them, `details` naming what withdrew it), "
    "`payment_gateway_error`, `payment_gateway_unavailable`, `payment_plugin_error`, "
    "`plugin_error`, ...). "
    "One refused item never "
    "stops the others, nor does one that is no confirmation (an unknown action, a malformed `tracking_number`, or "
    "`tracking_number` or `shipped_at` with another action than `ship`, a `shipped_at` without an offset, later "
    f"than now by more than {SKEW_SECONDS} s or before the OMS made the parcel, a field the item does not take): "
    "that item alone is "
    "`validation_error`, its `details` naming its position (`items[3].action`). A body that is not a list of 1 to "
    f"{MAX_ITEMS} items is 422 whole. `retry` true means sending the item again later may succeed (the gateway "
    "was unavailable, or a plugin failed: sent again once it works, the payment's capture is asked under the same key, "
    "concurrent changes won, a change under way took the ship's capture back, or `not_attempted`: the batch ran "
    "out of time before it; items run one after "
    "another, none is started later than 3 s before the function's timeout, and a ship waits for its capture). "
    "Every action is idempotent: an item confirmed already, in this batch or an earlier one, changes nothing "
    "again. With `Idempotency-Key` a retried batch answers the first answer again, unless an item of it had "
    "`retry` true: then nothing is kept and the retry runs each item again.",
    responses={**ok(200, ConfirmationResults, "One result per item, in order"), **errors(400, 403, 409, 413, 503)},
    middlewares=[plugins_loaded],
)
@requires(Scope.FULFILLMENT_WRITE)
def confirm_shipments(batch: ConfirmationBatch, idempotency_key: IdempotencyKey = None) -> ConfirmationResults:
    who = caller(router)
    started = time.monotonic()
    context = router.lambda_context
    deadline = DEADLINE_SECONDS
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        deadline = min(deadline, context.get_remaining_time_in_millis() / 1000 - ITEM_MARGIN_SECONDS)

    def run() -> dict[str, Any]:
        outcomes = confirm(container().actions, batch, who.key_id, who.channel, lambda: time.monotonic() - started,
                           deadline, who.location_ids)  # fmt: skip
        answer = ConfirmationResults(items=[_result(outcome) for outcome in outcomes]).model_dump(mode="json")
        refused = [outcome for outcome in outcomes if outcome.failure is not None]
        logger.info("shipments confirmed", extra={"items": len(outcomes), "refused": len(refused)})
        if refused:
            # Ids are the caller's text, unchecked until looked up: escaped so none can forge a line.
            logger.warning("shipment confirmations refused", extra={"refused_items": [
                f"{escape_for_log(o.item.order_id or '')}/{escape_for_log(o.item.shipment_id or '')} {o.item.action}: "
                f"{o.failure.code}" for o in refused if o.failure is not None
            ]})  # fmt: skip
        if any(outcome.retry for outcome in outcomes):
            raise _Unfinished(answer)
        return answer

    try:
        if idempotency_key is None:
            body = run()
        else:
            from functions.api.idempotency import once

            body = once("POST /shipments/confirmations", who.key_id, idempotency_key,
                        batch.as_sent(), run, context)  # fmt: skip
    except _Unfinished as unfinished:
        body = unfinished.answer
    return ConfirmationResults.model_validate(body)

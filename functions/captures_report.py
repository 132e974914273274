"""What a pass of the unrecorded capture sweep did, said the same way by each function that runs
it (the jeopardy scan for ships that died, the reconciler for settlements): log lines a person
reads, the metrics ShipsToConfirmAlarm watches, and each failure at ERROR."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from core.capture_sweep import CapturesNotSettled, CapturesSettled
from functions.failure_logs import failure_logged


def report(
    captures: CapturesSettled, failed: CapturesNotSettled | None, logger: Any, metrics: Any, *,
    waiting: int | None = None,
) -> None:  # fmt: skip
    """`waiting`: the orders held now while a person is to confirm whether a parcel left (the
    jeopardy scan's count, after its sweep); None when nothing counted them (the reconciler) or the
    count failed. ShipsToConfirmAlarm watches ShipsWaitingToConfirm alone (Maximum), whose every
    point is a floor of the orders waiting for a person to confirm a parcel: `waiting` (or the
    orders this pass held, when its index does not show them all yet) and the
    orders found this pass that could not be held (`unconfirmed`, partly shipped: in no count), or,
    uncounted, those this pass held or found. A zero is published only by a count: a run whose count
    failed publishes no point unless it found one, so the alarm keeps its state rather than clearing
    while parcels wait (a period without a point neither fires nor clears it)."""
    for order_id in captures.settled:
        logger.warning("capture left by a ship or a settlement settled", extra={"order_id": order_id})
    for order_id in captures.held:
        logger.warning("order held: a ship died after asking for its capture; confirm whether the parcel left",
                       extra={"order_id": order_id})  # fmt: skip
    for order_id in captures.unconfirmed:
        # Partly shipped, so it cannot be held: only this line (and the metric) calls a person.
        logger.error("a ship died after asking for its capture on an order that cannot be held; "
                     "confirm whether the parcel left", extra={"order_id": order_id})  # fmt: skip
    if captures.settled:
        metrics.add_metric(name="UnrecordedCapturesSettled", unit=MetricUnit.Count, value=len(captures.settled))
    found = len(captures.held) + len(captures.unconfirmed)
    if found:
        metrics.add_metric(name="ShipsToConfirm", unit=MetricUnit.Count, value=found)
    if waiting is not None:
        # The count reads an index (eventually consistent) that may not show yet the orders this
        # pass has just held: each waits now, so the point is at least as many.
        metrics.add_metric(name="ShipsWaitingToConfirm", unit=MetricUnit.Count,
                           value=max(waiting, len(captures.held)) + len(captures.unconfirmed))  # fmt: skip
    elif found:
        metrics.add_metric(name="ShipsWaitingToConfirm", unit=MetricUnit.Count, value=found)
    if failed is not None:
        for order_id, failure in failed.failed.items():
            failure_logged(logger, "capture left by a ship or a settlement not settled", failure,
                           order_id=order_id)  # fmt: skip

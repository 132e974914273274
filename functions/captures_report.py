"""What a pass of the unrecorded capture sweep did, said the same way by each function that runs
it (the jeopardy scan for ships that died, the reconciler for settlements): log lines a person
reads, the metrics ShipsToConfirmAlarm watches, and each failure at ERROR."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from core.capture_sweep import CapturesNotSettled, CapturesSettled


def report(captures: CapturesSettled, failed: CapturesNotSettled | None, logger: Any, metrics: Any) -> None:
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
    if captures.held or captures.unconfirmed:
        metrics.add_metric(name="ShipsToConfirm", unit=MetricUnit.Count,
                           value=len(captures.held) + len(captures.unconfirmed))  # fmt: skip
    if failed is not None:
        for order_id, failure in failed.failed.items():
            logger.error("capture left by a ship or a settlement not settled", extra={"order_id": order_id},
                         exc_info=failure)  # fmt: skip

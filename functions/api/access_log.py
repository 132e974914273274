"""Queues each read of an order for its access log once the read has its answer; a failure to queue never fails it.

A change of an order that wrote nothing on it (no history entry) but answered it is such a read, and
so is each order (or return) a list answers, and the label links a change answered.
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from core.access_log import CHANGES, LIST_READS, READS, OrderRead
from functions.api.access import caller_from
from functions.api.dependencies import container
from functions.business_metrics import orders_changed

logger = Logger(child=True)


def recorded_read(event: dict[str, Any], response: dict[str, Any], metrics: Metrics) -> None:
    """Queue the read `event` made if it read an order (a 2xx of a route in READS, or of one in
    CHANGES that wrote no history entry on the order nor a return of it: its entries, or the return
    workflow's, are the change's record; or that wrote one and answered label links, which no entry
    names), or the
    reads of a list in LIST_READS (one per order or return it answered). Should the
    queue refuse one, the whole record goes to the log at ERROR (`read not queued`, metric
    AccessLogReadsNotQueued, alarm AccessLogReadsNotQueuedAlarm): the read still answers, and
    the log line is the record (README runbook)."""
    route = (event.get("httpMethod", ""), event.get("resource", ""))
    listed = LIST_READS.get(route)
    if listed is not None and 200 <= response["statusCode"] < 300:
        _record(event, _listed_reads(event, response, listed), metrics)
        return
    action = READS.get(route) or CHANGES.get(route)
    if action is None or not 200 <= response["statusCode"] < 300:
        return  # not a read of an order (every other write): no caller to build
    parameters = event.get("pathParameters") or {}
    order_id = parameters.get("order_id")
    detail = None
    if route == ("POST", "/orders"):
        if orders_changed():
            # Placed: the order's `created` entry names its key, and its answer is not parsed: an
            # order just placed has no shipment yet, so no label link.
            return
        # Placed again under its Idempotency-Key, the order placed the first time is the answer.
        order_id = _answer(response).get("id")
    elif order_id is None:
        # A return read (or received again) by its own id: the return names its order.
        order_id = _answer(response).get("order_id")
        detail = {"return_id": parameters.get("return_id")}
    if not isinstance(order_id, str):
        return
    answer = _answer(response) if action in ("get", "returns") or route in CHANGES else None
    # An order's answer names the label links it handed out (its shipments'), and so does a return's
    # or a page of them (the returns'); a return read by its id keeps that id.
    labels = _labels_handed_out(answer) if answer is not None else None
    if route in CHANGES and order_id in orders_changed() and labels is None:
        return  # a change: the history entries it wrote name its key, and it handed out no label link
    _record(event, [(order_id, action, {**(detail or {}), **(labels or {})} or None)], metrics)


def _listed_reads(
    event: dict[str, Any], response: dict[str, Any], action: str
) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(order id, action, detail) of each order a list answered: an order (with its label links, as a
    read by its id), or the order of returns (naming them: a page may hold several of one order,
    and a request reads an order once), or a stored order a what-if planned (once, however often
    it was named; a body simulated is no order's), or an order a batch of confirmations answered
    without changing it (once, naming its shipments)."""
    items = _answer(response).get("items")
    items = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    if event.get("resource") == "/shipments/confirmations":
        # Each order once, naming the shipments answered; not a refused item's (nothing was read),
        # nor an order the batch changed (its history entries name the key).
        changed = orders_changed()
        confirmed: dict[str, list[Any]] = {}
        for item in items:
            order_id = item.get("order_id")
            if isinstance(order_id, str) and item.get("error") is None and order_id not in changed:
                shipments = confirmed.setdefault(order_id, [])
                if item.get("shipment_id") not in shipments:
                    shipments.append(item.get("shipment_id"))
        return [(order_id, action, {"shipment_ids": ids}) for order_id, ids in confirmed.items()]
    if event.get("resource") == "/sourcing/simulate":
        planned = dict.fromkeys(item["order_id"] for item in items if isinstance(item.get("order_id"), str))
        return [(order_id, action, None) for order_id in planned]
    if event.get("resource") != "/returns":
        return [(item["id"], action, _labels_handed_out(item)) for item in items if isinstance(item.get("id"), str)]
    returns: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        if isinstance(item.get("order_id"), str):
            returns.setdefault(item["order_id"], []).append(item)
    return [
        (order_id, action, {"return_ids": [item.get("id") for item in listed], **(_labels_handed_out(listed) or {})})
        for order_id, listed in returns.items()
    ]


def _record(event: dict[str, Any], reads: list[tuple[str, str, dict[str, Any] | None]], metrics: Metrics) -> None:
    if not reads:
        return
    who = caller_from(event)
    if who is None:
        return
    # When the read answered, on the clock the changes' entries are written by: API Gateway's request
    # time is when the request arrived, and a read that waited (a new container, the authorizer)
    # while the order changed, then showed the change, was listed before it.
    at = container().clock()
    request_id = (event.get("requestContext") or {}).get("requestId") or ""
    recorded = [
        OrderRead(request_id=request_id, order_id=order_id, at=at, actor=who.key_id, action=action, detail=detail)
        for order_id, action, detail in reads
    ]
    try:
        if len(recorded) == 1:
            container().read_recorder.record(recorded[0])
        else:
            container().read_recorder.record_all(recorded)
    except Exception:  # any failure of the queue: the read must not fail for it
        for read in recorded:
            logger.exception("read not queued", extra={"access": read.model_dump(mode="json")})
        metrics.add_metric(name="AccessLogReadsNotQueued", unit=MetricUnit.Count, value=len(recorded))


def _answer(response: dict[str, Any]) -> dict[str, Any]:
    """The read's JSON answer ({} if it is not an object)."""
    try:
        answer = json.loads(response.get("body") or "{}")
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _labels_handed_out(answer: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any] | None:
    """A read of the order hands out a signed link to each shipment's label, a read of a return
    (or of a page of them) to each return's: which ones, by the shipment's or the return's id."""
    if isinstance(answer, list):
        labelled = answer  # returns of one order, from a page of GET /returns
    elif "shipments" in answer:
        labelled = answer["shipments"]
    elif "items" in answer:
        labelled = answer["items"]  # a page of the order's returns
    else:
        labelled = [answer]  # one return
    if not isinstance(labelled, list):
        return None
    labels = [item["id"] for item in labelled if isinstance(item, dict) and item.get("label_url") and "id" in item]
    return {"label_urls": labels} if labels else None

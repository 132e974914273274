"""Orders stream consumer: each order change becomes domain events, webhook deliveries, counters
and customer notifications; the Catalog stream's ended imports become `import.completed`, the
Returns stream's new and received returns `return.created` and `return.received`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

from core.aggregates import aggregate_change
from core.cancellation import parcel_units, parcels_left, units_left_behind
from core.domain_events import DomainEvent, import_events, order_events, return_events
from core.models import Order
from core.webhooks import DeliveryMessage, Subscription
from functions.adapters import order_codec
from functions.adapters.imports import import_failure, import_file_error, import_summary
from functions.bootstrap import WarmContainer
from functions.masked_logs import function_logger
from functions.stream_batches import InOrderStreamProcessor, batch_response

logger = function_logger()
# The template sets the namespace; the default keeps a stray import (a test) from breaking flushes.
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OMS"))
container = WarmContainer()
# A record is not started with less than this left of the function's 10 s Timeout: the rest of
# the batch is reported failed unprocessed, and the stream hands it out again from there. Ended by
# the timeout, the batch would be retried whole and bisected, every change it had handled
# publishing its events again. It covers one record at the webhook cap (3 events to 50
# subscriptions: 150 deliveries written ten at a time, ~0.1 s at 5 ms a request, with a notifier
# plugin's call) and the batch's messages queued after it (25 such records: 375 SendMessageBatch
# ten at a time, ~0.4 s), with room for throttled requests retried.
RECORD_RESERVE_MILLIS = 3_000
# What is kept of the time left past a notifier plugin's call: the notification's deferral written
# if the plugins do not answer in time (Notifier.notify), and the batch's messages queued after its
# last record (~0.4 s at most), so a plugin that hangs defers its notification instead of running
# the invocation into its Timeout.
NOTIFY_RESERVE_MILLIS = 1_000
processor = InOrderStreamProcessor(reserve_millis=RECORD_RESERVE_MILLIS)


def order_document(image: dict[str, Any] | None) -> dict[str, Any] | None:
    """The order document of a stream image in DynamoDB JSON (`doc`: compressed JSON in a binary,
    base64 in the record, or plain JSON in a string for orders stored before compression); None
    for an item that is not an order."""
    attribute = (image or {}).get("doc")
    if not attribute:
        return None
    return json.loads(order_codec.stored_json(attribute))


class _Subscriptions:
    """The webhook subscriptions, read once per batch (one Query, not one per record) and only if
    a record of the batch has events."""

    def __init__(self) -> None:
        self._found: list[Subscription] | None = None

    def __call__(self) -> list[Subscription]:
        if self._found is None:
            self._found = container().webhook_store.all()
        return self._found


class _Deliveries:
    """The webhook delivery messages of a stream batch's records, queued together once every record
    is handled: SendMessageBatch takes ten, and one per change made an order's five changes five
    requests where a batch of 25 changes needs about three."""

    def __init__(self) -> None:
        self.messages: list[DeliveryMessage] = []

    def queue(self) -> None:
        """Queue them; raises when any was not queued, failing the batch whole: Lambda retries it
        and the retry queues each delivery never tried (EventDispatcher.dispatch)."""
        if self.messages:
            container().webhook_queue.send_now(self.messages)


def publish_changes(
    record: DynamoDBRecord,
    subscriptions: Callable[[], list[Subscription]],
    deliveries: _Deliveries,
    seconds_left: Callable[[], float] | None = None,
) -> None:
    """Both images are read from the record itself, so a redelivered record gives the same events
    with the same ids; a failure fails this record only and the stream retries it. `deliveries`
    collects the messages of its webhook deliveries, for the batch to queue; `seconds_left`, how
    long a notifier plugin may take (notify)."""
    images = record.raw_event.get("dynamodb") or {}
    imported = import_summary(images.get("NewImage"))
    if imported is not None:  # the Catalog stream's mapping passes only an import's end or interruption
        with logger.append_context_keys(import_id=imported["id"]):
            old = import_summary(images.get("OldImage"))
            events = import_events(
                old,
                imported,
                lambda: import_errors(imported["id"], images["NewImage"]),
                old_failure=import_failure(images.get("OldImage")),
                new_failure=import_failure(images.get("NewImage")),
            )
            dispatch(events, subscriptions, deliveries)
        return
    new = order_document(images.get("NewImage"))
    if new is None:  # a removed item, or not an order
        return
    old = order_document(images.get("OldImage"))
    if str(new.get("id", "")).startswith("rma_"):  # the Returns stream's mapping: a return's item
        with logger.append_context_keys(return_id=new["id"], order_id=new.get("order_id")):
            dispatch(return_events(old, new, order_of(str(new.get("order_id", "")))), subscriptions, deliveries)
        return
    finish_parcels_left(old, new)
    update_aggregates(old, new)
    events = order_events(old, new)
    with logger.append_context_keys(order_id=new.get("id"), channel=new.get("channel")):
        dispatch(events, subscriptions, deliveries)
        # After the events: a notifier plugin that fails leaves its notification to the
        # reconciler's retry pass; anything else failing has the record redelivered, and the events
        # it publishes again carry the same ids (subscribers dedupe; no delivery is queued twice).
        notify(old, new, seconds_left, lambda: appended_entries(images))


def finish_parcels_left(old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """The units of the parcels this change handed over (a ship, a collect, a carrier's report of a
    pending parcel) leave on_hand if the request that recorded it died before making them leave
    (units_left_behind): nothing but this record would, when no client sends it again. One still on
    its way, a redelivered record, or the request sent again at the same time: the units move once
    (conditional writes on the reservation), whichever comes first. First in the record's handling,
    so a failure has the record redelivered before its events are published. A stock take recorded
    after the hand-over (after the latest, if the change handed over more than one parcel) counted
    the units out already: only their reservations go, on_hand left as counted."""
    left = parcels_left(old, new)
    if not left:
        return
    order = Order.model_validate(new)
    parcels = [s for s in order.shipments if s.id in left]
    times = [s.handed_over_at for s in parcels]
    handed_at = max(t for t in times if t is not None) if None not in times else None
    moved = units_left_behind(container().inventory_repository, parcel_units(order, parcels), handed_at)
    if moved:
        logger.warning(
            "units of parcels handed over left on_hand from the stream: the request that recorded them had not"
            " made them leave (it died, or was still on its way)",
            extra={"shipment_ids": sorted(left), "units": [[*item, units] for item, units in sorted(moved.items())]},
        )
        metrics.add_metric(name="HandOversFinished", unit=MetricUnit.Count, value=len(moved))


def import_errors(import_id: str, image: dict[str, Any]) -> list[dict[str, Any]]:
    """An ended import's errors as GET /imports/{id} shows them: its file's error from its item's
    `image` (a read of the item may not see yet the write the stream record comes from), then its
    lines' (each an item of its own)."""
    report = container().import_ledger.get(import_id)
    lines = [error.model_dump(mode="json") for error in report.errors if error.line is not None] if report else []
    file_error = import_file_error(image)
    return [file_error, *lines] if file_error is not None else lines


def order_of(order_id: str) -> dict[str, Any] | None:
    """A return's order as it is now (the return's item does not hold it)."""
    order = container().order_repository.get(order_id)
    return order.model_dump(mode="json") if order is not None else None


def dispatch(
    events: list[DomainEvent], subscriptions: Callable[[], list[Subscription]], deliveries: _Deliveries
) -> None:
    """Publish `events` to the bus and store their webhook deliveries, their messages added to
    `deliveries` for the batch to queue."""
    if not events:
        return
    dispatched = container().event_dispatcher.dispatch(events, subscriptions, deliveries.messages)
    published: dict[str, Any] = {"events": [e.type.value for e in events], "deliveries": dispatched.queued}
    if dispatched.cut_down:
        # Subscribers and the bus got these without the lists named: which, and why, for operators.
        published["cut_down"] = [{"id": e.id, "omitted": e.data["omitted"]} for e in dispatched.cut_down]
    logger.info("events published", extra=published)
    metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=len(events))
    if dispatched.queued:
        metrics.add_metric(name="WebhookDeliveriesQueued", unit=MetricUnit.Count, value=dispatched.queued)
    if dispatched.cut_down:
        metrics.add_metric(name="EventsCutDown", unit=MetricUnit.Count, value=len(dispatched.cut_down))


def appended_entries(images: dict[str, Any]) -> list[dict[str, Any]]:
    """The history entries the change of a stream record appended, decoded (a cancel's says why):
    those its new image's `history` holds beyond its old image's. The move of an order's older
    entries to a page (bound_history) is a write of its own, which changes no document."""
    new = ((images.get("NewImage") or {}).get("history") or {}).get("L") or []
    old = ((images.get("OldImage") or {}).get("history") or {}).get("L") or []
    return [json.loads(order_codec.stored_json(entry)) for entry in new[len(old) :]]


def notify(
    old: dict[str, Any] | None, new: dict[str, Any], seconds_left: Callable[[], float] | None = None,
    entries: Callable[[], list[dict[str, Any]]] | None = None,
) -> None:  # fmt: skip
    """The customer notifications the change means, recorded and handed to the notifier plugins;
    those they failed to send, or did not answer for within `seconds_left()` (None: no limit),
    deferred to the reconciler's retry pass (the record succeeds). `entries`: the history entries
    the change appended, read only for a cancel."""
    notified = container().notifier.notify(old, new, seconds_left=seconds_left, entries=entries)
    if notified.sent:
        logger.info("customer notified", extra={"notifications": [n.kind.value for n in notified.sent]})
        metrics.add_metric(name="CustomerNotifications", unit=MetricUnit.Count, value=len(notified.sent))
    for notification, error in notified.deferred:
        # The error's type alone: a plugin's words may hold a card number or a host.
        logger.warning("customer notification deferred: the notifier failed, the reconciler retries it",
                       extra={"notification_id": notification.id, "kind": notification.kind.value,
                              "error": error})  # fmt: skip
    if notified.deferred:
        metrics.add_metric(name="NotificationsDeferred", unit=MetricUnit.Count, value=len(notified.deferred))
    for notification, why in notified.refused:
        # Its plugin needs mending: sent, it would be sent again at every retry, answered the same.
        logger.error("customer notification sent, but a notifier plugin's answer is refused: recorded sent,"
                     " by ways unknown", extra={"notification_id": notification.id,
                                                "kind": notification.kind.value, "error": why})  # fmt: skip


def update_aggregates(old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Customer and report counters, before the events: both are safe to run again (the counters
    are applied once per (order, version)), and a failure of either retries the record."""
    if not str(new.get("id", "")).startswith("ord_") or "status" not in new:
        return
    store = container().aggregate_store
    change = aggregate_change(old, new, store.filing, store.went_by)
    if not change.empty and store.apply(change):
        metrics.add_metric(name="AggregateUpdates", unit=MetricUnit.Count, value=len(change.updates))


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    # Partial batch response: the stream retries from the first failed record, and the records
    # after it are failed unprocessed (keeping each order's changes in order), as are those there
    # is no time left for (RECORD_RESERVE_MILLIS); a batch failed whole is bisected, then its
    # record handed to the on-failure queue.
    # The deliveries' messages are queued after the batch's last record, those of a record that
    # failed after storing its deliveries too (a copy its retry queues again is dropped by the
    # worker once the first is tried); a batch failed whole queues none, and its retry queues them.
    subscriptions, deliveries = _Subscriptions(), _Deliveries()

    def seconds_left() -> float:
        return (context.get_remaining_time_in_millis() - NOTIFY_RESERVE_MILLIS) / 1000

    answer = batch_response(
        event=event,
        record_handler=lambda record: publish_changes(record, subscriptions, deliveries, seconds_left),
        processor=processor,
        context=context,
    )
    deliveries.queue()
    processor.say_if_cut_short(logger, event)
    return answer

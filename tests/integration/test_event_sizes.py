"""The largest orders' events against the limits on their way out, on moto with EventBridge's own
limits put on its client (moto enforces none of them): 256 KB an entry and 256 KB a PutEvents call
(Detail, DetailType, Source and Time counted as AWS counts them), entries refused one by one
(`FailedEntryCount`), and DynamoDB's 400 KB for a delivery's record (moto enforces that one)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from botocore.exceptions import ClientError

from core.domain_events import EVENT_BYTES, DomainEvent, EventType, outgoing
from core.models import (
    Address,
    Allocation,
    Customer,
    Fulfillment,
    Hold,
    LineTaxRate,
    Order,
    OrderLine,
    Payment,
    PaymentRefund,
    RefundedUnits,
    Shipment,
    ShipmentLine,
    Totals,
)
from core.money import Money
from core.status import OrderStatus, PaymentStatus, ShipmentStatus
from functions.adapters import order_codec
from functions.adapters.webhooks import PUT_EVENTS_BYTES, EventBridgePublisher, entry_size
from tests.integration.test_events_and_webhooks import Context, drain, subscribe, wired  # noqa: F401
from tests.integration.test_reconciler import emitted

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WIDE = "😀"  # four bytes of UTF-8: a field at its limit in characters, at its most in bytes


def usd(amount: str) -> Money:
    return Money(amount=Decimal(amount), currency="USD")


def text(limit: int) -> str:
    return WIDE * limit


def the_largest_order(
    status: OrderStatus, delivered: int, appeasements: int = 0, lines: int = 100, returned: bool = True
) -> Order:
    """The largest order POST /orders takes (100 lines, each field a client sends at its limit in
    characters of four bytes), split into a shipment per line, every line returned in part on a
    return of its own (a refund each), held with a note at its limit; `delivered` of its shipments
    delivered and the others shipped, and `appeasements` refunds besides (nothing bounds them);
    not `returned`, none of its lines yet; `lines` fewer lines make a small order of the same kind."""
    most = usd("999999999.99")
    numbers = range(1, lines + 1)
    kept = [
        OrderLine(
            line_id=f"L{n}",
            sku=f"SKU-{n:03d}-" + "x" * 119,
            quantity=10_000,
            unit_price=most,
            discount=most,
            tax=most,
            tax_rate=LineTaxRate(rate=Decimal("0.0725"), name=text(100)),
            total=most,
            cancelled_quantity=100,
            shipped_quantity=9_900,
            returned_quantity=1 if returned else 0,
        )
        for n in numbers
    ]
    shipments = [
        Shipment(
            id=f"shp_{n:026d}",
            location_id=f"WH-{n:03d}-" + "w" * 120,
            lines=[ShipmentLine(line_id=f"L{n}", quantity=9_900)],
            carrier="c" * 32,
            service="s" * 32,
            tracking_number="T" * 60,
            label_url=f"labels/shp_{n}.pdf",
            status=ShipmentStatus.DELIVERED if n <= delivered else ShipmentStatus.SHIPPED,
            shipped_at=AT,
            delivered_at=AT if n <= delivered else None,
            captured=most,
        )
        for n in numbers
    ]
    refunds = [
        PaymentRefund(
            id=f"ref_return_{n:020d}",
            amount=most,
            reason=text(200),
            kind="return",
            return_id=f"rma_{n:026d}",
            reference="r" * 64,
            at=AT,
            lines=[RefundedUnits(line_id=f"L{n}", quantity=1, amount=most)],
        )
        for n in numbers
        if returned
    ] + [
        PaymentRefund(id=f"ref_goodwill_{n:018d}", amount=usd("0.01"), reason=text(200), reference="r" * 64, at=AT)
        for n in range(appeasements)
    ]
    address = Address(
        name=text(200), line1=text(200), line2=text(200), city=text(200), region=text(100), postal_code="9" * 20,
        country="DE",
    )  # fmt: skip
    return Order(
        id="ord_" + "L" * 26,
        status=status,
        channel="c" * 64,
        external_id="e" * 128,
        currency="USD",
        customer=Customer(id="C" * 128, email="a" * 240 + "@example.com", name=text(200)),
        lines=kept,
        shipping_address=address,
        fulfillment=Fulfillment(),
        shipping_method="m" * 32,
        promo_codes=[f"CODE-{n}" + "P" * 25 for n in range(10)],
        hold=Hold(reason="other", note=text(500), since=AT) if status is OrderStatus.ON_HOLD else None,
        totals=Totals(subtotal=most, discount=most, shipping=most, tax=most, grand_total=most),
        payment=Payment(
            method="test",
            status=PaymentStatus.PARTIALLY_REFUNDED,
            authorized=most,
            captured=most,
            refunded=most,
            authorization="a" * 64,
            refunds=refunds,
        ),
        allocations=[Allocation(line_id=f"L{n}", location_id=f"WH-{n:03d}-" + "w" * 120, quantity=1) for n in numbers],
        shipments=shipments,
        created_at=AT,
        updated_at=AT,
        version=delivered + appeasements + 2,
    )


def image(order: Order) -> dict[str, Any]:
    """The order's item as the stream's image carries it (its document compressed, in base64)."""
    document = base64.b64encode(order_codec.compress(order.stored_json().encode())).decode()
    return {"id": {"S": order.id}, "status": {"S": order.status.value}, "doc": {"B": document}}


def a_change(old: Order, new: Order) -> dict[str, Any]:
    images = {"Keys": {"id": {"S": new.id}}, "OldImage": image(old), "NewImage": image(new), "SequenceNumber": "100"}
    return {"Records": [{"eventID": "e0", "eventName": "MODIFY", "eventSource": "aws:dynamodb", "dynamodb": images}]}


class TheBus:
    """EventBridge's limits on the events function's client: a call over PUT_EVENTS_BYTES is refused
    whole, as AWS refuses it, and the entries `refuse` names by detail-type are refused one by one
    (`FailedEntryCount`) while `refusals` lasts. Each call's entries are recorded as sent."""

    def __init__(self, client: Any):
        self.calls: list[list[dict[str, Any]]] = []
        self.taken: list[dict[str, Any]] = []
        self.refuse: set[str] = set()
        self.refusals = 0
        self._client = client
        client.meta.events.register("before-call.eventbridge.PutEvents", self._put_events)

    def close(self) -> None:
        self._client.meta.events.unregister("before-call.eventbridge.PutEvents", self._put_events)

    def _put_events(self, params: dict[str, Any], **_: Any) -> Any:
        entries = json.loads(params["body"])["Entries"]
        self.calls.append(entries)
        if sum(map(entry_size, entries)) > PUT_EVENTS_BYTES:
            error = {
                "Code": "ValidationException",
                "Message": "Total size of the entries in the request is over the limit.",
            }
            raise ClientError({"Error": error}, "PutEvents")
        refused = [entry["DetailType"] in self.refuse and self.refusals > 0 for entry in entries]
        self.taken += [json.loads(entry["Detail"]) for entry, no in zip(entries, refused, strict=True) if not no]
        if not any(refused):
            return None  # moto answers
        self.refusals -= 1
        answers = [
            {"ErrorCode": "InternalFailure", "ErrorMessage": "try again"} if no else {"EventId": f"bus-{n}"}
            for n, no in enumerate(refused)
        ]
        return _Answered(), {"FailedEntryCount": sum(refused), "Entries": answers}


class _Answered:
    status_code = 200


@pytest.fixture
def bus(wired) -> Iterator[TheBus]:  # noqa: F811
    from functions.events.app import container

    watched = TheBus(container().eventbridge)
    yield watched
    watched.close()


def test_the_events_of_one_change_of_the_largest_order_go_out_whole_in_calls_that_fit(aws, wired, bus):  # noqa: F811
    """Delivering the last parcel of the largest order is `shipment.delivered` and `order.delivered`,
    each carrying the whole order (170 KB each): together over EventBridge's 256 KB a call, which
    refused them both, and the record again on every retry until it went to the failure queue."""
    from functions.events.app import lambda_handler

    old = the_largest_order(OrderStatus.SHIPPED, delivered=99, returned=False)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=100, returned=False)
    subscriber = subscribe("http://127.0.0.1:9/all", ["*"], channel=new.channel)

    assert lambda_handler(a_change(old, new), Context()) == {"batchItemFailures": []}

    sizes = [entry_size(entry) for call in bus.calls for entry in call]
    assert len(sizes) == 2 and all(150 * 1024 < size <= PUT_EVENTS_BYTES for size in sizes), sizes
    assert all(sum(map(entry_size, call)) <= PUT_EVENTS_BYTES for call in bus.calls)
    sent = bus.taken
    assert sorted(event["type"] for event in sent) == ["order.delivered", "shipment.delivered"]
    for event in sent:  # whole: the order as the API shows it
        assert "omitted" not in event["data"] and len(event["data"]["order"]["lines"]) == 100
    assert len(drain(wired["sqs"], wired["deliveries"])) == 2
    from functions.events.app import container

    records, _ = container().webhook_store.deliveries(subscriber.id, 10, None)
    assert sorted(json.loads(record.body)["id"] for record in records) == sorted(event["id"] for event in sent)


def test_an_event_over_an_entrys_256_kb_goes_out_without_the_orders_refunds_and_says_so(aws, wired, bus):  # noqa: F811
    """Nothing bounds an order's refunds: the largest order with every line returned is 295 KB, and
    with a thousand refunds besides 1.4 MB, which no EventBridge entry (256 KB) nor delivery record
    (400 KB) holds: the bus refused the call, moto's DynamoDB the record. Its event goes out, to the bus
    and to subscribers alike, without `order.payment.refunds`, `data.omitted` naming it; the refund
    the event is about is whole."""
    from functions.events.app import container, lambda_handler

    old = the_largest_order(OrderStatus.DELIVERED, delivered=100, appeasements=999)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=100, appeasements=1000)
    subscriber = subscribe("http://127.0.0.1:9/all", ["refund.succeeded"])

    assert lambda_handler(a_change(old, new), Context()) == {"batchItemFailures": []}

    [call] = bus.calls
    [event] = bus.taken
    assert entry_size(call[0]) <= PUT_EVENTS_BYTES
    assert event["type"] == "refund.succeeded" and event["data"]["omitted"] == ["order.payment.refunds"]
    assert "refunds" not in event["data"]["order"]["payment"]
    assert len(event["data"]["order"]["lines"]) == 100 and len(event["data"]["order"]["shipments"]) == 100
    assert event["data"]["refund"]["id"] == new.payment.refunds[-1].id
    [record], _ = container().webhook_store.deliveries(subscriber.id, 10, None)
    assert json.loads(record.body) == event
    assert len(record.body.encode()) <= EVENT_BYTES


def test_an_entry_the_bus_refuses_is_sent_again_alone_and_the_others_of_its_call_once(aws, wired, bus):  # noqa: F811
    """EventBridge may refuse some entries of a call (`FailedEntryCount`) and take the others: the
    refused one is sent again on its own, so no event of the call reaches the bus twice."""
    from functions.events.app import lambda_handler

    old = the_largest_order(OrderStatus.SHIPPED, delivered=0, lines=1)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=1, lines=1)
    bus.refuse, bus.refusals = {"order.delivered"}, 1

    assert lambda_handler(a_change(old, new), Context()) == {"batchItemFailures": []}

    types = [[entry["DetailType"] for entry in call] for call in bus.calls]
    assert types == [["order.delivered", "shipment.delivered"], ["order.delivered"]]
    assert sorted(event["type"] for event in bus.taken) == ["order.delivered", "shipment.delivered"]


def test_an_entry_the_bus_keeps_refusing_fails_its_record_after_its_own_attempts_alone(aws, wired, bus):  # noqa: F811
    """Refused at every attempt, the record fails (the stream retries it, then hands it to the
    failure queue); the entries of its call that the bus took were sent once."""
    from functions.adapters.webhooks import PUT_EVENTS_ATTEMPTS
    from functions.events.app import lambda_handler

    old = the_largest_order(OrderStatus.SHIPPED, delivered=0, lines=1)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=1, lines=1)
    bus.refuse, bus.refusals = {"order.delivered"}, 1_000

    with pytest.raises(BatchProcessingError):  # its one record failed
        lambda_handler(a_change(old, new), Context())

    sent = [entry["DetailType"] for call in bus.calls for entry in call]
    assert sent.count("order.delivered") == PUT_EVENTS_ATTEMPTS and sent.count("shipment.delivered") == 1


@pytest.mark.parametrize("type_", list(EventType))
def test_an_event_of_any_type_at_the_most_an_event_may_weigh_fits_an_entry(type_: EventType):
    """EVENT_BYTES leaves room in an entry for what EventBridge counts besides the event itself."""
    event = DomainEvent(id="evt_1", type=type_, created_at=AT, data={})
    room = EVENT_BYTES - len(event.model_dump_json().encode())
    fullest = event.model_copy(update={"data": {"note": "x" * (room - len('"note":""'))}})
    assert len(fullest.model_dump_json().encode()) == EVENT_BYTES
    assert entry_size(EventBridgePublisher(None, "bus")._entry(outgoing(fullest))) <= PUT_EVENTS_BYTES


def serializations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the events serialized to JSON from now on, one entry per serialization."""
    from pydantic import BaseModel

    serialized: list[str] = []

    def counted(self: DomainEvent, **options: Any) -> str:
        serialized.append(self.id)
        return BaseModel.model_dump_json(self, **options)

    monkeypatch.setattr(DomainEvent, "model_dump_json", counted)
    return serialized


def test_each_event_of_the_largest_order_is_serialized_once_for_the_bus_and_its_deliveries(
    aws,
    wired,  # noqa: F811
    bus,
    monkeypatch,
):
    """Each event was serialized three times (weighed against the entry's 256 KB, put on the bus,
    stored as its delivery's body): a 170 KB event of the largest order paid for its JSON thrice in
    billed duration. Now its JSON is made once and the same text weighed, sent and stored."""
    from functions.events.app import container, lambda_handler

    old = the_largest_order(OrderStatus.SHIPPED, delivered=99, returned=False)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=100, returned=False)
    subscriber = subscribe("http://127.0.0.1:9/all", ["*"], channel=new.channel)
    serialized = serializations(monkeypatch)

    assert lambda_handler(a_change(old, new), Context()) == {"batchItemFailures": []}

    sent = [event["id"] for event in bus.taken]
    assert len(sent) == 2 and sorted(serialized) == sorted(sent)
    records, _ = container().webhook_store.deliveries(subscriber.id, 10, None)
    details = {json.loads(entry["Detail"])["id"]: entry["Detail"] for call in bus.calls for entry in call}
    assert {record.event_id: record.body for record in records} == details  # the very same text


def test_an_event_over_its_room_is_serialized_once_whole_and_once_per_list_it_leaves_out(
    aws,
    wired,  # noqa: F811
    bus,
    monkeypatch,
):
    """Cut down, an event was serialized five times: whole to weigh it, once more to copy its data,
    without its refunds to weigh it again, then for the bus and for its delivery."""
    from functions.events.app import lambda_handler

    old = the_largest_order(OrderStatus.DELIVERED, delivered=100, appeasements=199)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=100, appeasements=200)
    subscribe("http://127.0.0.1:9/all", ["refund.succeeded"])
    serialized = serializations(monkeypatch)

    assert lambda_handler(a_change(old, new), Context()) == {"batchItemFailures": []}

    [event] = bus.taken
    assert event["data"]["omitted"] == ["order.payment.refunds"] and serialized == [event["id"]] * 2


@pytest.fixture
def metrics_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """EMF on stdout, starting and leaving empty (powertools keeps one metric set for every instance)."""
    from functions.events.app import metrics

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()


def test_an_event_cut_down_for_the_bus_is_counted_and_logged_for_operators(aws, wired, bus, metrics_on, capsys, caplog):  # noqa: F811
    """Subscribers got an event without its order's refunds and nothing told operators: no metric,
    and the log line named only the types. Now `EventsCutDown` counts it and the line names the
    event and what it left out."""
    from functions.events.app import lambda_handler

    old = the_largest_order(OrderStatus.DELIVERED, delivered=100, appeasements=199)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=100, appeasements=200)
    assert lambda_handler(a_change(old, new), Context()) == {"batchItemFailures": []}
    printed = capsys.readouterr().out

    [event] = bus.taken
    assert emitted(printed)["EventsCutDown"] == 1
    [line] = [record for record in caplog.records if record.getMessage() == "events published"]
    assert line.cut_down == [{"id": event["id"], "omitted": ["order.payment.refunds"]}]


def test_events_that_go_out_whole_count_none_cut_down(aws, wired, bus, metrics_on, capsys, caplog):  # noqa: F811
    from functions.events.app import lambda_handler

    old = the_largest_order(OrderStatus.SHIPPED, delivered=99, returned=False)
    new = the_largest_order(OrderStatus.DELIVERED, delivered=100, returned=False)
    assert lambda_handler(a_change(old, new), Context()) == {"batchItemFailures": []}
    printed = capsys.readouterr().out

    assert emitted(printed) == {"EventsPublished": 2}
    [line] = [record for record in caplog.records if record.getMessage() == "events published"]
    assert not hasattr(line, "cut_down")

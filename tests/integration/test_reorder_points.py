"""Reorder points on moto: the Inventory stream's own records (read from moto's stream, passed
through the template's filters) crossing a point make `inventory.low` and one draft purchase order
line, once per crossing even when redelivered or when many orders drain stock at once; a receipt
and a second fall grow the same draft, a submitted draft is followed by a new one; and the routes
through the in-process API."""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import purchasing
from core.ids import reservation_key
from core.models import ReorderSettings
from core.money import Money
from core.purchasing import NewPurchaseOrder, PurchaseOrder, PurchaseOrderFilter, Receipt, Submission, VendorRequest
from core.status import PurchaseOrderStatus
from core.webhooks import MAX_WEBHOOKS, IssuedWebhook
from functions.adapters.aws_clients import aws_client
from functions.bootstrap import Config, Container, bootstrap
from infra.local.event_sources import compile_filters, matches_filters
from infra.local.template import Template
from tests.builders import location, product
from tests.e2e.client import ADMIN, Catalog, assert_error, put_network, unique
from tests.fakes import FakeLabels
from tests.integration.conftest import PASS_MACHINE, run_threads
from tests.integration.conftest import written_once as tables_written_once
from tests.integration.documented_events import assert_documented, openapi_document
from tests.integration.in_process import InProcessApi, in_process_api
from tests.integration.test_backorders import Context, Ticking, another_functions_calls, metrics_on  # noqa: F401 (a fixture)
from tests.integration.test_events_and_webhooks import drain, subscription_reads

PO = PurchaseOrderStatus
COST = Money.of("4.00", "USD")


@functools.cache
def backorder_stream_filters() -> list[dict[str, Any]] | None:
    """The template's filters on the BackorderFunction's Inventory stream, compiled once per test
    process: loading template.yaml (a deep copy of the parsed document) cost more than the rest of
    a test's stream set-up, and the template does not change while the tests run."""
    events = Template.load().properties("AWS::Serverless::Function")["BackorderFunction"]["Events"]
    return compile_filters(events["InventoryStream"]["Properties"]["FilterCriteria"], "test")


@functools.cache
def client(service: str) -> Any:
    """The module's client for `service` (the functions' own settings, aws_client), made once per
    test process: each test's moto account is new, but a client holds no account state (moto
    answers whatever client asks, under whichever account is started) and boto3's session is kept
    (tests/integration/conftest.py). Eight clients a test at ~5 ms of CPU each were a tenth of
    this file's time."""
    return aws_client(service)


class InventoryStream:
    """The Inventory table's stream as the BackorderFunction mapping hands it over: each new record
    in Lambda's shape, kept only when the template's filters pass it. From its first record, or
    from the one after `after` (a sequence number: where a copied set-up had read to)."""

    def __init__(self, aws: Any, after: str | None = None):
        self._streams = client("dynamodbstreams")
        arn = aws.dynamodb.describe_table(TableName=aws.tables["InventoryTable"])["Table"]["LatestStreamArn"]
        shard = self._streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        start = {"ShardIteratorType": "TRIM_HORIZON"}
        if after is not None:
            start = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": after}
        self._iterator = self._streams.get_shard_iterator(StreamArn=arn, ShardId=shard, **start)["ShardIterator"]
        self._filters = backorder_stream_filters()
        self.read_to = after  # the last record's sequence number read, whether kept or not

    def records(self) -> list[dict[str, Any]]:
        answer = self._streams.get_records(ShardIterator=self._iterator, Limit=1000)
        self._iterator = answer["NextShardIterator"]
        found = []
        for record in answer.get("Records", []):
            self.read_to = record["dynamodb"]["SequenceNumber"]
            dynamodb = dict(record["dynamodb"])
            created = dynamodb.get("ApproximateCreationDateTime")
            if isinstance(created, datetime):
                dynamodb["ApproximateCreationDateTime"] = float(int(created.timestamp()))
            shaped = {"eventID": record["eventID"], "eventName": record["eventName"],
                      "eventSource": "aws:dynamodb", "dynamodb": dynamodb}  # fmt: skip
            if matches_filters(self._filters, shaped):
                found.append(shaped)
        return found


@dataclass
class Buyer:
    container: Container
    clock: Ticking
    aws: Any
    sqs: Any
    tap: str
    deliveries: str
    read_from: InventoryStream | None = None

    @property
    def stream(self) -> InventoryStream:
        """The Inventory stream, from its first record unless a copied set-up read some (written_once)."""
        if self.read_from is None:
            self.read_from = InventoryStream(self.aws)
        return self.read_from

    def consume(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        from functions.backorders import app

        with app.container.override(self.container):
            return app.lambda_handler({"Records": records}, Context())

    def drafts(self) -> list[Any]:
        return self.container.purchasing.list(PurchaseOrderFilter(status=PO.DRAFT), 100, None)[0]

    def on_bus(self) -> list[dict[str, Any]]:
        return [json.loads(m["Body"])["detail"] for m in drain(self.sqs, self.tap)]

    def deliveries_queued(self) -> set[str]:
        """The webhook deliveries queued: a delivery not yet tried is queued again by a redelivered
        record (its first message may be what failed), under the same delivery id."""
        return {json.loads(m["Body"])["delivery_id"] for m in drain(self.sqs, self.deliveries)}

    def stock(self, sku: str = "MUG", units: int = 10) -> None:
        self.container.inventory_repository.set_on_hand(sku, "wh-east", units, reason="stock_take")

    def reserve(self, orders: int, sku: str = "MUG", first: int = 0, each: int = 1) -> None:
        """`orders` reservations of `each` units. Each one's stream record carries the item's whole
        map of open reservations, twice (its old and new image): a fall whose number of orders is
        not what a test is about takes a few of several units, not dozens of one (moto's reading
        of 30 such records was half of a test's time)."""
        for n in range(first, first + orders):
            self.container.inventory_repository.reserve(sku, "wh-east", reservation_key(f"ord_{n:024d}", "l1"), each)

    def point(self, sku: str = "MUG", unit_cost: Money | None = COST, reorder_point: int = 5) -> None:
        settings = ReorderSettings(
            reorder_point=reorder_point, reorder_quantity=20, vendor_id="acme", unit_cost=unit_cost
        )
        self.container.purchasing_repository.set_reorder(sku, "wh-east", settings)


@pytest.fixture
def buyer(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Buyer]:
    sqs = client("sqs")
    events = client("events")
    events.create_event_bus(Name="test-events")
    tap = sqs.create_queue(QueueName="bus-tap")["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="everything", EventBusName="test-events", EventPattern=json.dumps({"source": ["oms"]}))
    events.put_targets(Rule="everything", EventBusName="test-events", Targets=[{"Id": "tap", "Arn": tap_arn}])
    deliveries = sqs.create_queue(QueueName="webhook-deliveries")["QueueUrl"]
    sfn = client("stepfunctions")
    arn = sfn.create_state_machine(name="OrderWorkflow", type="EXPRESS", definition=json.dumps(PASS_MACHINE),
                                   roleArn="arn:aws:iam::123456789012:role/workflow")["stateMachineArn"]  # fmt: skip
    monkeypatch.setenv("ORDER_WORKFLOW_ARN", arn)
    monkeypatch.setenv("EVENT_BUS_NAME", "test-events")
    monkeypatch.setenv("WEBHOOK_QUEUE_URL", deliveries)
    clock = Ticking()
    container = bootstrap(
        Config.from_env(), clock=clock, label_store=FakeLabels(),
        dynamodb=client("dynamodb"), sqs=sqs, stepfunctions=sfn, eventbridge=events,
    )  # fmt: skip
    buyer = Buyer(container, clock, aws, sqs, tap, deliveries)

    def shop() -> None:
        for sku in ("MUG", "CUP"):
            container.catalog_repository.put_product(product(sku, "9.00"))
        container.catalog_repository.put_location(location("wh-east"))
        container.purchasing.put_vendor("acme", VendorRequest(name="Acme", lead_time_days=10))
        container.webhook_store.add(
            IssuedWebhook(
                id="whk_" + "a" * 24,
                url="https://example.com/hook",
                events=["inventory.low"],
                channel=None,
                created_at=datetime(2026, 12, 1, tzinfo=UTC),
                secret="whsec_test",
            ),
            MAX_WEBHOOKS,
        )

    written_once(buyer, "the shop", shop)
    # The suite's mock_aws applies the local runtime's `transactions` patch (tests/conftest.py): moto
    # alone deep-copies every table a transaction names, a draft's 100 lines ~0.6 s a buy.
    yield buyer


def written_once(buyer: Buyer, name: Any, set_up: Callable[[], Any]) -> Any:
    """What `set_up` answers, and its writes in the test's tables: run by the file's first test to
    ask for `name`, copied into each later one's (conftest.written_once), the clock read as often
    and the stream read as far, as the redelivery matrix's worlds get their seed. Its writes are
    the same each time and no test's subject; written again at every test, the shop alone was a
    twentieth of the file's CPU. Nothing it sends off DynamoDB (events on the bus, webhook
    deliveries: never copied) may be left queued."""

    def written() -> tuple[Any, int, str | None]:
        answer = set_up()
        for queue in (buyer.tap, buyer.deliveries):
            waiting = buyer.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"])
            assert waiting["Attributes"]["ApproximateNumberOfMessages"] == "0", f"{name} left messages on {queue}"
        return answer, buyer.clock.readings, None if buyer.read_from is None else buyer.read_from.read_to

    (answer, readings, read_to), copied = tables_written_once(buyer.aws.tables, name, written)
    if copied:
        buyer.clock.readings = readings
        buyer.read_from = None if read_to is None else InventoryStream(buyer.aws, after=read_to)
    return answer


@pytest.fixture(autouse=True)
def only_granted_calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every call the backorders function makes in these tests (a draft, its records and the
    crossing's marker; inventory.low on the bus and its webhook deliveries) is one the template
    grants it, by table, key and action: moto lets through what AWS refuses."""
    if "buyer" not in request.fixturenames:
        yield
        return
    from tests.template_iam import handlers_checked

    buyer, aws = request.getfixturevalue("buyer"), request.getfixturevalue("aws")
    names = {
        "state_machine_arns": {"OrderWorkflow": os.environ["ORDER_WORKFLOW_ARN"]},
        "event_bus_names": {"EventBus": os.environ["EVENT_BUS_NAME"]},
        "queue_urls": {"WebhookDeliveryQueue": buyer.deliveries},
    }
    with handlers_checked(monkeypatch, {"BackorderFunction": "functions.backorders.app"}, aws.tables, **names):
        yield


def test_a_fall_below_the_point_makes_a_draft_and_inventory_low_once_even_when_redelivered(buyer: Buyer):
    buyer.stock()
    buyer.point()
    buyer.reserve(3)  # 10 -> 7: above the point
    buyer.reserve(3, first=3)  # 7 -> 4: below it, crossed by the record of 5 -> 4
    records = buyer.stream.records()

    assert buyer.consume(records) == {"batchItemFailures": []}
    again = buyer.consume(records)  # the whole batch redelivered

    assert again == {"batchItemFailures": []}
    [draft] = buyer.drafts()
    assert (draft.vendor_id, draft.location_id, draft.status) == ("acme", "wh-east", PO.DRAFT)
    assert [(line.sku, line.quantity, line.unit_cost) for line in draft.lines] == [("MUG", 20, COST)]
    assert draft.expected_at == draft.created_at + timedelta(days=10)  # the vendor's lead time
    assert draft.updated_at == draft.created_at  # made, and not changed since
    published = buyer.on_bus()
    assert [e["type"] for e in published] == ["inventory.low", "inventory.low"]  # published again, same id
    assert published[0]["id"] == published[1]["id"]
    assert published[0]["data"] == {"inventory": {"sku": "MUG", "location_id": "wh-east", "available": 4,
                                                  "reorder_point": 5}}  # fmt: skip
    assert_documented(openapi_document(), published[0])  # as GET /openapi.json's webhook says
    assert len(buyer.deliveries_queued()) == 1  # one webhook delivery for the event (its message sent again)


def test_inventory_low_is_matched_to_subscriptions_read_without_their_signing_secrets(buyer: Buyer, monkeypatch):
    # The stock stream's function queues inventory.low's deliveries: it needs a subscription's
    # types, channel and id, never what signs them (only the API and the delivery function do).
    buyer.stock()
    buyer.point()
    buyer.reserve(3, each=2)  # 10 -> 4: below the point

    with subscription_reads(monkeypatch) as read:
        assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert len(buyer.deliveries_queued()) == 1  # matched and queued all the same
    assert read and all("secret" not in item for item in read), read


def test_the_filters_pass_a_fall_to_nothing_below_a_point_and_no_fall_without_one(buyer: Buyer):
    buyer.stock("CUP")
    buyer.reserve(1, sku="CUP", each=10)  # 10 -> 0 with no point: neither filter passes it
    buyer.stock("MUG", units=5)
    buyer.point("MUG")
    buyer.reserve(1, each=5)  # 5 -> 0: only the reorder filter passes it (nothing is left available)
    buyer.point("CUP")  # set with nothing available: the reorder filter passes it, the code finds no fall

    kept = buyer.stream.records()
    assert [(r["dynamodb"]["Keys"]["sku"]["S"], r["dynamodb"]["NewImage"]["available"]["N"]) for r in kept] == [
        ("CUP", "10"), ("MUG", "5"), ("MUG", "5"), ("MUG", "0"), ("CUP", "0")
    ]  # fmt: skip
    buyer.consume(kept)
    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20)]
    [event] = buyer.on_bus()
    assert event["data"]["inventory"] == {"sku": "MUG", "location_id": "wh-east", "available": 0, "reorder_point": 5}


def test_a_point_set_when_stock_is_already_below_it_waits_for_the_next_fall(buyer: Buyer):
    buyer.stock()
    buyer.reserve(7)  # 10 -> 3
    buyer.point()
    buyer.reserve(1, first=7)  # 3 -> 2: below, but never crossed
    buyer.consume(buyer.stream.records())
    assert buyer.drafts() == [] and buyer.on_bus() == []

    buyer.container.inventory_repository.adjust("MUG", "wh-east", 10, reason="receipt")  # 2 -> 12
    buyer.reserve(8, first=8)  # 12 -> 4
    buyer.consume(buyer.stream.records())
    assert len(buyer.drafts()) == 1


def test_a_point_raised_above_the_stock_crosses_it_once(buyer: Buyer):
    """10 available, the point at 5; a buyer raises it to 30. Compared with the new point on both
    sides, the raise crossed nothing, and no fall after it did either (each started below 30): the
    raised point bought nothing, and sent no inventory.low, until stock rose past 30, which nothing
    bought would do. Stock at or above the point before the raise and below it after crosses it."""
    buyer.stock()
    buyer.point()
    buyer.consume(buyer.stream.records())
    buyer.point(reorder_point=30)

    records = buyer.stream.records()
    assert buyer.consume(records) == buyer.consume(records) == {"batchItemFailures": []}  # redelivered too
    buyer.reserve(2, each=3)  # 10 -> 4: below the point already, no second crossing
    buyer.consume(buyer.stream.records())

    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20)]
    published = buyer.on_bus()
    assert {e["id"] for e in published} == {published[0]["id"]}
    assert published[0]["data"]["inventory"] == {"sku": "MUG", "location_id": "wh-east", "available": 10,
                                                 "reorder_point": 30}  # fmt: skip
    buyer.point(reorder_point=8)  # lowered: nothing crosses
    buyer.consume(buyer.stream.records())
    assert len(buyer.drafts()[0].lines) == 1 and buyer.drafts()[0].lines[0].quantity == 20 and buyer.on_bus() == []


def test_a_second_fall_the_draft_covers_grows_nothing_another_sku_joins_it_and_a_submit_makes_a_new_one(
    buyer: Buyer,
):
    """Units on a draft are bought: stock rising back past the point and falling again while the
    draft waits for a person grew its line by reorder_quantity each time, without end."""
    buyer.stock()
    buyer.point()
    buyer.point("CUP", unit_cost=None)
    buyer.stock("CUP")
    buyer.reserve(6)
    buyer.consume(buyer.stream.records())
    [first] = buyer.drafts()

    buyer.container.inventory_repository.adjust("MUG", "wh-east", 5, reason="receipt")  # 4 -> 9
    buyer.reserve(6, first=100)  # 9 -> 3: crossed again, but 3 + the 20 drafted is above the point
    buyer.reserve(6, sku="CUP", first=200)  # another sku, same vendor and location
    buyer.consume(buyer.stream.records())
    [grown] = buyer.drafts()
    assert grown.id == first.id and grown.version == first.version + 1
    assert [(line.sku, line.quantity, line.unit_cost) for line in grown.lines] == [("MUG", 20, COST), ("CUP", 20, None)]

    submitted = buyer.container.purchasing.submit(
        grown.id,
        Submission.model_validate({"lines": [{"sku": "CUP", "unit_cost": {"amount": "2.00", "currency": "USD"}}]}),
    )
    assert submitted.status is PO.OPEN
    receipt = Receipt.model_validate({"lines": [{"sku": "MUG", "quantity": 20}, {"sku": "CUP", "quantity": 20}]})
    buyer.container.purchasing.receive(submitted.id, receipt, "all of it")  # MUG 3 -> 23, nothing on order
    buyer.reserve(4, first=300, each=5)  # 23 -> 3
    buyer.consume(buyer.stream.records())
    [second] = buyer.drafts()
    assert second.id != grown.id and [(line.sku, line.quantity) for line in second.lines] == [("MUG", 20)]
    assert len({e["id"] for e in buyer.on_bus()}) == 4


def test_a_draft_made_before_drafts_were_named_by_sku_still_counts_its_units_as_bought(buyer: Buyer):
    """A draft whose line was added before the sku's line items were written (an earlier release)
    is read as the open draft of the point's vendor: its 20 units are bought, so stock rising back
    past the point and falling again while it waits buys nothing more. Counted as nothing, its line
    grew by reorder_quantity at each fall."""
    from functions.adapters.purchasing import DRAFT_LINES_PK

    buyer.stock()
    buyer.point()
    buyer.reserve(6)  # 10 -> 4: a draft of 20
    buyer.consume(buyer.stream.records())
    table = buyer.container.config.catalog_table
    for named in ("acme#wh-east#MUG", "wh-east#MUG"):  # as the earlier release left it: no line items
        client("dynamodb").delete_item(TableName=table, Key={"pk": {"S": DRAFT_LINES_PK}, "sk": {"S": named}})
    buyer.container.inventory_repository.adjust("MUG", "wh-east", 5, reason="receipt")  # 4 -> 9

    buyer.reserve(6, first=100)  # 9 -> 3: crossed again, 3 + the 20 drafted above the point

    buyer.consume(buyer.stream.records())
    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20)]


def test_a_second_fall_the_draft_does_not_cover_grows_it(buyer: Buyer):
    """A point above reorder_quantity: the draft of 20 leaves the position short of 30 when stock
    falls past it again, so the draft grows by reorder_quantity (API.md: the open draft grows)."""
    buyer.stock(units=40)
    buyer.point(reorder_point=30)
    buyer.reserve(1, each=11)  # 40 -> 29: a draft of 20
    buyer.consume(buyer.stream.records())
    [first] = buyer.drafts()
    buyer.container.inventory_repository.adjust("MUG", "wh-east", 6, reason="receipt")  # 29 -> 35
    buyer.reserve(6, first=100, each=5)  # 35 -> 5: 5 + 20 drafted is short of 30

    buyer.consume(buyer.stream.records())

    [grown] = buyer.drafts()
    assert grown.id == first.id and [(line.sku, line.quantity) for line in grown.lines] == [("MUG", 40)]
    assert grown.updated_at > first.updated_at == first.created_at  # grown by the later fall, when it was read


def test_a_draft_grown_after_its_points_cost_changed_is_priced_at_the_new_cost_and_a_po_sent_keeps_its_own(
    buyer: Buyer,
):
    """A buyer reads a draft's lines as what the units cost now: a line grown after its point's cost
    rose kept the old cost, and submitted so, bought all 40 at it. Once submitted, the price is the
    vendor's agreement: a later change of the point prices the next draft, never the PO sent."""
    dearer, dearest = Money.of("5.00", "USD"), Money.of("6.00", "USD")
    buyer.stock(units=40)
    buyer.point(reorder_point=30)
    buyer.reserve(1, each=11)  # 40 -> 29: a draft of 20 at 4.00
    buyer.consume(buyer.stream.records())
    buyer.point(unit_cost=dearer, reorder_point=30)
    buyer.container.inventory_repository.adjust("MUG", "wh-east", 6, reason="receipt")  # 29 -> 35
    buyer.reserve(6, first=100, each=5)  # 35 -> 5: 5 + 20 drafted is short of 30

    buyer.consume(buyer.stream.records())

    [grown] = buyer.drafts()
    assert [(line.sku, line.quantity, line.unit_cost) for line in grown.lines] == [("MUG", 40, dearer)]
    sent = buyer.container.purchasing.submit(grown.id)
    buyer.point(unit_cost=dearest, reorder_point=30)
    all_of_it = Receipt.model_validate({"lines": [{"sku": "MUG", "quantity": 40}]})
    buyer.container.purchasing.receive(sent.id, all_of_it, "all of it")  # 5 -> 45 available
    buyer.reserve(4, first=200, each=10)  # 45 -> 5: crossed, nothing on order
    buyer.consume(buyer.stream.records())
    [after] = buyer.drafts()
    assert after.id != sent.id and [(line.quantity, line.unit_cost) for line in after.lines] == [(20, dearest)]
    assert [line.unit_cost for line in buyer.container.purchasing.get(sent.id).lines] == [dearer]


def open_po(buyer: Buyer, quantity: int, location_id: str = "wh-east") -> str:
    line = {"sku": "MUG", "quantity": quantity, "unit_cost": {"amount": "4.00", "currency": "USD"}}
    body = {"vendor_id": "acme", "location_id": location_id, "lines": [line]}
    return buyer.container.purchasing.create(NewPurchaseOrder.model_validate(body)).id


def test_a_fall_that_open_purchase_orders_cover_is_low_but_buys_nothing_again(buyer: Buyer):
    buyer.stock()
    buyer.point()
    open_po(buyer, 30)  # 30 on order for wh-east
    buyer.reserve(8)  # 10 -> 2 available: below the point, but 2 + 30 on order is not

    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert buyer.drafts() == []
    [event] = buyer.on_bus()  # the record of 5 -> 4 crossed
    assert event["data"]["inventory"] == {"sku": "MUG", "location_id": "wh-east", "available": 4, "reorder_point": 5}


def backordered(buyer: Buyer, quantity: int, external_id: str) -> str:
    """An order of `quantity` MUG (backorderable) that reserves what wh-east has and waits."""
    from core.errors import Backordered
    from tests.builders import place_order

    body = {"external_id": external_id, "lines": [{"sku": "MUG", "quantity": quantity}]}
    order_id = buyer.container.capture.place(place_order(**body), actor="key_web").id
    buyer.container.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        buyer.container.workflow.reserve_stock(order_id)
    return order_id


def first_order_drafted(buyer: Buyer) -> PurchaseOrder:
    """MUG (backorderable) with a point at wh-east and no stock item, an order of 3 backordered
    there and its record handed to the function: the draft that bought the 3. The first thing its
    tests do: written once, copied after (written_once)."""
    return written_once(buyer, "first order drafted", lambda: _first_order_drafted(buyer))


def _first_order_drafted(buyer: Buyer) -> PurchaseOrder:
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.point()
    backordered(buyer, 3, "first")
    buyer.consume(buyer.stream.records())
    [draft] = buyer.drafts()
    return draft


def test_the_draft_buys_for_the_backordered_orders_too(buyer: Buyer):
    """10 on hand, an order of 40 takes them and waits for 30: the crossing bought 20, leaving
    10 of the waiting units unbought; an open PO that covered the point but not the waiting orders
    bought nothing at all."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock()
    buyer.point()
    backordered(buyer, 40, "big")  # 10 -> 0 available: crossed, 30 units still lacking

    buyer.consume(buyer.stream.records())

    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20 + 30)]


def test_a_fall_read_after_its_point_was_cleared_still_buys_what_the_backorders_lack(buyer: Buyer):
    """The fall that an order of 40 made (10 -> 0, 30 lacking) reorders by the point it crossed,
    though a person cleared the point before the stream was read: the 30 are bought on that
    draft too. Counted by no point (none is set now), they were bought by nothing, the order's own
    record buying nothing either, and it waited for good."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock()
    buyer.point()
    backordered(buyer, 40, "big")
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", None)

    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 20 + 30}


def test_an_open_order_that_covers_the_point_but_not_the_backorders_still_reorders(buyer: Buyer):
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock()
    buyer.point()
    open_po(buyer, 30)
    backordered(buyer, 38, "big")  # 10 -> 0 available, 30 on order, 28 waiting: 30 - 28 < 5

    buyer.consume(buyer.stream.records())

    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20)]  # the 28 are on order


def two_warehouses(buyer: Buyer, west_point: bool = True) -> None:
    """MUG (backorderable) at wh-east and wh-west, 10 each, with a reorder point at wh-east and,
    unless told otherwise, at wh-west (same point, same vendor)."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.container.catalog_repository.put_location(location("wh-west", latitude=37.8, longitude=-122.3))
    buyer.stock()
    buyer.container.inventory_repository.set_on_hand("MUG", "wh-west", 10, reason="stock_take")
    buyer.point()
    if west_point:
        settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
        buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", settings)


def drafted(buyer: Buyer) -> dict[str, int]:
    return {draft.location_id: sum(line.quantity for line in draft.lines) for draft in buyer.drafts()}


def test_an_order_backordered_across_two_points_is_bought_for_once(buyer: Buyer):
    """An order of 40 takes the 10 at each warehouse and waits for 20: both fall below their
    points, and each crossing counted the 20 as its own, so the drafts bought 40 for them (20 + 20
    on top of each reorder_quantity). They are bought once, at the location that holds the most of
    the order's units (a tie: the first by id), where a fill tops the order up first."""
    two_warehouses(buyer)
    backordered(buyer, 40, "big")  # 10 -> 0 at each: both crossed, 20 units still lacking

    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 20 + 20, "wh-west": 20}


def test_the_demand_is_bought_where_a_reorder_point_buys_it(buyer: Buyer):
    # wh-east would come first, but only wh-west has a point: wh-west buys the 20 the order lacks.
    two_warehouses(buyer, west_point=False)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", None)
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", settings)
    backordered(buyer, 40, "big")

    buyer.consume(buyer.stream.records())

    assert drafted(buyer) == {"wh-west": 20 + 20}


def cancelled_po_crosses(buyer: Buyer, location_id: str) -> None:
    """An open PO of 10 MUG at `location_id`, cancelled: 0 + 10 on order -> 0 crosses its point."""
    line = {"sku": "MUG", "quantity": 10, "unit_cost": {"amount": "4.00", "currency": "USD"}}
    body = {"vendor_id": "acme", "location_id": location_id, "lines": [line]}
    po_id = buyer.container.purchasing.create(NewPurchaseOrder.model_validate(body)).id
    buyer.container.purchasing.cancel(po_id)


def test_a_point_added_after_another_bought_for_an_order_does_not_buy_it_again(buyer: Buyer):
    """The order holds 5 at wh-east and 10 at wh-west and lacks 25, which wh-east's point, the only
    one, bought. A point then set at wh-west, where a fill tops the order up first, counted the
    25 as its own at its next crossing (a PO cancelled there): bought twice. The draft at wh-east
    holds them, so wh-west buys its reorder_quantity only."""
    two_warehouses(buyer, west_point=False)
    buyer.container.inventory_repository.set_on_hand("MUG", "wh-east", 5, reason="stock_take")
    backordered(buyer, 40, "big")  # 5 -> 0 at wh-east: crossed; 10 -> 0 at wh-west: no point
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 20 + 25}

    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", settings)
    cancelled_po_crosses(buyer, "wh-west")
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 20 + 25, "wh-west": 20}


def test_a_point_removed_after_it_bought_for_an_order_does_not_send_it_to_another(buyer: Buyer):
    """wh-west, where a fill tops the order up first, bought the 25 it lacks; its point then
    cleared, the next crossing at wh-east counted them as its own: bought twice (20 + 25 more).
    What wh-west bought still comes there, so the order stays bought there, and wh-east's own
    draft of 20 covers its point."""
    two_warehouses(buyer)
    buyer.container.inventory_repository.set_on_hand("MUG", "wh-east", 5, reason="stock_take")
    backordered(buyer, 40, "big")  # holds 5 at wh-east, 10 at wh-west: both crossed
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 20, "wh-west": 20 + 25}

    buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", None)
    cancelled_po_crosses(buyer, "wh-east")
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 20, "wh-west": 20 + 25}


def test_an_order_backordered_where_stock_already_sits_below_the_point_is_bought_for_at_once(buyer: Buyer):
    """Stock at 3 under a point of 5 crosses nothing more: an order that took the 3 and waits for
    7 was bought for only at the next crossing, which may never come (nothing arrives). What it
    lacks is bought when it is written backordered, once; a second order's lack is added, not the
    first one's again."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock(units=3)
    buyer.point()  # set with stock below it: no crossing
    backordered(buyer, 10, "first")  # 3 -> 0: below the point already, nothing crossed
    records = buyer.stream.records()

    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-east": 7}
    assert buyer.on_bus() == []  # no inventory.low: available did not cross the point

    backordered(buyer, 4, "second")
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 7 + 4}


def test_an_order_whose_step_died_before_its_entry_was_marked_is_bought_for_when_it_runs_again(
    buyer: Buyer, monkeypatch: pytest.MonkeyPatch
):
    """The step wrote the order backordered, then died before it marked the queue entry (a
    timeout, a throttled write); its retry found the order backordered and only looked for
    arrived stock, so no record ever bought the 7 it lacks (stock sits below the point)."""
    from tests.builders import place_order

    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock(units=3)
    buyer.point()
    order_id = buyer.container.capture.place(
        place_order(external_id="died", lines=[{"sku": "MUG", "quantity": 10}]), actor="key_web"
    ).id
    buyer.container.workflow.authorize_payment(order_id, attempt=0)

    def dies(sku: str, entry: Any) -> None:
        raise TimeoutError("the step timed out")

    with monkeypatch.context() as patched:
        patched.setattr(buyer.container.backorders, "recorded", dies)
        with pytest.raises(TimeoutError):
            buyer.container.workflow.reserve_stock(order_id)
    buyer.container.workflow.reserve_stock(order_id)  # Step Functions retries the step

    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    assert drafted(buyer) == {"wh-east": 7}
    buyer.container.workflow.reserve_stock(order_id)  # run again: nothing bought twice
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 7}


def test_units_on_a_draft_that_filled_up_are_not_bought_again_on_the_next(
    buyer: Buyer, monkeypatch: pytest.MonkeyPatch
):
    """The draft for acme at wh-east holds the 7 an order lacks among its full lines (99, what a
    receipt may name); one more sku opened a new draft. A second order's record counted the units
    on the new draft only, so it bought the first order's 7 again beside its own 4."""
    # Full at 5 lines here, not 99: a full draft takes only its own skus whatever its size
    # (tests/unit/test_reorder.py checks it at 99), and 98 buys on moto were most of this test.
    monkeypatch.setattr(purchasing, "MAX_LINES", 5)
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock(units=3)
    buyer.point()
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    for n in range(purchasing.MAX_LINES - 1):
        buyer.container.replenishment.buy(f"SKU-{n:03d}", "wh-east", settings, 1, f"SKU-{n:03d}#wh-east#seed")
    backordered(buyer, 10, "first")  # 3 -> 0, below the point already: its record buys the 7 it lacks
    buyer.consume(buyer.stream.records())
    [full] = buyer.drafts()
    assert len(full.lines) == purchasing.MAX_LINES
    buyer.container.replenishment.buy("SKU-NEXT", "wh-east", settings, 1, "SKU-NEXT#wh-east#seed")  # a new draft
    # Not a line past what a receipt names on the full one: the sku it lacks went on a draft of its own.
    assert sorted(len(draft.lines) for draft in buyer.drafts()) == [1, purchasing.MAX_LINES]

    backordered(buyer, 4, "second")
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    mugs = {draft.id: line.quantity for draft in buyer.drafts() for line in draft.lines if line.sku == "MUG"}
    assert mugs == {full.id: 7 + 4}


def test_an_order_backordered_for_a_sku_no_point_buys_reads_none_of_the_waiting_orders(buyer: Buyer):
    """No location has a reorder point for MUG: nothing can be bought, yet each backordered
    order's record read the sourcing rules, the network and every order waiting for the sku (up
    to 200 reads per record, for each order that joins the queue)."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock(units=3)
    buyer.consume(buyer.stream.records())
    for n in range(3):
        backordered(buyer, 10, f"waits-{n}")
    records = buyer.stream.records()
    assert all(record["dynamodb"]["Keys"]["location_id"]["S"].startswith("#backorder#") for record in records)
    calls: list[str] = []

    def count(model: Any, **_: Any) -> None:
        calls.append(model.name)

    client = buyer.container.dynamodb
    client.meta.events.register("before-call.dynamodb", count)
    try:
        assert buyer.consume(records) == {"batchItemFailures": []}
    finally:
        client.meta.events.unregister("before-call.dynamodb", count)

    assert buyer.drafts() == []
    assert "GetItem" not in calls  # no waiting order read
    assert calls.count("Query") <= 3  # the sku's stock, once per record


def test_a_burst_of_backorders_reads_each_page_of_waiting_orders_at_once(buyer: Buyer):
    """Orders backordered at once for a sku with a point: each one's record read every waiting order
    with a GetItem of its own, n² reads in one batch (a batch of 25 records under a queue of 200
    passed the function's time limit). A page of the queue (100) is read with one BatchGetItem. Four
    orders show it as 30 did: any GetItem of an order, or more than one read a record, fails."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.point()
    for n in range(4):
        backordered(buyer, 1, f"burst-{n}")
    records = buyer.stream.records()
    orders_table = buyer.container.config.orders_table
    reads: list[tuple[str, str]] = []

    def count(params: Any, model: Any, **_: Any) -> None:
        tables = params["RequestItems"] if model.name == "BatchGetItem" else [params.get("TableName")]
        reads.extend((model.name, table) for table in tables)

    client = buyer.container.dynamodb
    client.meta.events.register("provide-client-params.dynamodb", count)
    try:
        assert buyer.consume(records) == {"batchItemFailures": []}
    finally:
        client.meta.events.unregister("provide-client-params.dynamodb", count)

    assert drafted(buyer) == {"wh-east": 4}
    assert ("GetItem", orders_table) not in reads
    assert reads.count(("BatchGetItem", orders_table)) == len(records)  # one page of the queue each


def test_a_queue_entry_written_again_keeps_where_it_is_bought_for_and_is_marked_anew(buyer: Buyer):
    """An order backordered again (after an edit) writes its entry again: a PutItem dropped the
    place it was bought at, and a point added since was then counted as buying it a second time."""
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

    from core.ports import WaitingOrder
    from functions.backorders.low_stock import backorder_marked

    queue = buyer.container.backorders
    entry = WaitingOrder(created_at=datetime(2026, 12, 1, tzinfo=UTC), order_id="ord_" + "e" * 24)
    queue.add("MUG", entry)
    queue.record_bought_at("MUG", entry, "wh-east")
    queue.recorded("MUG", entry)
    assert len([r for r in buyer.stream.records() if backorder_marked(DynamoDBRecord(r))]) == 1

    queue.add("MUG", entry)  # backordered again
    queue.recorded("MUG", entry)

    assert len([r for r in buyer.stream.records() if backorder_marked(DynamoDBRecord(r))]) == 1
    assert [(e.order_id, e.bought_at) for e in queue.waiting("MUG", None, 10)] == [(entry.order_id, "wh-east")]


def test_a_purchase_order_cancelled_under_the_point_buys_again_what_the_backorders_lack(buyer: Buyer):
    """The 3 units an order waits for were bought and submitted; the PO cancelled, its units are no
    longer coming. A position already below the point (3 on order, point 5) crosses nothing as it
    falls to 0, so nothing bought them again and the order waited for good."""
    draft = first_order_drafted(buyer)
    buyer.container.purchasing.submit(draft.id)
    buyer.consume(buyer.stream.records())
    assert buyer.drafts() == []

    buyer.container.purchasing.cancel(draft.id)
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-east": 3}


def test_a_draft_cancelled_by_a_person_buys_again_what_the_backorders_lack(buyer: Buyer):
    """The 3 units an order waits for were on a draft (counted as bought); a person cancelled it.
    The cancel touched no stock item, so no record bought them again and the order, stock below
    the point, waited for good. They go on a new draft, once, and a second order's lack on top."""
    draft = first_order_drafted(buyer)

    buyer.container.purchasing.cancel(draft.id)
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    [again] = buyer.drafts()
    assert again.id != draft.id
    assert drafted(buyer) == {"wh-east": 3}
    backordered(buyer, 2, "second")
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 3 + 2}


@pytest.mark.parametrize("stocked", [True, False], ids=["its stock item", "no stock item yet"])
def test_a_point_set_while_orders_wait_buys_what_they_lack(buyer: Buyer, stocked: bool):
    """An order waits for 3 MUG and no point buys MUG. A person sets one at wh-east: stock already
    below it crosses nothing, and no record of the order's is left to buy, so nothing was bought
    and the order waited for good (until another order was backordered). The point's record buys
    the 3, once."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    if stocked:
        buyer.stock(units=0)
    backordered(buyer, 3, "first")
    buyer.consume(buyer.stream.records())
    assert buyer.drafts() == []

    buyer.point()
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-east": 3}
    assert buyer.on_bus() == []  # no crossing: no inventory.low
    buyer.point()  # set again (the same settings): what it bought is counted
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 3}


def test_what_a_point_set_buys_is_decided_in_the_service_layer_not_the_stream_handler(buyer: Buyer):
    """The rules of what a reorder record buys (the stock position read with the drafts, what the
    waiting orders lack, once per change) are the core's `ReorderBuying`, which the Inventory
    stream's handler only parses records for and reports: called with no stream record, a point
    set where an order waits for 3 buys the 3 and says so, and the same change again finds them on
    the draft and buys (and says) nothing."""
    from core.reorder_buying import BoughtFor

    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    backordered(buyer, 3, "first")
    buyer.point()
    said: list[Any] = []

    buyer.container.reorder_buying.point_set("MUG", "wh-east", "change-1", said.append)
    buyer.container.reorder_buying.point_set("MUG", "wh-east", "change-1", said.append)  # the same change

    [draft] = buyer.drafts()
    assert drafted(buyer) == {"wh-east": 3}
    assert said == [BoughtFor("wh-east", 3, draft)]


@pytest.mark.parametrize("point_first", [False, True], ids=["order then point", "point then order"])
def test_a_point_set_and_an_order_backordered_in_one_batch_buy_its_lack_once(buyer: Buyer, point_first: bool):
    """The point's record and the order's own both read what the order lacks at wh-east: each
    counts what the other bought (the draft), so the 3 are bought once, redelivered too."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock(units=0)
    if point_first:
        buyer.point()
    backordered(buyer, 3, "first")
    if not point_first:
        buyer.point()

    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-east": 3}


def test_a_point_changed_or_cleared_and_set_with_another_vendor_buys_nothing_again(buyer: Buyer):
    """acme's draft holds the 3 an order lacks. The point's quantity and vendor changed is no
    point set; cleared and set again with globex, it counts acme's draft still."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.container.purchasing.put_vendor("globex", VendorRequest(name="Globex", lead_time_days=5))
    buyer.stock(units=0)
    backordered(buyer, 3, "first")
    buyer.point()
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 3}

    settings = ReorderSettings(reorder_point=7, reorder_quantity=30, vendor_id="globex", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", settings)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", None)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", settings)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 3}


@pytest.mark.parametrize("units", [None, 0, 2, 10], ids=["no stock item", "none", "below the point", "above it"])
def test_a_point_set_where_no_order_waits_buys_nothing(buyer: Buyer, units: int | None):
    if units is not None:
        buyer.stock(units=units)
    buyer.point()

    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert buyer.drafts() == []
    assert buyer.on_bus() == []


def test_points_set_at_two_locations_in_one_batch_buy_an_orders_lack_once(buyer: Buyer):
    """No point bought for the order; both records place it (once, recorded) and buy where it is."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.container.catalog_repository.put_location(location("wh-west", latitude=37.8, longitude=-122.3))
    for location_id in ("wh-east", "wh-west"):
        buyer.container.inventory_repository.set_on_hand("MUG", location_id, 0, reason="stock_take")
    backordered(buyer, 3, "first")
    buyer.consume(buyer.stream.records())
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", settings)
    buyer.point()

    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-east": 3}  # the first by id: no units held anywhere


def test_a_draft_cancelled_while_its_point_was_cleared_is_bought_again_when_the_point_is_set_again(buyer: Buyer):
    """The point is cleared, then its draft (the 3 units an order waits for) cancelled: with no
    point nothing buys, as it should. Set again, the point's record saw no fall, no withdrawal and
    no new backorder, so the 3 were never bought again."""
    draft = first_order_drafted(buyer)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", None)
    buyer.container.purchasing.cancel(draft.id)
    buyer.consume(buyer.stream.records())
    assert buyer.drafts() == []

    buyer.point()
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 3}


def test_a_withdrawal_handled_after_its_point_was_cleared_leaves_the_orders_to_the_other_point(buyer: Buyer):
    """A PO at wh-east is cancelled, an order is backordered, then wh-east's point is cleared, all
    before the stream is read. The cancel's record placed the order at wh-east (its point then)
    and, wh-east buying nothing now, bought nothing; the order's own record kept it there, so
    wh-west's point never bought for it and it waited for good. It is bought at wh-west."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.container.catalog_repository.put_location(location("wh-west", latitude=37.8, longitude=-122.3))
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    for location_id in ("wh-east", "wh-west"):
        buyer.container.inventory_repository.set_on_hand("MUG", location_id, 0, reason="stock_take")
        buyer.container.purchasing_repository.set_reorder("MUG", location_id, settings)
    po_id = open_po(buyer, 2)  # wh-east: 0 available + 2 on order, below the point already
    buyer.consume(buyer.stream.records())
    buyer.container.purchasing.cancel(po_id)  # crosses nothing: a withdrawal
    backordered(buyer, 3, "waits")
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", None)

    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-west": 3}


def east_bought_then_cleared(buyer: Buyer, west_point: bool) -> str:
    """An order waits for 3 MUG (none at either warehouse); wh-east's point bought them (its
    draft's id is returned), and then that point was cleared. wh-west has a point if told so.
    The first thing its tests do: written once, copied after (written_once)."""
    return written_once(buyer, ("east bought then cleared", west_point), lambda: _east_bought(buyer, west_point))


def _east_bought(buyer: Buyer, west_point: bool) -> str:
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.container.catalog_repository.put_location(location("wh-west", latitude=37.8, longitude=-122.3))
    for location_id in ("wh-east", "wh-west"):
        buyer.container.inventory_repository.set_on_hand("MUG", location_id, 0, reason="stock_take")
    buyer.point()
    if west_point:
        settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
        buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", settings)
    backordered(buyer, 3, "first")
    buyer.consume(buyer.stream.records())
    [draft] = buyer.drafts()
    assert drafted(buyer) == {"wh-east": 3}
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", None)
    return draft.id


def test_a_draft_cancelled_after_its_point_was_cleared_is_bought_at_the_other_point(buyer: Buyer):
    """wh-east's draft held the 3; its point cleared, a person cancelled it. The cancel's record
    was dropped by the stream's filter (no point marks the item), and the order, kept at wh-east
    though nothing comes there, was never bought for by wh-west's point: it waited for good."""
    draft_id = east_bought_then_cleared(buyer, west_point=True)

    buyer.container.purchasing.cancel(draft_id)
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-west": 3}


def test_an_order_a_cancelled_draft_placed_at_the_other_point_is_not_bought_again_by_a_third(buyer: Buyer):
    """wh-east's draft held the 3 an order lacks; its point cleared, a person cancelled it and
    wh-west's point bought the 3 for it. A point later set at wh-north (first by id, so a reading
    that places the order anew places it there) must find the order bought at wh-west: placed there
    but not recorded, it was placed at wh-north again and its 3 bought a second time."""
    draft_id = east_bought_then_cleared(buyer, west_point=True)
    buyer.container.purchasing.cancel(draft_id)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    assert drafted(buyer) == {"wh-west": 3}

    buyer.container.catalog_repository.put_location(location("wh-north", latitude=44.9, longitude=-93.2))
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-north", settings)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-west": 3}


def test_a_point_set_after_a_cleared_points_draft_was_cancelled_buys_for_the_order(buyer: Buyer):
    """wh-east's point, the only one, bought the 3 an order lacks; it was cleared and its draft
    cancelled: nothing can buy then. A point set at wh-west later bought nothing: the order was
    still counted at wh-east, where nothing comes now, and waited for good."""
    draft_id = east_bought_then_cleared(buyer, west_point=False)
    buyer.container.purchasing.cancel(draft_id)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    assert buyer.drafts() == []

    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", settings)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-west": 3}


def test_a_purchase_order_cancelled_after_its_point_was_cleared_is_bought_at_the_other_point(buyer: Buyer):
    """wh-east's draft was submitted (3 incoming) and its point cleared: the order stays bought
    there while the units come (wh-west buys nothing again). The PO cancelled, nothing comes: it
    is bought at wh-west, once."""
    draft_id = east_bought_then_cleared(buyer, west_point=True)
    buyer.container.purchasing.submit(draft_id)
    backordered(buyer, 2, "second")  # its record reads the first order too: kept at wh-east
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-west": 2}

    buyer.container.purchasing.cancel(draft_id)
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-west": 2 + 3}


def test_orders_counted_where_a_cleared_point_bought_more_than_still_comes_are_bought_again(buyer: Buyer):
    """wh-east's point bought 3 for a first order (submitted: 3 on order) and 2 for a second (a new
    draft); the point cleared, that draft was cancelled. Something still came to wh-east (the 3),
    so both orders were kept there though 5 were lacking: the second's 2 were bought by no point,
    and it waited for good. The orders that the units still coming cover stay; the other is
    bought at wh-west, once."""
    draft_id = east_bought_then_cleared(buyer, west_point=True)
    buyer.point()  # set again for the second order's purchase
    buyer.container.purchasing.submit(draft_id)
    backordered(buyer, 2, "second")
    buyer.consume(buyer.stream.records())
    [second_draft] = buyer.drafts()
    assert drafted(buyer) == {"wh-east": 2}
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", None)

    buyer.container.purchasing.cancel(second_draft.id)
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-west": 2}


def received_while_held(buyer: Buyer, west_point: bool) -> str:
    """`east_bought_then_cleared`, its draft submitted, the order held (an arrival passes it over)
    and the 3 received at wh-east, where they are kept for it: the held order's id. The first
    thing its tests do: written once, copied after (written_once)."""
    return written_once(buyer, ("received while held", west_point), lambda: _received_while_held(buyer, west_point))


def _received_while_held(buyer: Buyer, west_point: bool) -> str:
    from core.holds import HoldRequest

    draft_id = east_bought_then_cleared(buyer, west_point)
    buyer.container.purchasing.submit(draft_id)
    held = buyer.container.backorders.waiting("MUG", None, 1)[0].order_id
    buyer.container.holds.hold(held, HoldRequest(reason="customer_request"), actor="key_ops")
    receipt = Receipt.model_validate({"lines": [{"sku": "MUG", "quantity": 3}]})
    buyer.container.purchasing.receive(draft_id, receipt, "all of it")
    return held


def test_units_received_where_a_cleared_point_bought_them_are_not_bought_again_elsewhere(buyer: Buyer):
    """wh-east's point bought the 3 a held order lacks and was cleared; the PO came in (3
    available at wh-east, which the held order takes once released). A point set at wh-west then
    found nothing on order or drafted at wh-east and placed the order at wh-west, buying its 3
    a second time."""
    received_while_held(buyer, west_point=False)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-west", settings)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {}


def test_an_order_placed_again_by_another_locations_record_is_bought_for_where_it_is_placed(buyer: Buyer):
    """wh-east's point bought the 3 a held order lacks and was cleared; the PO came in (kept there
    for the order) and another order took the 3, a reservation no filter passes. A point set at
    wh-yard then placed the held order again at wh-west's point, recorded there, but bought at
    wh-yard only: wh-west, counting it as its own from then on, never bought its 3."""
    received_while_held(buyer, west_point=True)
    buyer.container.inventory_repository.reserve("MUG", "wh-east", reservation_key(f"ord_{0:024d}", "l1"), 3)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    assert drafted(buyer) == {}

    buyer.container.catalog_repository.put_location(location("wh-yard", latitude=40.7, longitude=-74.0))
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-yard", settings)
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-west": 3}


def test_an_order_a_crossing_places_again_at_another_point_is_bought_for_there(buyer: Buyer):
    """A held order is kept at cleared wh-east while the 3 received there are there; another
    order takes them (a reservation no filter passes). A fall below wh-yard's point then reads
    the held order anew and places it at wh-west's point (first by id): bought for only by
    wh-yard's own reorder, wh-west would never buy its 3 and it would wait for good."""
    received_while_held(buyer, west_point=True)
    buyer.container.catalog_repository.put_location(location("wh-yard", latitude=40.7, longitude=-74.0))
    buyer.container.inventory_repository.set_on_hand("MUG", "wh-yard", 10, reason="stock_take")
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-yard", settings)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    assert drafted(buyer) == {}  # the held order is kept at wh-east, its 3 there
    buyer.container.inventory_repository.reserve("MUG", "wh-east", reservation_key(f"ord_{0:024d}", "l1"), 3)

    buyer.container.inventory_repository.reserve("MUG", "wh-yard", reservation_key(f"ord_{1:024d}", "l1"), 6)
    records = buyer.stream.records()  # 10 -> 4 at wh-yard: crossed
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-yard": 20, "wh-west": 3}


def test_an_order_a_withdrawal_at_wh_yard_places_again_at_another_point_is_bought_for_there(buyer: Buyer):
    """As a crossing's (above), a purchase order cancelled at wh-yard under its point (a
    withdrawal) reads the held order anew, its units at cleared wh-east taken, and places it at
    wh-west's point: recorded there but bought at wh-yard only, wh-west never bought its 3."""
    received_while_held(buyer, west_point=True)
    buyer.container.catalog_repository.put_location(location("wh-yard", latitude=40.7, longitude=-74.0))
    buyer.container.inventory_repository.set_on_hand("MUG", "wh-yard", 0, reason="stock_take")
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-yard", settings)
    po_id = open_po(buyer, 2, "wh-yard")  # 0 available + 2 on order, below the point already
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    assert drafted(buyer) == {}  # the held order is kept at wh-east, its 3 there
    buyer.container.inventory_repository.reserve("MUG", "wh-east", reservation_key(f"ord_{0:024d}", "l1"), 3)

    buyer.container.purchasing.cancel(po_id)  # crosses nothing: a withdrawal
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-west": 3}


def test_an_order_placed_again_is_bought_for_there_when_the_buy_failed_and_the_record_is_redelivered(
    buyer: Buyer, monkeypatch: pytest.MonkeyPatch
):
    """A point set at wh-yard placed the held order (off cleared wh-east, its units taken) at
    wh-west's point and recorded it there, then the buy at wh-west failed (a throttled write, a
    timeout). The redelivered record found the order recorded at wh-west, a place no reading
    moves it from, so nothing placed it anew and nothing bought its 3: it waited for good."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    received_while_held(buyer, west_point=True)
    buyer.container.inventory_repository.reserve("MUG", "wh-east", reservation_key(f"ord_{0:024d}", "l1"), 3)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    buyer.container.catalog_repository.put_location(location("wh-yard", latitude=40.7, longitude=-74.0))
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-yard", settings)
    records = buyer.stream.records()
    buy = buyer.container.replenishment.buy

    def throttled(sku: str, location_id: str, *args: Any) -> Any:
        if location_id == "wh-west":
            raise TimeoutError("the buy timed out")
        return buy(sku, location_id, *args)

    with monkeypatch.context() as patched:
        patched.setattr(buyer.container.replenishment, "buy", throttled)
        with pytest.raises(BatchProcessingError):  # its only record failed: the invocation fails
            buyer.consume(records)
    assert buyer.consume(records) == {"batchItemFailures": []}  # redelivered

    assert drafted(buyer) == {"wh-west": 3}


def test_a_held_order_whose_units_at_a_cleared_point_another_order_took_is_bought_for_when_released(buyer: Buyer):
    """wh-east's point bought the 3 a held order lacks and was cleared; the PO came in, 3 available
    at wh-east that kept the order counted there. A new order took them (a held order is passed
    over, as an arrival passes it over), a reservation no filter passes. Released, the order found
    nothing there and waited, still counted at wh-east, and no record read it again: wh-west's
    point never bought its 3 and it waited for good."""
    from core.holds import ReleaseRequest
    from tests.builders import place_order

    held = received_while_held(buyer, west_point=True)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    body = {"external_id": "takes-them", "lines": [{"sku": "MUG", "quantity": 3}]}
    taker = buyer.container.capture.place(place_order(**body), actor="key_web").id
    buyer.container.workflow.authorize_payment(taker, attempt=0)
    buyer.container.workflow.reserve_stock(taker)  # the 3 at wh-east
    assert buyer.stream.records() == []  # no filter passes its reservation
    assert drafted(buyer) == {}

    buyer.container.holds.release(held, ReleaseRequest(), actor="key_ops")
    buyer.container.workflow.reserve_stock(held)  # the execution the outbox starts: nothing to take
    records = buyer.stream.records()
    assert buyer.consume(records) == {"batchItemFailures": []}
    buyer.consume(records)  # redelivered

    assert drafted(buyer) == {"wh-west": 3}


def test_a_withdrawal_where_no_point_is_set_does_not_pass_the_later_reservations_to_the_function(buyer: Buyer):
    """The withdrawal's mark reaches the function once: the reservations after it (the stream's
    bulk, where no reorder point is set) are not handed to it."""
    buyer.container.inventory_repository.set_on_hand("CUP", "wh-east", 5, reason="stock_take")
    line = {"sku": "CUP", "quantity": 2, "unit_cost": {"amount": "4.00", "currency": "USD"}}
    body = {"vendor_id": "acme", "location_id": "wh-east", "lines": [line]}
    po_id = buyer.container.purchasing.create(NewPurchaseOrder.model_validate(body)).id
    buyer.stream.records()

    buyer.container.purchasing.cancel(po_id)
    [withdrawn] = buyer.stream.records()
    assert buyer.consume([withdrawn]) == {"batchItemFailures": []}
    buyer.reserve(2, sku="CUP")

    assert buyer.stream.records() == []
    assert buyer.drafts() == []


def test_units_on_the_former_vendors_draft_are_not_bought_again_from_the_new_one(buyer: Buyer):
    """acme's draft holds the 3 units the first order lacks; the point then buys from globex. A
    second order's record counted globex's draft only, so it bought the first order's 3 again
    beside its own 2; a crossing counted them nowhere either."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.container.purchasing.put_vendor("globex", VendorRequest(name="Globex", lead_time_days=5))
    buyer.point()
    backordered(buyer, 3, "first")
    buyer.consume(buyer.stream.records())
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="globex", unit_cost=COST)
    buyer.container.purchasing_repository.set_reorder("MUG", "wh-east", settings)

    backordered(buyer, 2, "second")
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    by_vendor = {draft.vendor_id: sum(line.quantity for line in draft.lines) for draft in buyer.drafts()}
    assert by_vendor == {"acme": 3, "globex": 2}
    assert buyer.container.replenishment.drafted("MUG", "wh-east", settings) == 3 + 2


@pytest.mark.parametrize("during", ["the draft's reading", "the stock's reading", "the draft's reading again"])
def test_a_draft_submitted_while_a_backorder_is_bought_for_is_counted_once(buyer: Buyer, monkeypatch, during: str):
    """The first order's 3 units are on the draft; a second order waits for 2 more. A person submits
    the draft while the second order's record is handled: its 3 units move from the draft to
    `incoming` (one transaction). Stock read before the draft and the draft after the submit
    counted them nowhere and bought them again (5 on a new draft, seen on the local stack); the
    draft read before the stock and the stock after the submit counts them twice and buys nothing
    for the 2 the orders lack. Submitted after the stock was read, between the two readings of the
    draft, the readings differ and the stock is read again."""
    draft = first_order_drafted(buyer)
    backordered(buyer, 2, "second")
    records = buyer.stream.records()
    replenishment, inventory = buyer.container.replenishment, buyer.container.inventory_repository
    read_draft, read_stock, drafts_read = replenishment.drafted, inventory.levels, []

    def submit_once() -> None:
        with another_functions_calls():  # a person's, through the API, while the function runs
            if buyer.drafts():
                buyer.container.purchasing.submit(draft.id)

    def reading_draft(*args: Any) -> int:
        drafts_read.append(args)
        if during == "the draft's reading" or (during == "the draft's reading again" and len(drafts_read) == 2):
            submit_once()
        return read_draft(*args)

    def reading_stock(*args: Any) -> dict[str, Any]:
        if during == "the stock's reading" and drafts_read:
            submit_once()
        return read_stock(*args)

    monkeypatch.setattr(replenishment, "drafted", reading_draft)
    monkeypatch.setattr(inventory, "levels", reading_stock)
    assert buyer.consume(records) == {"batchItemFailures": []}

    assert buyer.drafts()[0].id != draft.id
    assert drafted(buyer) == {"wh-east": 2}  # what the orders lack beyond the 3 on order


def test_a_draft_submitted_before_a_crossing_is_handled_is_not_bought_again_by_it(buyer: Buyer):
    """10 MUG on order at wh-east, an order waits for 13: its record bought the 3 beyond them on
    a draft. The PO is cancelled (0 + 10 on order -> 0 crosses the point) and a person submits
    the draft before the stream hands the crossing over: the crossing counted the stock of its
    image (nothing on order) and the drafts now (none), the 3 nowhere, and bought them again."""
    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    buyer.stock(units=0)
    buyer.point()
    po_id = open_po(buyer, 10)
    backordered(buyer, 13, "waits")
    buyer.consume(buyer.stream.records())
    [draft] = buyer.drafts()
    assert drafted(buyer) == {"wh-east": 3}

    buyer.container.purchasing.cancel(po_id)  # crosses the point
    buyer.container.purchasing.submit(draft.id)  # its 3 on order now
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 20 + 10}  # reorder_quantity and the 10 no longer on order


def test_the_safety_stock_orders_may_not_take_is_no_supply_for_the_backorders(buyer: Buyer):
    """wh-east keeps 5 units back from orders (safety stock) and has exactly those: an order of 4
    takes none and waits. The 5 were counted as units it could take, so nothing was bought and,
    stock never falling, nothing ever would be."""
    from core.sourcing_rules import SourcingRulesInput

    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    rules = SourcingRulesInput.model_validate({"safety_stock": {"wh-east": 5}})
    buyer.container.sourcing_rules_service.replace(rules, by="key_ops")
    buyer.stock(units=5)
    buyer.point()
    backordered(buyer, 4, "kept-back")

    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 4}


def test_a_crossing_counts_the_safety_stock_as_no_supply_for_the_backorders_too(buyer: Buyer):
    """wh-east keeps 5 back from orders and has 10: an order of 12 takes 5 and waits for 7, which its
    record drafts. A fall from 5 to 4 then crosses the point: 4 available and 7 drafted are 11, of
    which orders may take 6, so the order still lacks 1 beyond reorder_quantity. Counting the 4
    kept back as theirs, the crossing bought 20 alone, and the order's last unit waited on nothing."""
    from core.sourcing_rules import SourcingRulesInput

    buyer.container.catalog_repository.put_product(product("MUG", "9.00", allow_backorder=True))
    rules = SourcingRulesInput.model_validate({"safety_stock": {"wh-east": 5}})
    buyer.container.sourcing_rules_service.replace(rules, by="key_ops")
    buyer.stock()
    buyer.point()
    backordered(buyer, 12, "kept-back")  # 10 -> 5: at the point, not below it
    buyer.consume(buyer.stream.records())
    assert drafted(buyer) == {"wh-east": 7}

    buyer.reserve(1, first=100)  # 5 -> 4: crossed
    buyer.consume(buyer.stream.records())

    assert drafted(buyer) == {"wh-east": 7 + 20 + 1}


def test_a_stock_take_counted_under_the_reserved_units_counts_the_units_owed_against_the_point(buyer: Buyer):
    """6 MUG on order, 2 of the 10 on hand reserved: a stock take finds none. Until its rejects send
    the 2 back to wait, `available` is stored at -2: 4 of the 6 coming are left for the point of
    5, so the fall reorders. Counted as 0, the 6 coming kept the position at the point and nothing
    was bought, though the same fall read after the rejects (2 waiting against the 6) bought 20:
    whether the point bought hung on which ran first."""
    buyer.stock()
    buyer.point()
    open_po(buyer, 6)
    buyer.reserve(1, each=2)  # 8 available, 6 on order
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}
    assert buyer.drafts() == []

    from core.ports import ShortCount

    short = ShortCount("MUG", "wh-east", "key_ops", datetime(2026, 12, 7, tzinfo=UTC))
    releasing = {reservation_key(f"ord_{0:024d}", "l1"): 2}  # its rejects not landed yet
    buyer.container.inventory_repository.set_on_hand("MUG", "wh-east", 0, "stock_take", releasing, short)
    assert buyer.consume(buyer.stream.records()) == {"batchItemFailures": []}

    assert drafted(buyer) == {"wh-east": 20}


def test_units_on_order_that_do_not_reach_the_point_still_reorder(buyer: Buyer):
    buyer.stock()
    buyer.point()
    open_po(buyer, 2)
    buyer.reserve(9)  # 10 -> 1 available, 1 + 2 on order: below the point

    buyer.consume(buyer.stream.records())

    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20)]


def test_cancelling_the_open_purchase_order_that_covered_low_stock_reorders(buyer: Buyer):
    buyer.stock()
    buyer.point()
    po_id = open_po(buyer, 30)
    buyer.reserve(8)  # 10 -> 2, covered by the PO
    buyer.consume(buyer.stream.records())
    assert buyer.drafts() == []

    buyer.container.purchasing.cancel(po_id)
    records = buyer.stream.records()
    buyer.consume(records)
    buyer.consume(records)  # redelivered: counted once

    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20)]
    assert len(buyer.on_bus()) == 1  # the low of the fall only: a cancel does not make available fall


def test_orders_draining_stock_at_once_cross_once_and_grow_the_draft_once(buyer: Buyer):
    from functions.backorders import app

    orders = 10  # on hand, each taken by an order of one: five records above the point of 5, one crossing, four below
    buyer.stock(units=orders)
    buyer.point()
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            work()
        except BaseException as error:
            errors.append(error)

    run_threads(threading.Thread(target=run, args=(lambda n=n: buyer.reserve(1, first=n),)) for n in range(orders))
    records = buyer.stream.records()

    # Every record handled on several threads at once, as overlapping redeliveries would be.
    def handle() -> Any:
        return app.lambda_handler({"Records": records}, Context())

    with app.container.override(buyer.container):
        run_threads(threading.Thread(target=run, args=(handle,)) for _ in range(4))

    assert errors == []
    [level] = buyer.container.inventory_repository.levels({"MUG"}, ["wh-east"])["MUG"]
    assert level.available == 0
    [draft] = buyer.drafts()
    assert [(line.sku, line.quantity) for line in draft.lines] == [("MUG", 20)]
    assert len({e["id"] for e in buyer.on_bus()}) == 1
    assert len(buyer.deliveries_queued()) == 1


def test_crossings_of_two_skus_at_once_share_one_draft(buyer: Buyer):
    from functions.backorders import app

    for sku in ("MUG", "CUP"):
        buyer.stock(sku)
        buyer.point(sku)
        buyer.reserve(6, sku=sku)
    records = buyer.stream.records()
    errors: list[BaseException] = []

    def handle(batch: list[dict[str, Any]]) -> None:
        try:
            assert app.lambda_handler({"Records": batch}, Context()) == {"batchItemFailures": []}
        except BaseException as error:
            errors.append(error)

    with app.container.override(buyer.container):
        by_sku = [[r for r in records if r["dynamodb"]["Keys"]["sku"]["S"] == sku] for sku in ("MUG", "CUP")]
        run_threads(threading.Thread(target=handle, args=(batch,)) for batch in by_sku * 2)

    assert errors == []
    [draft] = buyer.drafts()
    assert sorted((line.sku, line.quantity) for line in draft.lines) == [("CUP", 20), ("MUG", 20)]


def test_a_draft_made_by_a_point_is_submitted_and_received_like_any_po(buyer: Buyer):
    buyer.stock()
    buyer.point()
    buyer.reserve(6)
    buyer.consume(buyer.stream.records())
    [draft] = buyer.drafts()
    purchasing = buyer.container.purchasing

    opened = purchasing.submit(draft.id)
    received = purchasing.receive(draft.id, Receipt.model_validate({"lines": [{"sku": "MUG", "quantity": 20}]}), "k")

    assert opened.status is PO.OPEN and received.status is PO.RECEIVED
    [level] = buyer.container.inventory_repository.levels({"MUG"}, ["wh-east"])["MUG"]
    assert (level.on_hand, level.available) == (30, 24)


# A cost at which 20 units bill 8×10^14 USD and 40 reach 1.6×10^15: the most the OMS records is below 10^15.
DEAR = Money.of("40000000000000.00", "USD")


def test_no_crossing_grows_a_draft_to_a_bill_of_10_to_the_15(buyer: Buyer):
    """A reorder point whose own draft line is below 10^15 grew the open draft by it at every
    crossing, past 10^15: a draft no submit could open (422 `amount_too_large`) and no person
    could shrink. Now a sku's line that would reach it is not grown (its units stay counted on
    the draft, still submittable), a sku the draft lacks goes on a new draft, as at 99 lines,
    and a draft whose one line would reach it is not made."""
    from core.reorder import DraftAtTheLimit

    replenishment = buyer.container.replenishment
    settings = ReorderSettings(reorder_point=5, reorder_quantity=20, vendor_id="acme", unit_cost=DEAR)
    with pytest.raises(DraftAtTheLimit) as refused:
        replenishment.buy("CUP", "wh-east", settings, 25, "CUP#wh-east#1")  # 25 x 4x10^13 = 10^15
    assert refused.value.code == "amount_too_large" and buyer.drafts() == []

    first = replenishment.buy("MUG", "wh-east", settings, 20, "MUG#wh-east#1")
    assert replenishment.buy("MUG", "wh-east", settings, 20, "MUG#wh-east#1") is None  # counted: no refusal
    with pytest.raises(DraftAtTheLimit) as refused:
        replenishment.buy("MUG", "wh-east", settings, 20, "MUG#wh-east#2")
    assert first is not None and first.id in refused.value.message and "USD" in refused.value.message
    assert buyer.drafts() == [first]
    cup = replenishment.buy("CUP", "wh-east", settings, 20, "CUP#wh-east#2")  # not on the draft: a new one
    assert cup is not None and cup.id != first.id
    assert sorted(buyer.drafts(), key=lambda d: d.created_at) == [first, cup]

    opened = buyer.container.purchasing.submit(first.id)
    assert opened.status is PO.OPEN and opened.lines == first.lines
    # Submitted, the sku's units are on order: its next draft is another new one (the open one, CUP's, is full).
    mug = replenishment.buy("MUG", "wh-east", settings, 20, "MUG#wh-east#3")
    assert mug is not None and mug.id not in (first.id, cup.id)
    assert {d.id: [(li.sku, li.quantity) for li in d.lines] for d in buyer.drafts()} == {
        cup.id: [("CUP", 20)], mug.id: [("MUG", 20)],
    }  # fmt: skip


def test_no_draft_line_grows_past_the_units_a_line_takes_priced_or_not(buyer: Buyer):
    """An unpriced draft has no bill to stop it: its line grew without bound. A line is at most
    1,000,000,000 units (what a create takes, and what a location holds): units past that are
    not drafted (`quantity_too_large`), nothing written, the line left as it was to submit."""
    from core.reorder import DraftAtTheLimit

    replenishment = buyer.container.replenishment
    settings = ReorderSettings(reorder_point=5, reorder_quantity=600_000_000, vendor_id="acme")
    with pytest.raises(DraftAtTheLimit) as refused:
        replenishment.buy("CUP", "wh-east", settings, 1_000_000_001, "CUP#wh-east#1")
    assert (refused.value.code, refused.value.draft_id) == ("quantity_too_large", None) and buyer.drafts() == []

    first = replenishment.buy("MUG", "wh-east", settings, 600_000_000, "MUG#wh-east#1")
    with pytest.raises(DraftAtTheLimit) as refused:
        replenishment.buy("MUG", "wh-east", settings, 600_000_000, "MUG#wh-east#2")
    assert refused.value.code == "quantity_too_large" and refused.value.draft_id == first.id
    assert replenishment.buy("MUG", "wh-east", settings, 600_000_000, "MUG#wh-east#1") is None  # counted before
    assert buyer.drafts() == [first] and first.lines[0].quantity == 600_000_000
    # Up to the limit exactly, the line grows.
    grown = replenishment.buy("MUG", "wh-east", settings, 400_000_000, "MUG#wh-east#3")
    assert grown is not None and grown.id == first.id and grown.lines[0].quantity == 1_000_000_000


def test_a_crossing_the_draft_cannot_take_is_logged_and_counted_and_still_low(
    buyer: Buyer,
    metrics_on,  # noqa: F811 (the fixture)
    capsys,
    caplog,
):
    from tests.integration.test_reconciler import emitted

    buyer.stock(units=40)
    buyer.point(unit_cost=DEAR, reorder_point=30)
    buyer.reserve(1, each=11)  # 40 -> 29: a draft of 20
    buyer.consume(buyer.stream.records())
    [first] = buyer.drafts()
    buyer.container.inventory_repository.adjust("MUG", "wh-east", 6, reason="receipt")  # 29 -> 35
    buyer.reserve(6, first=100, each=5)  # 35 -> 5: crossed again, 5 + 20 short of 30, and 40 would bill 1.6x10^15
    records = buyer.stream.records()
    capsys.readouterr()

    assert buyer.consume(records) == {"batchItemFailures": []}
    assert buyer.consume(records) == {"batchItemFailures": []}  # redelivered: decided again, nothing written

    assert buyer.drafts() == [first]
    assert emitted(capsys.readouterr().out) == {"ReordersNotDrafted": 2}
    logged = [r for r in caplog.records if r.getMessage() == "reorder not drafted"]
    assert [(r.levelname, r.reason, r.location_id, r.draft) for r in logged] == [
        ("WARNING", "amount_too_large", "wh-east", first.id)
    ] * 2
    crossed = [r.draft for r in caplog.records if r.getMessage() == "reorder point crossed"]
    assert crossed == [first.id] + ["not drafted: amount_too_large"] * 2
    assert len({e["id"] for e in buyer.on_bus() if e["type"] == "inventory.low"}) == 2


# --- The routes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def test_the_reorder_route_sets_shows_and_clears_a_point(api: InProcessApi):
    network = put_network(api)
    sku = Catalog(api).product("9.00")
    vendor = unique("vendor")
    api.put(f"/vendors/{vendor}", json={"name": "Acme", "lead_time_days": 3})
    path = f"/inventory/{sku}/{network['east']}/reorder"
    body = {"reorder_point": 5, "reorder_quantity": 20, "vendor_id": vendor}

    answer = api.put(path, json={**body, "unit_cost": {"amount": "4.00", "currency": "USD"}})

    assert answer.status_code == 200, answer.text
    shown = {"reorder_point": 5, "reorder_quantity": 20, "vendor_id": vendor,
             "unit_cost": {"amount": "4.00", "currency": "USD"}}  # fmt: skip
    assert answer.json() == {"sku": sku, "location_id": network["east"], **shown}
    [stock] = api.get(f"/inventory/{sku}").json()["locations"]
    assert (stock["on_hand"], stock["available"], stock["reorder"]) == (0, 0, shown)

    assert api.put(path, json=body).json()["unit_cost"] is None  # replaced whole
    assert api.request("DELETE", path).status_code == 204
    assert api.get(f"/inventory/{sku}").json()["locations"][0]["reorder"] is None
    assert api.request("DELETE", path).status_code == 204  # nothing left to clear


def test_a_reorder_points_vendor_and_unit_cost_are_shown_only_to_keys_that_may_read_purchasing(api: InProcessApi):
    # GET /inventory/{sku} takes any key: a storefront's (a marketplace's) key read which vendor
    # each location buys from and at what unit cost, which GET /purchase-orders and GET /vendors
    # keep behind purchasing:write; and a warehouse's inventory:write key read them in the answer
    # of its stock take or adjustment. A reorder point shows to the keys that may set it.
    network = put_network(api)
    sku = Catalog(api).product("9.00")
    vendor = unique("vendor")
    api.put(f"/vendors/{vendor}", json={"name": "Acme", "lead_time_days": 3})
    cost = {"amount": "4.00", "currency": "USD"}
    setting = {"reorder_point": 5, "reorder_quantity": 20, "vendor_id": vendor, "unit_cost": cost}
    assert api.put(f"/inventory/{sku}/{network['east']}/reorder", json=setting).status_code == 200
    storefront = api.post("/api-keys", json={"name": unique("key"), "scopes": ["orders:write", "orders:read"],
                                              "channel": "web"}).json()["key"]  # fmt: skip
    warehouse = api.post("/api-keys", json={"name": unique("key"), "scopes": ["inventory:write"]}).json()["key"]
    buyer = api.post("/api-keys", json={"name": unique("key"), "scopes": ["purchasing:write"]}).json()["key"]
    buyer_and_warehouse = api.post(
        "/api-keys", json={"name": unique("key"), "scopes": ["purchasing:write", "inventory:write"]}
    ).json()["key"]

    for key in (storefront, warehouse):
        [stock] = api.get(f"/inventory/{sku}", key=key).json()["locations"]
        assert stock["reorder"] is None, stock
    counted = api.put(f"/inventory/{sku}/{network['east']}", key=warehouse, json={"on_hand": 8})
    adjusted = api.post(f"/inventory/{sku}/{network['east']}/adjustments", key=warehouse,
                        json={"delta": 1, "reason": "found"}, headers={"Idempotency-Key": unique("adj")})  # fmt: skip
    for answer, units in ((counted, 8), (adjusted, 9)):
        assert answer.status_code == 200, answer.text
        assert (answer.json()["on_hand"], answer.json()["available"], answer.json()["reorder"]) == (units, units, None)
    for key in (buyer, ADMIN):
        [stock] = api.get(f"/inventory/{sku}", key=key).json()["locations"]
        assert (stock["on_hand"], stock["reorder"]) == (9, setting), stock
    counted = api.put(f"/inventory/{sku}/{network['east']}", key=buyer_and_warehouse, json={"on_hand": 10})
    adjusted = api.post(f"/inventory/{sku}/{network['east']}/adjustments", key=buyer_and_warehouse,
                        json={"delta": 1, "reason": "found"})  # fmt: skip
    for answer, units in ((counted, 10), (adjusted, 11)):
        assert answer.status_code == 200, answer.text
        assert (answer.json()["on_hand"], answer.json()["reorder"]) == (units, setting), answer.text
    # Stocked at a second location that has no reorder point, the first one's stays hidden all the same.
    assert api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 3}).status_code == 200
    for key in (storefront, warehouse):
        stocks = api.get(f"/inventory/{sku}", key=key).json()["locations"]
        assert len(stocks) == 2 and all(stock["reorder"] is None for stock in stocks), stocks


def test_the_reorder_route_refuses_what_it_cannot_use(api: InProcessApi):
    network = put_network(api)
    sku = Catalog(api).product("9.00")
    body = {"reorder_point": 5, "reorder_quantity": 20, "vendor_id": unique("nobody")}

    assert_error(api.put(f"/inventory/{sku}/{network['east']}/reorder", json=body), 422, "unknown_vendor")
    assert_error(api.put(f"/inventory/{unique('SKU')}/{network['east']}/reorder", json=body), 404, "not_found")
    assert_error(api.put(f"/inventory/{sku}/{unique('loc')}/reorder", json=body), 404, "not_found")
    assert_error(api.put(f"/inventory/{sku}/{network['east']}/reorder", json={**body, "reorder_point": 0}), 422)
    key = api.post("/api-keys", json={"name": unique("key"), "scopes": ["inventory:write"]}).json()["key"]
    assert_error(api.put(f"/inventory/{sku}/{network['east']}/reorder", key=key, json=body), 403, "forbidden")


def test_a_point_whose_reorder_would_cost_10_to_the_15_is_refused(api: InProcessApi):
    # Each crossing would make a draft no submit could open (422 amount_too_large): the point is
    # refused when it is set, not found out at the first draft.
    network = put_network(api)
    sku = Catalog(api).product("9.00")
    vendor = unique("vendor")
    api.put(f"/vendors/{vendor}", json={"name": "Acme", "lead_time_days": 3})
    path = f"/inventory/{sku}/{network['east']}/reorder"
    body = {"reorder_point": 5, "reorder_quantity": 1_000_000_000, "vendor_id": vendor}

    refused = api.put(path, json={**body, "unit_cost": {"amount": "1000000.00", "currency": "USD"}})

    assert_error(refused, 422, "amount_too_large", "unit_cost")
    assert api.get(f"/inventory/{sku}").json()["locations"] == []
    assert api.put(path, json={**body, "unit_cost": {"amount": "999999.99", "currency": "USD"}}).status_code == 200

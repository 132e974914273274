"""GET /imports/{id} through the in-process gateway: a report at its limits still fits Lambda's
response, and a key bound to a channel sees no import."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api, issue


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def test_a_report_of_a_thousand_errors_naming_emoji_orders_is_answered(api: InProcessApi):
    # Each error names its order (channel/external_id, user text) in its message: 500 emoji are 6 KB
    # of JSON escapes, and 1,000 of them (the errors a report keeps) were over Lambda's 6 MB: 502.
    # A few are recorded through the ledger (cut as they are kept); the rest are copies of the item
    # it kept, written in batches (recording 1,000 lines was 3,000 writes: most of this test's time).
    import boto3
    from boto3.dynamodb.types import TypeDeserializer

    from core.import_service import MAX_REPORTED_ERRORS, Outcome
    from core.imports import import_id_for
    from functions.api.dependencies import container
    from functions.import_splitter.readers import _reopened

    ledger, at = container().import_ledger, datetime(2026, 1, 1, tzinfo=UTC)
    import_id = import_id_for("bucket", "incoming/emoji.csv", "v1")
    ledger.begin(import_id, "s3://bucket/incoming/emoji.csv", at)
    recorded = 3
    for line in range(2, recorded + 2):
        error = _reopened(line, ("\U0001f600" * 300, "\U0001f600" * 300 + str(line)))
        ledger.record(import_id, line, Outcome.FAILED, error, at)
    client = boto3.client("dynamodb", region_name="us-east-1")
    errors_key = {"pk": {"S": f"IMPORT#{import_id}#ERRORS"}, "sk": {"S": f"{recorded:06d}"}}
    kept = client.get_item(TableName=ledger._table, Key=errors_key, ConsistentRead=True)["Item"]
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(ledger._table)
    with table.batch_writer() as batch:
        for ordinal in range(recorded + 1, MAX_REPORTED_ERRORS + 1):
            item = {name: TypeDeserializer().deserialize(value) for name, value in kept.items()}
            batch.put_item(Item={**item, "sk": f"{ordinal:06d}", "line": ordinal + 1})
    more = {":more": {"N": str(MAX_REPORTED_ERRORS - recorded)}}
    import_key = {"pk": {"S": f"IMPORT#{import_id}"}, "sk": {"S": "IMPORT"}}
    client.update_item(
        TableName=ledger._table, Key=import_key, UpdateExpression="ADD failed :more", ExpressionAttributeValues=more
    )

    answer = api.get(f"/imports/{import_id}")

    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["failed"] == MAX_REPORTED_ERRORS
    errors = answer.json()["errors"]
    assert [error["line"] for error in errors] == list(range(2, MAX_REPORTED_ERRORS + 2))
    assert all(error["code"] == "order_reopened" and error["message"].endswith("…") for error in errors)


def test_errors_stored_whole_by_an_older_version_are_answered_cut(api: InProcessApi):
    # Before errors were cut as they are kept, a cell went into the report whole (as much as
    # DynamoDB's item took): such stored errors are cut as they are read, as a new one is cut as it
    # is kept, and a report of a thousand of them fits Lambda's response (it was over 6 MB: 502).
    import boto3

    from core.import_service import MAX_REPORTED_ERRORS
    from core.imports import MAX_EXTERNAL_ID_CHARS, MAX_MESSAGE_CHARS, import_id_for
    from functions.api.dependencies import container

    ledger, at = container().import_ledger, datetime(2026, 1, 1, tzinfo=UTC)
    import_id = import_id_for("bucket", "incoming/old.csv", "v1")
    ledger.begin(import_id, "s3://bucket/incoming/old.csv", at)
    long_id, long_message = "\U0001f600" * 1_000, "quantity " + "\U0001f600" * 2_000
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(ledger._table)
    with table.batch_writer() as batch:  # the items as the older version wrote them
        for ordinal in range(1, MAX_REPORTED_ERRORS + 1):
            batch.put_item(
                Item={
                    "pk": f"IMPORT#{import_id}#ERRORS",
                    "sk": f"{ordinal:06d}",
                    "line": ordinal + 1,
                    "external_id": long_id + str(ordinal),
                    "code": "invalid_number",
                    "message": long_message,
                }
            )
    # Its counts, and a file error of that version, its message a whole header cell.
    table.update_item(
        Key={"pk": f"IMPORT#{import_id}", "sk": "IMPORT"},
        UpdateExpression="SET failed = :failed, error_code = :code, error_message = :message",
        ExpressionAttributeValues={":failed": MAX_REPORTED_ERRORS, ":code": "invalid_header", ":message": long_message},
    )

    answer = api.get(f"/imports/{import_id}")

    assert answer.status_code == 200, answer.text[:300]
    errors = answer.json()["errors"]
    assert len(errors) == MAX_REPORTED_ERRORS + 1
    assert errors[0]["line"] is None and errors[0]["code"] == "invalid_header"
    assert [error["line"] for error in errors[1:]] == list(range(2, MAX_REPORTED_ERRORS + 2))
    for error in errors:
        assert len(error["message"].encode("utf-16-le")) <= 2 * MAX_MESSAGE_CHARS
        assert error["message"].startswith("quantity ") and error["message"].endswith("…")
    for error in errors[1:]:
        assert len(error["external_id"].encode("utf-16-le")) <= 2 * MAX_EXTERNAL_ID_CHARS
        assert error["external_id"].endswith("…")


def test_a_channel_key_is_404_on_an_import_whose_report_names_other_channels_orders(api: InProcessApi):
    # An import spans channels and its errors name each order's channel and external id: a key bound
    # to one channel is answered as if the import did not exist, as its GET /imports lists none.
    from core.import_service import Outcome
    from core.imports import import_id_for
    from functions.api.dependencies import container
    from functions.import_splitter.readers import _reopened

    ledger, at = container().import_ledger, datetime(2026, 1, 1, tzinfo=UTC)
    import_id = import_id_for("bucket", "incoming/two-channels.csv", "v1")
    ledger.begin(import_id, "s3://bucket/incoming/two-channels.csv", at)
    ledger.record(import_id, 2, Outcome.FAILED, _reopened(2, ("pos", "POS-7")), at)
    web = issue(api, "orders:read", channel="web")

    refused = api.get(f"/imports/{import_id}", key=web)

    assert_error(refused, 404, "not_found")
    assert "POS-7" not in refused.text
    assert api.get(f"/imports/{import_id}").json()["errors"][0]["external_id"] == "POS-7"  # the admin sees it
    assert api.get("/imports", key=web).json() == {"items": [], "next_cursor": None}
    assert import_id in [item["id"] for item in api.get("/imports", params={"limit": 100}).json()["items"]]

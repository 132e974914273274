"""GET /imports/{id} through the in-process gateway: a report at its limits still fits Lambda's
response."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tests.integration.in_process import InProcessApi, in_process_api


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def test_a_report_of_a_thousand_errors_naming_emoji_orders_is_answered(api: InProcessApi):
    # Each error names its order (channel/external_id, user text) in its message: 500 emoji are 6 KB
    # of JSON escapes, and 1,000 of them (the errors a report keeps) were over Lambda's 6 MB: 502.
    from core.import_service import MAX_REPORTED_ERRORS, Outcome
    from core.imports import import_id_for
    from functions.api.dependencies import container
    from functions.import_splitter.readers import _reopened

    ledger, at = container().import_ledger, datetime(2026, 1, 1, tzinfo=UTC)
    import_id = import_id_for("bucket", "incoming/emoji.csv", "v1")
    ledger.begin(import_id, "s3://bucket/incoming/emoji.csv", at)
    for line in range(2, MAX_REPORTED_ERRORS + 2):
        error = _reopened(line, ("\U0001f600" * 300, "\U0001f600" * 300 + str(line)))
        ledger.record(import_id, line, Outcome.FAILED, error, at)

    answer = api.get(f"/imports/{import_id}")

    assert answer.status_code == 200, answer.text[:300]
    errors = answer.json()["errors"]
    assert len(errors) == MAX_REPORTED_ERRORS
    assert all(error["code"] == "order_reopened" and error["message"].endswith("…") for error in errors)

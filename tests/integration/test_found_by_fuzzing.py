"""Classes of input schemathesis found answered wrongly, each fixed at its root."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from functions.adapters.dynamodb import timestamp
from tests.integration.in_process import in_process_api


def test_a_stored_time_is_utc_with_a_four_digit_year_so_it_reads_back_and_sorts():
    # strftime writes year 1 as "1", which no RFC 3339 parser reads back (a 500 on the next read),
    # and a time given in another zone was stored as if it were UTC.
    assert timestamp(datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)) == "0001-01-01T00:00:01.000000Z"
    assert timestamp(datetime(2026, 12, 1, 5, 0, tzinfo=timezone(timedelta(hours=5)))) == "2026-12-01T00:00:00.000000Z"
    assert timestamp(datetime(999, 5, 1, tzinfo=UTC)) < timestamp(datetime(2026, 5, 1, tzinfo=UTC))
    # Microseconds always written; a zone of no offset that is not UTC itself is converted too.
    assert timestamp(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == "9999-12-31T23:59:59.999999Z"
    zero, minus_five = timezone(timedelta(0), "Z"), timezone(timedelta(hours=-5))
    assert timestamp(datetime(2026, 12, 1, 0, 0, 0, 7, tzinfo=zero)) == "2026-12-01T00:00:00.000007Z"
    assert timestamp(datetime(2026, 11, 30, 20, 0, tzinfo=minus_five)) == "2026-12-01T01:00:00.000000Z"


def test_a_purchase_order_due_in_year_one_is_422_and_a_report_day_must_be_a_day():
    with in_process_api() as api:
        po = api.post(
            "/purchase-orders",
            json={
                "vendor_id": "v1",
                "location_id": "wh-1",
                "lines": [{"sku": "MUG", "quantity": 1, "unit_cost": {"amount": "1.00", "currency": "USD"}}],
                "expected_at": "0001-01-01T00:00:01Z",
            },
        )
        assert po.status_code == 422, po.text
        assert "expected_at" in po.text

        # A `date` parameter would have taken "0.0" as seconds since 1970.
        report = api.get("/reports/top-products", params={"currency": "USD", "from": "0.0", "to": "0.0"})
        assert report.status_code == 422, report.text
        fine = api.get("/reports/top-products", params={"currency": "USD", "from": "2026-12-01", "to": "2026-12-01"})
        assert fine.status_code == 200, fine.text

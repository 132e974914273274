"""DeliveriesNotRecordedAlarm's runbook, over HTTP on moto: a parcel whose ship died after its
capture is reported delivered by its carrier, and the gateway refuses the capture that report asks
for. The person takes the money another way or writes it off, then cancels the parcel's units
(`POST /orders/{id}/cancel` with `lines`): before, that was 409 (the parcel is marked: it left) and
the order stayed `partially_shipped` for good, its units reserved. Now that cancel writes the parcel
off: the order ends `shipped`, paid in full for what it costs now, and the units leave on_hand with
no PUT /inventory; its retry under the same Idempotency-Key answers the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.models import HistoryEntry, Order
from tests.e2e.client import unsigned
from tests.integration.test_cancel_units_api import allocated, api, cancel, money, ship, stock  # noqa: F401

README = Path(__file__).resolve().parents[2] / "README.md"


def the_ship_dies(monkeypatch: pytest.MonkeyPatch, order: dict[str, Any], shipment_id: str) -> None:
    """The parcel's ship: the gateway captures its share, then the function dies before the write
    that records it."""
    from functions.adapters.dynamodb import DynamoOrders
    from functions.bootstrap import Config, bootstrap

    real = DynamoOrders.update

    def dies(self: DynamoOrders, new: Order, expected: Order, entries: list[HistoryEntry], **kw: object) -> None:
        if entries and entries[0].type == "shipment_shipped":
            raise TimeoutError("the API function timed out before recording the ship")
        real(self, new, expected, entries, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(DynamoOrders, "update", dies)
        with pytest.raises(TimeoutError):
            bootstrap(Config.from_env()).actions.ship(order["id"], shipment_id, "1Z999", "key_wh")


def test_the_runbooks_recovery_writes_off_a_delivered_parcel_whose_capture_was_refused(api, monkeypatch):  # noqa: F811
    import plugins.test_payments as gateway

    order = allocated(api, ("MUG", 1), ("CAP", 1))
    east = next(s for s in order["shipments"] if s["location_id"] == "wh-east")
    the_ship_dies(monkeypatch, order, east["id"])
    before = stock(api, "CAP", "wh-east")
    with monkeypatch.context() as refusing:
        refusing.setattr(gateway, "_declines", lambda authorization, operation: operation == "capture")
        reported = api.post(f"/orders/{order['id']}/shipments/{east['id']}/deliver", json={})
    assert reported.status_code == 502, reported.text
    items = api.get(f"/orders/{order['id']}/history").json()["items"]
    assert (items[-1]["type"], items[-1]["detail"]["shipment_id"]) == ("delivery_not_recorded", east["id"])
    shipped = ship(api, api.get(f"/orders/{order['id']}").json(), "wh-west")
    assert shipped["status"] == "partially_shipped"
    units = [(item["line_id"], item["quantity"]) for item in east["lines"]]

    answer = cancel(api, order["id"], units, headers={"Idempotency-Key": "write-off-1"})

    assert answer.status_code == 200, answer.text
    written = answer.json()
    assert written["status"] == "shipped"
    assert next(s for s in written["shipments"] if s["id"] == east["id"])["status"] == "cancelled"
    payment = written["payment"]
    assert (payment["status"], money(payment["captured"])) == ("captured", money(written["totals"]["grand_total"]))
    items = api.get(f"/orders/{order['id']}/history").json()["items"]
    entry = next(h for h in reversed(items) if h["type"] == "units_cancelled")
    assert entry["detail"]["written_off"] == [east["id"]]
    # The unit left with the carrier: out of on_hand, no longer reserved, not back on sale.
    on_hand, reserved, available = before
    assert stock(api, "CAP", "wh-east") == (on_hand - 1, reserved - 1, available)
    # What the runbook says of it, this test's steps.
    text = README.read_text()
    runbook = " ".join(text[text.index("### `DeliveriesNotRecordedAlarm`") :].split("\n### ", 1)[0].split())
    for said in ("`lines` naming every unit of that parcel", "`orders:approve`", "`detail.written_off`",
                 "no `PUT /inventory` is needed", "the same `Idempotency-Key` answers the same order"):  # fmt: skip
        assert said in runbook, said
    # The same request again (its answer lost): the same answer, nothing moved twice.
    again = cancel(api, order["id"], units, headers={"Idempotency-Key": "write-off-1"})
    assert again.status_code == 200 and unsigned(again.json()) == unsigned(written)
    assert stock(api, "CAP", "wh-east") == (on_hand - 1, reserved - 1, available)

"""A carrier's tracking webhook reports delivered a parcel whose ship died after its capture (the
order held for a person to confirm it left): the report ships it, as a ship would, and the gateway
refuses that capture (or declines the renewal of the authorization it is asked on). Before: the
PaymentRefused left the webhook, 502: the other parcels' updates after it in the same webhook were
never applied, the carrier sent it again and again (502 each time), and nobody was called: the
parcel had left, the system's hold was gone, and the order sat `allocated` with its share not
captured. Now that update's outcome is `payment_refused` and the rest of the webhook is applied
(200); the order records `delivery_not_recorded` (the shipment and the gateway's words), counted
for DeliveriesNotRecordedAlarm and logged at ERROR, once: the webhook sent again records nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.events import OrderEvent
from core.status import OrderStatus, ShipmentStatus
from core.tracking import CarrierTracking
from functions.business_metrics import MeteredOrders, flush
from tests.unit.test_business_metrics import emitted
from tests.unit.test_capture_sweep import LATE, STOCK, a_pass
from tests.unit.test_tracking import event, post
from tests.unit.world import Clock, a_ship_that_died, build_world

NOT_RECORDED = ("DeliveriesNotRecorded", ())
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    flush()
    capsys.readouterr()


def errors(caplog: pytest.LogCaptureFixture) -> list[tuple[object, object]]:
    return [
        (r.__dict__.get("order_id"), r.__dict__.get("shipment_id"))
        for r in caplog.records
        if r.levelname == "ERROR" and "reported delivered" in r.getMessage()
    ]


@pytest.mark.parametrize("refused", ["capture", "authorize"])
def test_a_refused_capture_of_a_parcel_a_carrier_reports_delivered_is_its_outcome_not_the_webhooks_failure(
    metrics, capsys, caplog, monkeypatch, plugins, refused
):
    clock = Clock()
    world = build_world(STOCK, clock=clock, wrap_orders=MeteredOrders)
    held, shipment_id = a_ship_that_died(world, monkeypatch)
    clock.advance(**LATE)
    assert a_pass(world, clock).held == [held.id]
    other = world.allocated(("TSHIRT", 1))
    other_parcel = other.shipments[0].id
    world.actions.ship(other.id, other_parcel, None, actor="key_wh")
    emitted(capsys)
    world.gateway.script(refused, "refuse")
    caplog.set_level("ERROR")
    tracking = CarrierTracking(plugins)

    report = post(tracking, world, event(held.id, shipment_id), event(other.id, other_parcel))

    assert [(u.order_id, u.outcome) for u in report.updates] == [(held.id, "payment_refused"), (other.id, "delivered")]
    assert world.order(other.id).status is OrderStatus.DELIVERED
    order = world.order(held.id)
    assert order.shipment(shipment_id).status is ShipmentStatus.PENDING and order.payment.captured.amount == 0
    last = world.history(held.id)[-1]
    assert (last.type, last.actor, last.detail["shipment_id"]) == (
        OrderEvent.DELIVERY_NOT_RECORDED, "key_carrier", shipment_id,
    )  # fmt: skip
    assert "refused" in last.detail["message"] or "declined" in last.detail["message"]
    assert emitted(capsys)[NOT_RECORDED] == [1.0]
    assert errors(caplog) == [(held.id, shipment_id)]
    # The runbook's Logs Insights filter finds that line.
    text = README.read_text()
    runbook = text[text.index("### `DeliveriesNotRecordedAlarm`") :].split("\n### ", 1)[0]
    (pattern,) = re.findall(r"logs ApiFunction 'level = \"ERROR\" and message like\s+/([^/]+)/'", runbook)
    assert all(re.search(pattern, " ".join(r.getMessage().split())) for r in caplog.records if r.levelname == "ERROR")

    # The carrier sends the webhook again: the same answer, nothing more recorded, counted or logged.
    caplog.clear()
    entries = len(world.history(held.id))
    again = post(tracking, world, event(held.id, shipment_id), event(other.id, other_parcel))
    assert [u.outcome for u in again.updates] == ["payment_refused", "delivered"]
    assert len(world.history(held.id)) == entries
    assert NOT_RECORDED not in emitted(capsys) and errors(caplog) == []

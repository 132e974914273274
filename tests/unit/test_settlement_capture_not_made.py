"""A settlement capture the gateway refused: what the captures of an order left nothing to ship fall
short of its total (units cancelled after a parcel shipped lost it a cheaper per-unit shipping),
asked by the cancel, the last ship, a delivery report or the reconciler's kept-back pass. Before:
the refusal was a history entry and a PaymentFailures point no alarm watches, with no ERROR line,
so the money the merchant is owed silently never arrived. Now each refusal recorded is a
`SettlementCapturesNotMade` point (SettlementCapturesNotMadeAlarm) and an ERROR line naming the
order, the amount and the currency, which the alarm's runbook finds; a repeat that records nothing
(the same actor, the same refusal) counts and logs nothing."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from core.errors import PaymentRefused
from core.events import OrderEvent
from functions.business_metrics import MeteredOrders, flush
from tests.unit.test_business_metrics import emitted
from tests.unit.test_death_between_writes import dies_after_recording
from tests.unit.test_kept_back_sweep import sweep as kept_back_sweep
from tests.unit.test_unit_cancellation import STOCK, PerUnitShipping
from tests.unit.world import Clock, Died, World, build_racing_world, build_world

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_MADE = ("SettlementCapturesNotMade", ())
SHORT = "2.00"


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    flush()  # nothing left over from another test on this thread
    capsys.readouterr()


def shipped_west(clock: Clock | None = None) -> tuple[World, str, str]:
    """A MUG (west) and three CAPs (east) at 2.00 shipping a unit, the MUG's parcel shipped: a
    cancel of the CAPs leaves a total above the captures (SHORT, the MUG's shipping)."""
    world = build_world(STOCK, PerUnitShipping(), wrap_orders=MeteredOrders, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    return world, order.id, west


def errors(caplog: pytest.LogCaptureFixture) -> list[tuple[object, object, object, str]]:
    """(order_id, amount, currency, message) of the ERROR lines about a settlement capture."""
    return [
        (r.__dict__.get("order_id"), r.__dict__.get("amount"), r.__dict__.get("currency"), r.getMessage())
        for r in caplog.records
        if r.levelname == "ERROR" and "settlement capture" in r.getMessage()
    ]


def test_a_refused_settlement_capture_counts_once_for_its_alarm(metrics, capsys):
    world, order_id, west = shipped_west()
    emitted(capsys)
    world.gateway.script("capture", "refuse")

    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")

    counted = emitted(capsys)
    assert counted[NOT_MADE] == [1.0]
    assert counted[("PaymentFailures", (("kind", "refused"), ("operation", "capture")))] == [1.0]
    # The carrier's report of the parcel asks again in its own name: refused, counted again; the
    # same report sent again records nothing and counts nothing.
    world.actions.deliver(order_id, west, actor="carrier")
    assert emitted(capsys)[NOT_MADE] == [1.0]
    world.actions.deliver(order_id, west, actor="carrier")
    assert NOT_MADE not in emitted(capsys)


def test_a_refused_capture_of_a_parcel_is_not_counted_as_a_settlement_not_made(metrics, capsys):
    # A parcel's capture refused keeps the parcel from shipping: its ship answers 502, and the
    # warehouse knows. Only the settlement's is a shortfall nobody is told of.
    world = build_world(STOCK, wrap_orders=MeteredOrders)
    order = world.allocated(("TSHIRT", 1))
    emitted(capsys)
    world.gateway.script("capture", "refuse")

    with pytest.raises(PaymentRefused):
        world.actions.ship(order.id, order.shipments[0].id, tracking_number=None, actor="key_wh")

    assert [e.type for e in world.history(order.id)][-1] is OrderEvent.CAPTURE_NOT_MADE
    assert NOT_MADE not in emitted(capsys)


def test_a_refused_settlement_capture_logs_an_error_naming_the_order_amount_and_currency(caplog):
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "refuse")
    caplog.set_level("ERROR")

    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")

    ((logged_order, amount, currency, message),) = errors(caplog)
    assert (logged_order, amount, currency) == (order_id, SHORT, "USD")
    assert order_id in message and f"{SHORT} USD" in message
    # The runbook's Logs Insights filter finds that line (and the fields it says the line names).
    text = README.read_text()
    runbook = text[text.index("### `SettlementCapturesNotMadeAlarm`") :].split("\n### ", 1)[0]
    (pattern,) = re.findall(r"logs ApiFunction 'level = \"ERROR\" and message like\s+/([^/]+)/'", runbook)
    assert re.search(pattern, message)
    assert "the line names `order_id` and `amount`" in runbook
    caplog.clear()
    world.actions.ship(order_id, west, tracking_number=None, actor="key_cs")  # renewed, refused: logged
    assert [row[:3] for row in errors(caplog)] == [(order_id, SHORT, "USD")]
    caplog.clear()
    world.actions.ship(order_id, west, tracking_number=None, actor="key_cs")  # the same refusal again
    assert errors(caplog) == []


def test_a_settlement_capture_the_kept_back_pass_is_refused_is_logged_and_counted(metrics, capsys, caplog, monkeypatch):
    # The cancel dies right after its write: the reconciler's kept-back pass asks the settlement.
    clock = Clock()
    world, order_id, _ = shipped_west(clock)
    dies_after_recording(world, monkeypatch, OrderEvent.UNITS_CANCELLED)
    with pytest.raises(Died):
        world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    monkeypatch.undo()
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    emitted(capsys)
    world.gateway.script("capture", "refuse")
    caplog.set_level("ERROR")
    clock.now += timedelta(minutes=20)

    kept_back_sweep(world, clock).run("reconciler")

    assert [row[:3] for row in errors(caplog)] == [(order_id, SHORT, "USD")]
    assert emitted(capsys)[NOT_MADE] == [1.0]
    assert world.history(order_id)[-1].actor == "reconciler"


def test_the_authorizations_rest_is_kept_so_that_asking_again_renews_it_for_the_shortfall_alone():
    # Decided: the rest stays held after the refusal. The refusal spent the authorization, so the
    # next ask (a person sending the parcel's delivery again, as the runbook says) renews it for the
    # SHORT owed alone and releases the spent one then; released at the refusal, `authorized` would
    # drop to `captured`, and there would be nothing left to renew: no way to ask again.
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    (spent,) = world.spy.authorized
    assert world.spy.voided == [] and world.order(order_id).spent_authorizations == [spent]
    world.gateway.script("capture", "approve")

    after = world.actions.deliver(order_id, west, actor="key_ops")

    assert after.payment.captured == after.totals.grand_total == after.payment.authorized
    assert spent in world.spy.voided
    renewed = [e for e in world.history(order_id) if e.type is OrderEvent.PAYMENT_AUTHORIZED][-1]
    assert renewed.detail["replaces"] == spent and renewed.detail["amount"] == {"amount": SHORT, "currency": "USD"}


def test_a_settlement_capture_the_settlement_pass_is_refused_is_logged_and_counted(
    metrics, capsys, caplog, monkeypatch
):
    # The cancel died after asking the gateway (its answer lost): the reconciler's settlement pass
    # asks again under the request's key, and the gateway refuses.
    from core.cancellation import Cancellation
    from core.capture_sweep import UnrecordedCaptureSweep
    from core.order_changes import outage_noted_once
    from tests.unit.test_capture_sweep import InMemorySettlementCaptures, a_settlement_that_died

    clock = Clock()
    world = build_world(STOCK, PerUnitShipping(), wrap_orders=MeteredOrders, clock=clock)
    died = a_settlement_that_died(world, monkeypatch)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    emitted(capsys)
    world.gateway.script("capture", "refuse")
    caplog.set_level("ERROR")
    clock.advance(days=1)
    metered = MeteredOrders(world.orders)  # as the reconciler's composition root wraps it
    cancellation = Cancellation(metered, world.catalog, world.inventory, world.actions._payments, clock,
                                void_failures=outage_noted_once)  # fmt: skip
    sweep = UnrecordedCaptureSweep(metered, cancellation, clock, after=timedelta(minutes=15))

    sweep.run_settlements(InMemorySettlementCaptures(world), "reconciler")

    (request,) = died.captures_requested
    assert [row[:3] for row in errors(caplog)] == [(died.id, str(request.amount.amount), "USD")]
    assert emitted(capsys)[NOT_MADE] == [1.0]
    assert (world.history(died.id)[-1].type, world.history(died.id)[-1].actor) == (
        OrderEvent.CAPTURE_NOT_MADE, "reconciler",
    )  # fmt: skip


def test_a_settlement_capture_no_payment_plugin_took_is_logged_and_counted(metrics, capsys, caplog):
    # The method's plugin removed from the deployment: the cancel made the request itself, so
    # nothing was ever asked under it, and it goes: no pass asks it, a person does once it is back.
    from tests.unit.test_unit_cancellation import Removed

    removed = Removed()
    world = build_world(STOCK, PerUnitShipping(), removed, wrap_orders=MeteredOrders)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh")
    emitted(capsys)
    removed.gone = True
    caplog.set_level("ERROR")

    world.actions.cancel(order.id, "no caps", actor="key_web")

    logged = [row for row in errors(caplog) if row[0] == order.id]
    assert [row[:3] for row in logged] == [(order.id, SHORT, "USD")] and "no payment plugin" in logged[0][3]
    counted = emitted(capsys)
    assert counted[NOT_MADE] == [1.0]
    assert counted[("PaymentFailures", (("kind", "no_plugin"), ("operation", "capture")))] == [1.0]


def test_a_declined_renewal_of_the_settlements_authorization_is_the_settlements_failure(metrics, capsys, caplog):
    # The refusal spent the authorization; a person asks again (the parcel's delivery sent again,
    # as the runbook says) and the card declines its renewal. Before: the history ended with
    # `payment_authorization_failed` alone, no point and no ERROR line: the money the merchant is
    # owed reached no one. Now the settlement's capture is recorded as not made (the amount, no
    # shipment), counted and logged, once: the same ask again records nothing more.
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    emitted(capsys)
    world.gateway.script("authorize", "refuse")
    caplog.set_level("ERROR")
    caplog.clear()

    after = world.actions.deliver(order_id, west, actor="key_ops")

    assert after.payment.captured < after.totals.grand_total
    failed, not_made = world.history(order_id)[-2:]
    assert (failed.type, failed.detail["kind"], failed.actor) == (
        OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "refused", "key_ops",
    )  # fmt: skip
    assert (not_made.type, not_made.actor) == (OrderEvent.CAPTURE_NOT_MADE, "key_ops")
    assert not_made.detail["amount"] == {"amount": SHORT, "currency": "USD"} and "shipment_id" not in not_made.detail
    assert "declined" in not_made.detail["message"]
    assert emitted(capsys)[NOT_MADE] == [1.0]
    ((logged_order, amount, currency, message),) = errors(caplog)
    assert (logged_order, amount, currency) == (order_id, SHORT, "USD") and "declined" in message

    # Asked again by the same person: answered with their decline, the gateway not asked: nothing more.
    caplog.clear()
    entries, asked = len(world.history(order_id)), len(world.gateway.keys("authorize"))
    world.actions.deliver(order_id, west, actor="key_ops")
    assert len(world.history(order_id)) == entries
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []
    assert len(world.gateway.keys("authorize")) == asked
    # The carrier's own report: its own entries, counted again (as a refused capture's is).
    world.actions.deliver(order_id, west, actor="carrier")
    assert world.gateway.keys("authorize")[asked:] == [failed.detail["authorization_key"]]
    assert [e.type for e in world.history(order_id)[entries:]] == [
        OrderEvent.PAYMENT_AUTHORIZATION_FAILED, OrderEvent.CAPTURE_NOT_MADE,
    ]  # fmt: skip
    assert emitted(capsys)[NOT_MADE] == [1.0]
    # Nothing was captured on the spent authorization, nor recorded as captured.
    assert world.spy.captured_total() == after.payment.captured.amount
    # The runbook says what the history and the alarm now show.
    text = README.read_text()
    runbook = " ".join(text[text.index("### `SettlementCapturesNotMadeAlarm`") :].split("\n### ", 1)[0].split())
    declined = "`payment_authorization_failed` (kind `refused`, the gateway's `message`) followed by `capture_not_made`"
    assert declined in runbook
    assert "the alarm fires again and the ERROR line is logged again" in runbook
    assert "no alarm point" not in runbook


def test_a_declined_renewal_whose_settlement_not_made_was_never_written_is_recorded_when_asked_again(
    metrics, capsys, caplog, monkeypatch
):
    # The carrier's report meets the declined renewal, writes the decline, and dies before writing
    # the settlement's capture not made. Before: the carrier's report sent again (the same key, the
    # same decline) was taken for a repeat of one recorded in full: nothing was ever recorded as not
    # made by it, nor counted, nor logged. Now the decline is a repeat only once its capture not
    # made follows it: the report sent again records that, once.
    world, order_id, west = shipped_west()
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    world.gateway.script("authorize", "refuse")
    dies_after_recording(world, monkeypatch, OrderEvent.PAYMENT_AUTHORIZATION_FAILED)
    with pytest.raises(Died):
        world.actions.deliver(order_id, west, actor="carrier")
    monkeypatch.undo()
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    emitted(capsys)
    caplog.set_level("ERROR")
    caplog.clear()
    entries = len(world.history(order_id))

    world.actions.deliver(order_id, west, actor="carrier")

    (not_made,) = world.history(order_id)[entries:]
    assert (not_made.type, not_made.actor, not_made.detail["amount"]) == (
        OrderEvent.CAPTURE_NOT_MADE, "carrier", {"amount": SHORT, "currency": "USD"},
    )  # fmt: skip
    assert "declined" in not_made.detail["message"] and "shipment_id" not in not_made.detail
    assert emitted(capsys)[NOT_MADE] == [1.0]
    assert [row[0] for row in errors(caplog)] == [order_id]
    # Sent again: a repeat now, of a decline recorded in full.
    caplog.clear()
    world.actions.deliver(order_id, west, actor="carrier")
    assert len(world.history(order_id)) == entries + 1
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []
    assert world.spy.captured_total() == world.order(order_id).payment.captured.amount


def test_two_requests_at_once_refused_one_settlement_capture_record_count_and_log_it_once(metrics, capsys, caplog):
    # Cancellation.capture_refused decides whether to note the refusal (refusal_recorded_last)
    # before its write, not in it: harmless, as that write is conditional on the very request it
    # takes away (and on the version). Here a carrier's report runs whole inside the cancel's write
    # of the refusal, after the cancel decided to note it: the report's lands first and takes the
    # request; the cancel's, stale, finds none on the order read again and records nothing.
    world, race = build_racing_world(STOCK, OrderEvent.CAPTURE_NOT_MADE, PerUnitShipping(), around=MeteredOrders)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    world.gateway.script("capture", "refuse")
    emitted(capsys)
    caplog.set_level("ERROR")
    race.between = lambda: world.actions.deliver(order.id, west, actor="carrier")

    world.actions.cancel(order.id, "the rest is not wanted", actor="key_cs")

    assert race.between is None  # the report ran inside the cancel's write
    not_made = [e.actor for e in world.history(order.id) if e.type is OrderEvent.CAPTURE_NOT_MADE]
    assert not_made == ["carrier"]
    assert world.order(order.id).capture_request(None) is None
    assert emitted(capsys)[NOT_MADE] == [1.0]
    assert [row[:3] for row in errors(caplog)] == [(order.id, SHORT, "USD")]

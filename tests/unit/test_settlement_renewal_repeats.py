"""The renewal of the authorization a settlement capture is asked on (what the captures of an order
left nothing to ship fall short of its total), asked again and again by a repeating caller (a
carrier reporting a parcel delivered on a loop, the reconciler's kept-back pass each run), when
the authorization had grown old (not spent by a refused capture) or no payment plugin takes the
order's method. Each answer is recorded, counted for SettlementCapturesNotMadeAlarm and logged
once by each caller, as a refused capture's, a spent authorization's declined renewal's and the
settlement capture's own `no_plugin` are; the order's item does not grow a repeat at a time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from core import hookimpl
from core.events import OrderEvent
from core.models import HistoryEntry, utc_text
from core.order_changes import modify
from functions.business_metrics import MeteredOrders
from tests.unit.test_authorization_renewal import FirstAnswers
from tests.unit.test_business_metrics import emitted
from tests.unit.test_kept_back_sweep import sweep as kept_back_sweep
from tests.unit.test_payment_truth import Removed
from tests.unit.test_settlement_capture_not_made import NOT_MADE, SHORT, errors, metrics  # noqa: F401
from tests.unit.test_unit_cancellation import STOCK, PerUnitShipping
from tests.unit.world import Clock, Died, World, build_world, dies_before_recording


def shipped_west(*plugins: object) -> tuple[World, Clock, str, str]:
    """As test_settlement_capture_not_made.shipped_west (a cancel of the CAPs leaves SHORT owed
    beyond the captures once the MUG's parcel shipped), a gateway answering a key with its first
    answer, and the clock 8 days on: the authorization is old."""
    clock = Clock()
    world = build_world(STOCK, PerUnitShipping(), FirstAnswers(), *plugins, wrap_orders=MeteredOrders, clock=clock)
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    clock.now += timedelta(days=8)
    return world, clock, order.id, west


def declined_for_the_carrier(*plugins: object) -> tuple[World, Clock, str, str]:
    """shipped_west, the rest cancelled (key_cs) and the parcel reported delivered (carrier), the
    renewal the settlement asks first declined for each: the carrier's decline is the history's last."""
    world, clock, order_id, west = shipped_west(*plugins)
    world.gateway.script("authorize", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    world.actions.deliver(order_id, west, actor="carrier")
    return world, clock, order_id, west


@pytest.mark.usefixtures("metrics")
def test_an_old_authorizations_renewal_declined_again_and_again_by_one_caller_is_recorded_once(capsys, caplog):
    # Before: each delivery report sent again asked the card for one more authorization under a new
    # key, and recorded its decline, a capture not made, a SettlementCapturesNotMade point and an
    # ERROR line: the alarm fired on every report of a carrier's loop, and the item grew each time.
    world, _, order_id, west = shipped_west()
    world.gateway.script("authorize", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    world.actions.deliver(order_id, west, actor="carrier")  # another caller: its own entries
    assert [e.type for e in world.history(order_id)][-2:] == [
        OrderEvent.PAYMENT_AUTHORIZATION_FAILED, OrderEvent.CAPTURE_NOT_MADE,
    ]  # fmt: skip
    before, asked = world.history(order_id), len(world.gateway.keys("authorize"))
    emitted(capsys)
    caplog.set_level("ERROR")
    caplog.clear()

    for _ in range(4):
        world.actions.deliver(order_id, west, actor="carrier")

    assert world.history(order_id) == before
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []
    # Answered with the carrier's decline from the history, as a warehouse's repeated ship is
    # (_decline_standing): before, each report asked the gateway again under the key it was
    # declined under, one gateway call a report.
    assert len(world.gateway.keys("authorize")) == asked
    assert world.spy.captured_total() == world.order(order_id).payment.captured.amount

    # A person asking (the runbook's recovery) asks the card afresh, under a new key.
    world.gateway.script("authorize", "approve")
    after = world.actions.deliver(order_id, west, actor="key_ops")

    assert after.payment.captured == after.totals.grand_total
    assert world.gateway.keys("authorize")[-1] not in world.gateway.keys("authorize")[:-1]


@pytest.mark.usefixtures("metrics")
def test_a_carriers_report_after_its_decline_stood_a_day_asks_under_that_key_and_its_decline_stands_anew(
    capsys, caplog
):
    # The standing period over, the gateway is asked again (a bank's block is usually lifted within
    # a day), under the key the carrier's report was declined under (a gateway answers it with its
    # first answer). Before: that decline, repeated, wrote nothing, so the standing period was
    # counted from the first decline for ever and every later report asked the gateway. Now it is
    # written once, at its time, naming when the one it repeats stood until, and stands twice as
    # long; the settlement's capture not made is not written, counted or logged again.
    world, clock, order_id, west = declined_for_the_carrier()
    before, asked = world.history(order_id), len(world.gateway.keys("authorize"))
    (declined,) = [e for e in before[-2:] if e.type is OrderEvent.PAYMENT_AUTHORIZATION_FAILED]
    clock.now = declined.at + timedelta(hours=23, minutes=59)
    world.actions.deliver(order_id, west, actor="carrier")
    assert len(world.gateway.keys("authorize")) == asked
    emitted(capsys)
    caplog.set_level("ERROR")
    caplog.clear()

    clock.now = declined.at + timedelta(days=1)
    world.actions.deliver(order_id, west, actor="carrier")

    key = declined.detail["authorization_key"]
    assert world.gateway.keys("authorize")[asked:] == [key]
    (again,) = world.history(order_id)[len(before) :]
    assert (again.type, again.actor, again.at) == (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "carrier", clock.now)
    assert {k: again.detail[k] for k in ("kind", "authorization_key", "amount", "message")} == {
        k: declined.detail[k] for k in ("kind", "authorization_key", "amount", "message")
    }
    assert again.detail["asked_again_after"] == utc_text(clock.now)  # when the first stood until
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []

    # Its repeats are answered from the history for two days, nothing asked or written; then asked.
    after = world.history(order_id)
    clock.now = again.at + timedelta(days=2) - timedelta(minutes=1)
    world.actions.deliver(order_id, west, actor="carrier")
    assert world.gateway.keys("authorize")[asked:] == [key]
    assert world.history(order_id) == after
    clock.now += timedelta(minutes=1)
    world.actions.deliver(order_id, west, actor="carrier")
    assert world.gateway.keys("authorize")[asked:] == [key, key]
    assert world.history(order_id)[-1].detail["asked_again_after"] == utc_text(clock.now)
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []

    # Another caller asks the card afresh, under a new key.
    world.gateway.script("authorize", "approve")
    settled = world.actions.deliver(order_id, west, actor="key_ops")
    assert settled.payment.captured == settled.totals.grand_total
    assert world.gateway.keys("authorize")[-1] not in world.gateway.keys("authorize")[:-1]


def a_day_after_the_decline(
    world: World, clock: Clock, order_id: str, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> tuple[list[HistoryEntry], int, str, datetime]:
    """The order's history ending with a caller's decline, how many authorizations were asked and
    the key of the last, the metrics and ERROR lines so far let go, and the clock a day after the
    history's last entry (that decline stands no longer): (history, asked, key, the clock's time)."""
    before, asked = world.history(order_id), len(world.gateway.keys("authorize"))
    emitted(capsys)
    caplog.set_level("ERROR")
    caplog.clear()
    clock.now = before[-1].at + timedelta(days=1)
    return before, asked, world.gateway.keys("authorize")[-1], clock.now


def reported(world: World, order_id: str, west: str, caller: str) -> None:
    """The settlement asked again by `caller`: a carrier's delivery report, or a warehouse's ship repeated."""
    if caller == "carrier":
        world.actions.deliver(order_id, west, actor=caller)
    else:
        world.actions.ship(order_id, west, tracking_number=None, actor=caller)


@pytest.mark.usefixtures("metrics")
@pytest.mark.parametrize("caller", ["carrier", "key_wh"])
def test_a_caller_asking_every_quarter_hour_for_three_days_asks_the_card_once_a_standing_period(caller, capsys, caplog):
    # Before: after the first day, each report asked the gateway again (one call a report, 193 over
    # the three days), its standing period counted from the first decline for ever. So for a
    # warehouse repeating the parcel's ship (which asks the settlement again) as for a carrier.
    world, clock, order_id, west = shipped_west()
    world.gateway.script("authorize", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    emitted(capsys)
    reported(world, order_id, west, caller)
    assert emitted(capsys)[NOT_MADE] == [1.0]  # its own, once
    before, asked = world.history(order_id), len(world.gateway.keys("authorize"))
    start = clock.now
    caplog.set_level("ERROR")
    caplog.clear()

    while clock.now < start + timedelta(days=3):
        clock.now += timedelta(minutes=15)
        reported(world, order_id, west, caller)

    # Asked at one day, then two days after that: a day, then twice as long each decline in a row.
    key = world.gateway.keys("authorize")[asked - 1]
    assert world.gateway.keys("authorize")[asked:] == [key, key]
    again = world.history(order_id)[len(before) :]
    assert [(e.type, e.at - start) for e in again] == [
        (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, timedelta(days=1)),
        (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, timedelta(days=3)),
    ]
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []


@pytest.mark.usefixtures("metrics")
def test_a_settlement_renewal_no_payment_plugin_takes_is_the_settlements_failure_noted_once(capsys, caplog):
    # Before: the renewal's `no_plugin` attempt was the only trace: no capture_not_made, no
    # SettlementCapturesNotMade point, no ERROR line naming the settlement (the alarm's runbook finds
    # none), though the parcels have left and the amount is owed, as when the capture itself finds
    # no plugin. Now it is the settlement's failure, noted once by each caller.
    removed = Removed()
    world, clock, order_id, west = shipped_west(removed)
    removed.gone = True
    emitted(capsys)
    caplog.set_level("ERROR")

    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")

    failed, not_made = world.history(order_id)[-2:]
    assert (failed.type, failed.detail["kind"]) == (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "no_plugin")
    assert (not_made.type, not_made.actor) == (OrderEvent.CAPTURE_NOT_MADE, "key_cs")
    assert not_made.detail["amount"] == {"amount": SHORT, "currency": "USD"} and "shipment_id" not in not_made.detail
    assert "no payment plugin" in not_made.detail["message"]
    assert emitted(capsys)[NOT_MADE] == [1.0]
    ((logged_order, amount, _, message),) = errors(caplog)
    assert (logged_order, amount) == (order_id, SHORT) and "no payment plugin" in message

    # The reconciler's kept-back pass, each run while the plugin is out: its own entries once.
    clock.now += timedelta(minutes=20)
    for _ in range(2):
        kept_back_sweep(world, clock).run("reconciler")
    assert [(e.type, e.actor) for e in world.history(order_id)[-2:]] == [
        (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "reconciler"), (OrderEvent.CAPTURE_NOT_MADE, "reconciler"),
    ]  # fmt: skip
    assert emitted(capsys)[NOT_MADE] == [1.0]
    # A carrier's reports on a loop: its own entries once, then nothing more.
    world.actions.deliver(order_id, west, actor="carrier")
    assert emitted(capsys)[NOT_MADE] == [1.0]
    before = world.history(order_id)
    caplog.clear()
    for _ in range(3):
        world.actions.deliver(order_id, west, actor="carrier")
    assert world.history(order_id) == before
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []
    assert world.order(order_id).payment.captured < world.order(order_id).totals.grand_total

    # The plugin back, the next ask renews and captures.
    removed.gone = False
    after = world.actions.deliver(order_id, west, actor="key_ops")
    assert after.payment.captured == after.totals.grand_total
    # Under the key the renewal left standing was asked under: the plugin may have been asked before.
    assert world.gateway.keys("authorize")[-1] == failed.detail["authorization_key"]


class Meanwhile:
    """Runs `then` (once armed) while the gateway is being asked an authorization: another request
    arriving with the first one's call in flight."""

    def __init__(self) -> None:
        self.then: Callable[[], object] | None = None

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self):
        then, self.then = self.then, None
        if then is not None:
            then()
        return (yield)


@pytest.mark.usefixtures("metrics")
def test_a_carriers_report_sent_twice_at_once_after_its_decline_stood_writes_the_decline_again_once(capsys, caplog):
    # A webhook delivered twice at once: the second finds the first's renewal standing and asks under
    # its key too; of the two declines, the one asked again is written (it names when the first
    # stood until), the other is the repeat it always was, and nothing else is written, counted or
    # logged.
    meanwhile = Meanwhile()
    world, clock, order_id, west = declined_for_the_carrier(meanwhile)
    before, asked, key, _ = a_day_after_the_decline(world, clock, order_id, capsys, caplog)

    meanwhile.then = lambda: world.actions.deliver(order_id, west, actor="carrier")
    world.actions.deliver(order_id, west, actor="carrier")

    assert world.gateway.keys("authorize")[asked:] == [key, key]
    (again,) = world.history(order_id)[len(before) :]
    assert (again.type, again.detail["asked_again_after"]) == (
        OrderEvent.PAYMENT_AUTHORIZATION_FAILED,
        utc_text(clock.now),
    )
    assert world.order(order_id).renewing_authorization is None
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []


@pytest.mark.usefixtures("metrics")
def test_a_carriers_report_that_died_asking_again_after_its_decline_stood_is_written_by_the_next_report(
    monkeypatch, capsys, caplog
):
    # The report asking again once the decline stood dies before the gateway's decline is written:
    # its renewal stands, under the carrier's declined key. The next report asks it again (the
    # answer was lost: one call, not to be saved) and writes that decline as the one asked again
    # (asked_again_after), standing two days. Before: it was taken for the first decline's repeat,
    # so nothing was written, the next report asked once more, and only that one wrote it.
    world, clock, order_id, west = declined_for_the_carrier()
    before, asked, key, start = a_day_after_the_decline(world, clock, order_id, capsys, caplog)
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, OrderEvent.PAYMENT_AUTHORIZATION_FAILED)
        with pytest.raises(Died):
            world.actions.deliver(order_id, west, actor="carrier")
    assert world.order(order_id).renewing_authorization is not None

    while clock.now < start + timedelta(days=2):
        clock.now += timedelta(minutes=15)
        world.actions.deliver(order_id, west, actor="carrier")

    assert world.gateway.keys("authorize")[asked:] == [key, key]  # the call that died, and its ask again
    (again,) = world.history(order_id)[len(before) :]
    assert (again.type, again.at) == (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, start + timedelta(minutes=15))
    assert again.detail["asked_again_after"] == utc_text(start)
    assert world.order(order_id).renewing_authorization is None
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []


@pytest.mark.usefixtures("metrics")
def test_a_carriers_report_after_anything_else_was_written_asks_at_once_under_a_new_key(capsys):
    # The decline answers the carrier's repeats only while the history ends with it (and what it
    # led to): an entry since (here a label booking noted) ends that, within the standing day or
    # after it, and the next report asks afresh, its decline and capture not made recorded anew.
    world, clock, order_id, west = declined_for_the_carrier()
    asked = world.gateway.keys("authorize")
    emitted(capsys)
    clock.now += timedelta(hours=1)
    note = {"shipment_id": "elsewhere", "message": "another function's entry"}
    modify(
        world.orders, order_id,
        lambda current: current.noted(OrderEvent.LABEL_BOOKING_FAILED, at=clock(), actor="key_wh", detail=note),
    )  # fmt: skip

    world.actions.deliver(order_id, west, actor="carrier")

    (key,) = world.gateway.keys("authorize")[len(asked) :]
    assert key not in asked
    declined, not_made = world.history(order_id)[-2:]
    assert (declined.type, declined.detail["authorization_key"], "asked_again_after" in declined.detail) == (
        OrderEvent.PAYMENT_AUTHORIZATION_FAILED, key, False,
    )  # fmt: skip
    assert (not_made.type, not_made.actor) == (OrderEvent.CAPTURE_NOT_MADE, "carrier")
    assert emitted(capsys)[NOT_MADE] == [1.0]

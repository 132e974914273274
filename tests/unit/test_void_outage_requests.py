"""A void the gateway is down for, asked by requests that anything repeated at will sends again: a
carrier's delivery report sent again, a warehouse's ship repeated, a cancel repeated. Before: each
request wrote every failed attempt (three entries a call), so a carrier repeating its report
through an outage grew the order's history without bound, until DynamoDB's 400 KB refused every
write on the order. Now, as the reconciler's passes do (outage_noted_once), an outage already the
last word of the order's history on that void records nothing more; the first request to meet it
records its attempts as before, and the gateway's refusal, or its void once back, is recorded."""

from __future__ import annotations

from core.events import OrderEvent
from tests.unit.test_settlement_capture_not_made import shipped_west
from tests.unit.world import AnAttemptInBetween, build_racing_world

VOID_FAILED = OrderEvent.PAYMENT_VOID_FAILED


def void_entries(world, order_id: str, since: int) -> list[tuple[str, str]]:
    return [
        (entry.detail.get("kind"), entry.actor)
        for entry in world.history(order_id)[since:]
        if entry.type is VOID_FAILED
    ]  # fmt: skip


def test_a_void_outage_met_again_by_repeated_reports_ships_and_cancels_is_recorded_once():
    world, order_id, west = shipped_west()
    world.gateway.script("void", "transient")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    first = void_entries(world, order_id, 0)
    assert first == [("transient", "key_cs")] * 3  # the first request's attempts, as before
    since = len(world.history(order_id))

    for _ in range(3):
        world.actions.deliver(order_id, west, actor="carrier")
        world.actions.ship(order_id, west, None, actor="key_wh")
        world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")

    assert void_entries(world, order_id, since) == []
    assert [e.type for e in world.history(order_id)[since:]] == [OrderEvent.SHIPMENT_DELIVERED]
    order = world.order(order_id)
    assert order.payment.captured < order.payment.authorized  # nothing recorded as released

    # The gateway back and refusing: recorded (VoidsNotMadeAlarm), not hidden behind the outage.
    world.gateway.script("void", "refuse")
    world.actions.ship(order_id, west, None, actor="key_wh")
    assert void_entries(world, order_id, since) == [("refused", "key_wh")]


def test_a_void_made_once_the_gateway_is_back_is_recorded():
    world, order_id, west = shipped_west()
    world.gateway.script("void", "transient")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    world.actions.deliver(order_id, west, actor="carrier")
    world.gateway.script("void", "approve")

    world.actions.deliver(order_id, west, actor="carrier")

    order = world.order(order_id)
    assert order.payment.captured == order.payment.authorized == order.totals.grand_total
    assert world.history(order_id)[-1].type is OrderEvent.PAYMENT_VOIDED
    assert world.spy.voided


def test_a_cancel_repeated_by_its_caller_through_a_refused_void_stops_recording_and_counting_it(monkeypatch, capsys):
    # A client retrying its cancel (no Idempotency-Key) of an order whose void the gateway refuses.
    # Before: each repeat asked again and wrote a payment_void_failed (refused), a PaymentFailures
    # point each: VoidsNotMadeAlarm fired per repeat for one hold, and the item grew without bound.
    # Now, as the release of an authorization's rest on a ship or cancel repeated
    # (refusal_noted_once): the same caller's same refusal, the history's last, is not written
    # again; another caller's is, and so is the void once the gateway makes it.
    from functions.business_metrics import MeteredOrders, flush
    from tests.unit.test_business_metrics import emitted
    from tests.unit.test_unit_cancellation import STOCK
    from tests.unit.world import build_world

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    flush()
    world = build_world(STOCK, wrap_orders=MeteredOrders)
    order = world.allocated(("MUG", 1))
    world.gateway.script("void", "refuse")
    world.actions.cancel(order.id, "not wanted", actor="key_web")
    # The cancel wrote the booking's cancel after the refusal: the first repeat's is written again.
    world.actions.cancel(order.id, "not wanted", actor="key_web")
    before = world.history(order.id)
    emitted(capsys)
    refused = ("PaymentFailures", (("kind", "refused"), ("operation", "void")))

    for _ in range(4):
        world.actions.cancel(order.id, "not wanted", actor="key_web")

    assert world.history(order.id) == before
    assert refused not in emitted(capsys)
    world.actions.cancel(order.id, "not wanted", actor="key_cs")  # a person, after the alarm
    assert void_entries(world, order.id, len(before)) == [("refused", "key_cs")]
    assert emitted(capsys)[refused] == [1.0]
    world.gateway.script("void", "approve")
    voided = world.actions.cancel(order.id, "not wanted", actor="key_web")
    assert voided.payment.status.value == "voided"


def racing_world(monkeypatch) -> tuple[object, AnAttemptInBetween]:
    """A world with metrics on, whose order repository runs a race (AnAttemptInBetween)."""
    from functions.business_metrics import MeteredOrders, flush
    from tests.unit.test_unit_cancellation import STOCK

    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OMS")
    flush()
    return build_racing_world(STOCK, VOID_FAILED, around=MeteredOrders)


def test_a_cancel_and_its_retry_at_once_through_a_refused_void_record_and_count_its_refusal_once(monkeypatch, capsys):
    # Before: refusal_noted_once asked "this very refusal the history's last?" before and apart
    # from its conditional write (a history-only entry, the version unmoved): both passed, and both
    # wrote their entry (two entries, VoidsNotMadeAlarm counted twice).
    from tests.unit.test_business_metrics import emitted

    world, racing = racing_world(monkeypatch)
    order = world.allocated(("MUG", 1))
    world.gateway.script("void", "refuse")
    world.actions.cancel(order.id, "not wanted", actor="key_web")
    world.actions.cancel(order.id, "not wanted", actor="key_web")  # past the booking's cancel
    before = world.history(order.id)
    emitted(capsys)
    refused = ("PaymentFailures", (("kind", "refused"), ("operation", "void")))

    racing.between = lambda: world.actions.cancel(order.id, "not wanted", actor="key_cs")
    world.actions.cancel(order.id, "not wanted", actor="key_cs")

    assert racing.between is None  # the retry ran inside the first's write
    assert void_entries(world, order.id, len(before)) == [("refused", "key_cs")]
    assert emitted(capsys)[refused] == [1.0]


def test_a_cancel_and_its_retry_at_once_through_a_void_outage_record_its_attempts_once(monkeypatch):
    # Before: request_outage_noted_once asked "the outage the history's last already?" before the
    # first attempt's write: both requests found it not, and both wrote their three attempts.
    world, racing = racing_world(monkeypatch)
    order = world.allocated(("MUG", 1))
    world.gateway.script("void", "transient")
    racing.between = lambda: world.actions.cancel(order.id, "not wanted", actor="key_cs")

    world.actions.cancel(order.id, "not wanted", actor="key_cs")

    assert racing.between is None
    assert void_entries(world, order.id, 0) == [("transient", "key_cs")] * 3

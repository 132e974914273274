"""A capture asked twice at once under one key (a warehouse system sending its ship twice, a
carrier's tracking sending its report twice), the gateway answering the late one as Stripe does,
409 `idempotency_key_in_use` while its twin's call is in flight, which a payment plugin maps to a
transient failure. The late one's failed attempts are written after its twin's refusal; the key's
answer is that refusal (the hookspec: a declined capture key is answered with its decline again),
so they must not end the run of refusals a repeat is matched against
(Cancellation.refusal_recorded_last: core.order_changes.answers_known). Each capture failure names
its key (`capture_key`) for that."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest

from core import hookimpl, payment_keys
from core.errors import PaymentGatewayUnavailable, PaymentRefused
from core.events import OrderEvent
from core.models import HistoryEntry
from core.order_changes import answers_known
from functions.business_metrics import MeteredOrders
from tests.unit.test_authorization_renewal import STOCK, FirstCaptureAnswers
from tests.unit.test_business_metrics import emitted
from tests.unit.test_capture_sweep import STOCK as DIED_STOCK
from tests.unit.test_delivery_report_refused import NOT_RECORDED
from tests.unit.test_delivery_report_refused import errors as not_recorded_errors
from tests.unit.test_delivery_reports import held_for_parcels
from tests.unit.test_renewal_key_in_use import InUse, kinds
from tests.unit.test_settlement_capture_not_made import NOT_MADE, errors, metrics  # noqa: F401
from tests.unit.test_settlement_renewal_repeats import reported
from tests.unit.test_unit_cancellation import STOCK as SETTLEMENT_STOCK
from tests.unit.test_unit_cancellation import PerUnitShipping
from tests.unit.world import Clock, World, build_world


def capture_failures(capsys: pytest.CaptureFixture[str]) -> dict[str, list[float]]:
    """The PaymentFailures points of captures emitted since last asked, by kind, and the
    SettlementCapturesNotMade points (`not_made`)."""
    found = emitted(capsys)
    counted = {dict(dims)["kind"]: values for (name, dims), values in found.items()
               if name == "PaymentFailures" and dict(dims).get("operation") == "capture"}  # fmt: skip
    return {**counted, "not_made": found.get(NOT_MADE, [])}


class CaptureKeyInUse(InUse):
    """InUse for captures."""

    @hookimpl(wrapper=True)
    def oms_payment_capture(self):
        self.arrived()
        return (yield)


def asked(world: World, order_id: str, caller: str, ship: str) -> None:
    """`caller`'s report (reported: a carrier's delivery, a warehouse's ship repeated), its refusal
    or outage left to its caller."""
    with contextlib.suppress(PaymentRefused, PaymentGatewayUnavailable):
        reported(world, order_id, ship, caller)


def twice_at_once(world: World, in_use: CaptureKeyInUse, order_id: str, ship: str, caller: str, busy: int) -> None:
    """`caller`'s report twice at once: the late one's first `busy` attempts "in use" (3, every one)."""
    in_use.twin, in_use.busy = (lambda: asked(world, order_id, caller, ship)), busy
    asked(world, order_id, caller, ship)


def a_refused_parcel(clock: Clock) -> tuple[World, CaptureKeyInUse, str, str]:
    """A parcel whose card refuses every capture (tok_capture_decline), its ship refused on the
    authorization and then on the renewal made for that (Order.refusal_renewal, asked again under
    its key by every repeat): the history ends with the warehouse's refusal."""
    in_use = CaptureKeyInUse()
    world = build_world(STOCK, FirstCaptureAnswers(), in_use, wrap_orders=MeteredOrders, clock=clock)
    order = world.allocated(("TSHIRT", 2), token="tok_capture_decline")
    (shipment,) = order.shipments
    for _ in range(2):
        asked(world, order.id, "key_wh", shipment.id)
    return world, in_use, order.id, shipment.id


def a_refused_settlement(clock: Clock) -> tuple[World, CaptureKeyInUse, str, str]:
    """A settlement capture (what a cancel of the CAPs left owed once the MUG's parcel shipped)
    refused by the cancel, then by the carrier's report of the parcel: the history ends with the
    carrier's refusal."""
    in_use = CaptureKeyInUse()
    world = build_world(
        SETTLEMENT_STOCK, PerUnitShipping(), FirstCaptureAnswers(), in_use, wrap_orders=MeteredOrders, clock=clock
    )
    order = world.allocated(("MUG", 1), ("CAP", 3), shipping_method="per_unit")
    west = world.shipment_at(order, "wh-west")
    world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    world.gateway.script("capture", "refuse")
    world.actions.cancel(order.id, "the rest is not wanted", actor="key_cs")
    asked(world, order.id, "carrier", west)
    return world, in_use, order.id, west


BUILT = {"key_wh": a_refused_parcel, "carrier": a_refused_settlement}


@pytest.mark.usefixtures("metrics")
@pytest.mark.parametrize("busy", [1, 3])
@pytest.mark.parametrize("caller", ["key_wh", "carrier"])
def test_a_repeat_sent_twice_at_once_whose_twin_found_the_key_in_use_records_nothing_but_that(
    caller, busy, clock, capsys, caplog
):
    # Before: the late twin's transient entry, after the refusal, ended the run of refusals. Its
    # own attempt answered with the key's refusal (busy 1) wrote that refusal again, and the next
    # repeat wrote a payment_capture_failed and capture_not_made pair (a PaymentFailures point;
    # the settlement's, a SettlementCapturesNotMade point and an ERROR line too).
    world, in_use, order_id, ship = BUILT[caller](clock)
    refused, key = world.history(order_id)[-2], world.gateway.keys("capture")[-1]
    said = (refused.type, refused.actor, refused.detail["kind"], refused.detail["capture_key"])
    assert said == (OrderEvent.PAYMENT_CAPTURE_FAILED, caller, "refused", key)
    before, calls = world.history(order_id), len(world.gateway.keys("capture"))
    capture_failures(capsys)
    caplog.set_level("ERROR")
    caplog.clear()
    clock.now += timedelta(minutes=15)

    twice_at_once(world, in_use, order_id, ship, caller, busy)

    answered = 1 if busy == 1 else 0  # the late one's attempt after its twin's call ended
    assert world.gateway.keys("capture")[calls:] == [key] * (1 + answered)
    late = world.history(order_id)[len(before) :]
    assert kinds(late) == [(OrderEvent.PAYMENT_CAPTURE_FAILED, "transient")] * busy
    assert {(e.actor, e.detail["capture_key"]) for e in late} == {(caller, key)}
    written = world.history(order_id)

    # The caller's repeats, every quarter hour for a day: answered with the refusal, nothing written.
    for _ in range(4 * 24):
        clock.now += timedelta(minutes=15)
        asked(world, order_id, caller, ship)
    assert world.history(order_id) == written
    assert set(world.gateway.keys("capture")[calls:]) == {key}
    assert capture_failures(capsys) == {"transient": [1.0] * busy, "not_made": []}  # the late one's outage alone
    assert errors(caplog) == []
    assert world.order(order_id).captures_requested == []


def test_a_first_ship_sent_twice_at_once_whose_twin_found_the_key_in_use_records_its_refusal_once(clock):
    # The warehouse's first ship of the parcel, twice at once: the twin's refusal is written (the
    # authorization spent), and the late one's "in use" after it. Before: the late one, answered
    # with the key's refusal on its next attempt, wrote that refusal a second time.
    in_use = CaptureKeyInUse()
    world = build_world(STOCK, FirstCaptureAnswers(), in_use, clock=clock)
    order = world.allocated(("TSHIRT", 2), token="tok_capture_decline")
    (shipment,) = order.shipments
    before = world.history(order.id)

    twice_at_once(world, in_use, order.id, shipment.id, "key_wh", 1)

    key = payment_keys.capture(order.id, shipment.id)
    assert world.gateway.keys("capture") == [key] * 2  # the twin's, and the late one's second attempt
    assert kinds(world.history(order.id)[len(before) :]) == [
        (OrderEvent.PAYMENT_CAPTURE_FAILED, "refused"),
        (OrderEvent.CAPTURE_NOT_MADE, None),
        (OrderEvent.PAYMENT_CAPTURE_FAILED, "transient"),
    ]
    after = world.order(order.id)
    assert after.captures_requested == [] and after.spent_authorizations == [order.payment.authorization]


def without_keys(world: World, order_id: str) -> None:
    """The order's capture failures as code before `capture_key` wrote them."""
    world.orders.histories[order_id] = [
        entry.model_copy(update={"detail": {k: v for k, v in entry.detail.items() if k != "capture_key"}})
        if entry.type is OrderEvent.PAYMENT_CAPTURE_FAILED else entry
        for entry in world.history(order_id)
    ]  # fmt: skip


@pytest.mark.parametrize("caller", ["key_wh", "carrier"])
def test_a_refusal_written_before_capture_failures_named_their_key_is_still_matched_by_its_repeats(caller, clock):
    # An order whose refusal older code wrote (no capture_key): its repeats are matched by value
    # (the actor, the shipment, the amount, the gateway's words) as before, and record nothing.
    world, _, order_id, ship = BUILT[caller](clock)
    without_keys(world, order_id)
    before = world.history(order_id)
    assert not any("capture_key" in (e.detail or {}) for e in before)

    for _ in range(3):
        asked(world, order_id, caller, ship)

    assert world.history(order_id) == before


def failed(kind: str, key: str | None) -> HistoryEntry:
    """A capture's failed attempt of `kind` under `key` (None: as older code wrote it, unnamed)."""
    named = {"capture_key": key} if key else {}
    return HistoryEntry(
        at=Clock().now, type=OrderEvent.PAYMENT_CAPTURE_FAILED, actor="key_wh",
        detail={"operation": "capture", "attempt": 0, "kind": kind, "message": "m", **named},
    )  # fmt: skip


def test_only_a_transient_capture_under_a_key_refused_in_the_history_is_stepped_over():
    refused = failed("refused", "k1")
    not_made = HistoryEntry(at=Clock().now, type=OrderEvent.CAPTURE_NOT_MADE, actor="key_wh")
    twin, other, unnamed = failed("transient", "k1"), failed("transient", "k2"), failed("transient", None)
    # A transient attempt under k1 after k1's refusal says nothing the refusal did not.
    assert answers_known([refused, not_made, twin]) == [refused, not_made]
    # Under another key, or under none (older code), it is an outage of its own, and kept.
    for kept in (other, unnamed):
        assert answers_known([refused, not_made, kept]) == [refused, not_made, kept]
    # A refusal under no key (older code) steps nothing over.
    assert answers_known([failed("refused", None), failed("transient", None)]) == [
        failed("refused", None), failed("transient", None)
    ]  # fmt: skip
    # An authorization's transient attempt under a key only a capture was refused under is kept.
    auth = HistoryEntry(at=Clock().now, type=OrderEvent.PAYMENT_AUTHORIZATION_FAILED, actor="key_wh",
                        detail={"kind": "transient", "authorization_key": "k1"})  # fmt: skip
    assert answers_known([refused, auth]) == [refused, auth]


@pytest.mark.usefixtures("metrics")
@pytest.mark.parametrize("busy", [1, 3])
def test_a_report_of_an_unshipped_parcel_sent_twice_at_once_calls_a_person_once(
    busy, clock, monkeypatch, capsys, caplog
):
    # A parcel whose ship died after its capture, reported delivered by its carrier, the capture
    # that report asks refused: delivery_not_recorded calls a person (DeliveriesNotRecordedAlarm).
    # The report sent twice at once: the late one's "in use" lands after the refusal. Before: the
    # late one's report (busy 1), or the next report (busy 3), took that entry for a newer capture
    # failure than the report's delivery_not_recorded, and wrote, counted and logged another.
    in_use = CaptureKeyInUse()
    world = build_world(DIED_STOCK, in_use, clock=clock, wrap_orders=MeteredOrders)
    held, (shipment_id,) = held_for_parcels(world, clock, monkeypatch, ("TSHIRT", 1))
    world.gateway.script("capture", "refuse")
    asked(world, held.id, "carrier", shipment_id)
    assert world.history(held.id)[-1].type is OrderEvent.DELIVERY_NOT_RECORDED
    before = world.history(held.id)
    emitted(capsys)
    caplog.set_level("ERROR")
    caplog.clear()

    twice_at_once(world, in_use, held.id, shipment_id, "carrier", busy)
    for _ in range(3):
        asked(world, held.id, "carrier", shipment_id)

    late = world.history(held.id)[len(before) :]
    assert [(e.type, e.detail.get("kind")) for e in late] == [(OrderEvent.PAYMENT_CAPTURE_FAILED, "transient")] * busy
    assert NOT_RECORDED not in emitted(capsys) and not_recorded_errors(caplog) == []


def test_a_capture_outage_written_before_capture_failures_named_their_key_is_still_known_to_a_repeat(clock):
    # The gateway down, a warehouse repeating its ship: the outage is recorded once
    # (request_outage_noted_once). One older code recorded (no capture_key) is still that outage:
    # the repeat after the upgrade records nothing (it would have written its three attempts).
    world = build_world(STOCK, clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "transient")
    asked(world, order.id, "key_wh", shipment.id)
    without_keys(world, order.id)
    before = world.history(order.id)
    assert kinds(before[-1:]) == [(OrderEvent.PAYMENT_CAPTURE_FAILED, "transient")]

    asked(world, order.id, "key_wh", shipment.id)

    assert world.history(order.id) == before

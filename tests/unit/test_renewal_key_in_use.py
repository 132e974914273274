"""A renewal asked twice at once under one key (a carrier's report delivered twice, a warehouse's
ship sent twice), the gateway answering the late one as Stripe does, 409 `idempotency_key_in_use`
while its twin's call is in flight, which a payment plugin maps to a transient failure
(TransientError: the key's answer is not known to it yet; the hookspec asks for that). The late
one's failed attempt is written after its twin's decline: the key's answer is that decline, so it
must not end the run of declines the caller's repeats are answered from
(core.cancellation._answers_known), nor make a decline of the key after it a new one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta

import pytest

from core import hookimpl
from core.errors import PaymentGatewayUnavailable, PaymentRefused, TransientError
from core.events import OrderEvent
from core.models import utc_text
from tests.unit.test_authorization_renewal import STOCK as AUTHORIZED_STOCK
from tests.unit.test_authorization_renewal import FirstAnswers
from tests.unit.test_business_metrics import emitted
from tests.unit.test_settlement_capture_not_made import NOT_MADE, errors, metrics  # noqa: F401
from tests.unit.test_settlement_renewal_repeats import a_day_after_the_decline, reported, shipped_west
from tests.unit.world import World, build_world

IN_USE = "idempotency_key_in_use: There is currently another in-progress request using this Idempotent Key"


class InUse:
    """A payment plugin's mapping of Stripe's 409 `idempotency_key_in_use` (TransientError), for an
    operation's hook wrapper to call (arrived) before the gateway's answer. Armed (`twin`, `busy`),
    the next request asked is the late one of two: its twin (`twin`) asks under the same key and
    has its answer written first, then the late one's first `busy` attempts are answered "in use"
    (they reached the gateway while its twin's call was in flight), a later one with the key's
    answer (a gateway's first answers: FirstAnswers, FirstCaptureAnswers)."""

    def __init__(self) -> None:
        self.twin: Callable[[], object] | None = None
        self.busy = 0
        self.late = 0

    def arrived(self) -> None:
        if self.twin is not None:
            twin, self.twin = self.twin, None
            twin()
            self.late = self.busy
        if self.late:
            self.late -= 1
            raise TransientError(IN_USE)


class KeyInUse(InUse):
    """InUse for authorizations."""

    @hookimpl(wrapper=True)
    def oms_payment_authorize(self):
        self.arrived()
        return (yield)


def twice_at_once(world: World, key_in_use: KeyInUse, order_id: str, west: str, caller: str, busy: int) -> None:
    """`caller`'s report (reported: a carrier's delivery, a warehouse's ship repeated), twice at
    once: the late one's first `busy` attempts "in use" (3, every one: the settlement waits)."""
    key_in_use.twin, key_in_use.busy = (lambda: reported(world, order_id, west, caller)), busy
    reported(world, order_id, west, caller)


def kinds(entries: list) -> list[tuple[OrderEvent, str | None]]:
    return [(e.type, (e.detail or {}).get("kind")) for e in entries if e.type is not OrderEvent.DELIVERY_NOT_RECORDED]


@pytest.mark.usefixtures("metrics")
@pytest.mark.parametrize("busy", [1, 3])
@pytest.mark.parametrize("caller", ["carrier", "key_wh"])
def test_a_report_asked_again_whose_twin_found_the_key_in_use_keeps_the_decline_standing_two_days(
    caller, busy, capsys, caplog
):
    # Before: the late twin's transient entry, after the decline asked again, ended the run of
    # declines: the next report asked the card at once under a new key, its decline and capture not
    # made recorded and alarmed anew (busy 3); and a decline of the key after that entry (busy 1)
    # was written a second time, the run's two declines standing four days, not two.
    key_in_use = KeyInUse()
    world, clock, order_id, west = shipped_west(key_in_use)
    world.gateway.script("authorize", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    reported(world, order_id, west, caller)
    before, asked, key, start = a_day_after_the_decline(world, clock, order_id, capsys, caplog)

    twice_at_once(world, key_in_use, order_id, west, caller, busy)

    answered = 1 if busy == 1 else 0  # the late one's attempt after its twin's call ended
    assert world.gateway.keys("authorize")[asked:] == [key] * (1 + answered)
    again, *late = world.history(order_id)[len(before) :]
    assert again.type is OrderEvent.PAYMENT_AUTHORIZATION_FAILED
    assert again.detail["asked_again_after"] == utc_text(start)
    assert kinds(late) == [(OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "transient")] * busy
    assert {e.detail["authorization_key"] for e in late} == {key}
    written = world.history(order_id)

    # The caller's reports every quarter hour: answered from the history for two days.
    while clock.now < start + timedelta(days=2) - timedelta(minutes=15):
        clock.now += timedelta(minutes=15)
        reported(world, order_id, west, caller)
    assert world.gateway.keys("authorize")[asked:] == [key] * (1 + answered)
    assert world.history(order_id) == written
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []

    # Then asked again under that key, its decline written once more, standing four days.
    clock.now = start + timedelta(days=2)
    reported(world, order_id, west, caller)
    assert world.gateway.keys("authorize")[asked:] == [key] * (2 + answered)
    (third,) = world.history(order_id)[len(written) :]
    assert (third.detail["kind"], third.detail["asked_again_after"]) == ("refused", utc_text(clock.now))
    assert NOT_MADE not in emitted(capsys) and errors(caplog) == []


@pytest.mark.usefixtures("metrics")
def test_a_first_report_whose_twin_found_the_key_in_use_records_the_settlement_not_made_once(capsys, caplog):
    # The carrier's first report of the parcel, twice at once: the late one, "in use" once, then
    # answered with its twin's decline. Before: its transient entry ended the run, so that decline
    # was written again, and with it the settlement's capture not made, a second
    # SettlementCapturesNotMade point and a second ERROR line.
    key_in_use = KeyInUse()
    world, _, order_id, west = shipped_west(key_in_use)
    world.gateway.script("authorize", "refuse")
    world.actions.cancel(order_id, "the rest is not wanted", actor="key_cs")
    before, asked = world.history(order_id), len(world.gateway.keys("authorize"))
    emitted(capsys)
    caplog.set_level("ERROR")
    caplog.clear()

    twice_at_once(world, key_in_use, order_id, west, "carrier", 1)

    twin, late = world.gateway.keys("authorize")[asked:]
    assert twin == late  # the late one's second attempt, answered with its twin's decline
    assert kinds(world.history(order_id)[len(before) :]) == [
        (OrderEvent.SHIPMENT_DELIVERED, None),
        (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "refused"),
        (OrderEvent.CAPTURE_NOT_MADE, None),
        (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "transient"),
    ]
    assert emitted(capsys)[NOT_MADE] == [1.0]
    assert len(errors(caplog)) == 1


@pytest.mark.parametrize("busy", [1, 3])
def test_a_ships_renewal_for_a_refused_capture_asked_twice_at_once_answers_its_repeats_until_the_authorization_is_old(
    busy, clock
):
    # The renewal made for a refused capture is asked once (Order.refusal_renewal): declined, the
    # warehouse's ship repeated is answered with that decline until the authorization is old. Its
    # ship sent twice at once: the late one's attempt "in use" landed after its twin's decline.
    # Before: it ended the run, so each repeat asked the card under the key again, and the decline
    # that answered the late one (busy 1) was written a second time.
    key_in_use = KeyInUse()
    world = build_world(AUTHORIZED_STOCK, FirstAnswers(), key_in_use, clock=clock)
    order = world.allocated(("TSHIRT", 2))
    (shipment,) = order.shipments
    world.gateway.script("capture", "refuse", "approve")
    world.gateway.script("authorize", "refuse", "approve")

    def ship() -> None:
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    def twin() -> None:
        with contextlib.suppress(PaymentRefused):
            ship()

    with pytest.raises(PaymentRefused):
        ship()  # the capture refused: its authorization is renewed first
    before = world.history(order.id)
    key_in_use.twin, key_in_use.busy = twin, busy
    with pytest.raises((PaymentRefused, PaymentGatewayUnavailable)):
        ship()

    # The twin's ask, and the late one's answered (busy 1), under one key.
    assert len(set(world.gateway.keys("authorize")[-(1 + (busy == 1)) :])) == 1
    assert kinds(world.history(order.id)[len(before) :]) == [
        (OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "refused"),
        *[(OrderEvent.PAYMENT_AUTHORIZATION_FAILED, "transient")] * busy,
    ]
    asked, history = world.gateway.keys("authorize"), world.history(order.id)
    clock.days_later(6.9)

    with pytest.raises(PaymentRefused) as refused:
        ship()

    assert (world.gateway.keys("authorize"), world.history(order.id)) == (asked, history)
    assert refused.value.details[0]["asked_again_after"] == utc_text(order.authorized_at + timedelta(days=7))

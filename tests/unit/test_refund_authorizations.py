"""A refund goes to the authorization whose captures it gives back (Order.refund_sources), split
into one gateway refund per authorization when it spans two, on the in-memory world."""

from __future__ import annotations

import json

import pytest

from core import hookimpl, payment_keys
from core.domain_events import order_events
from core.errors import PaymentGatewayUnavailable, RefundExceedsCaptured
from core.models import EarlierCaptures, Order
from core.money import Money
from core.notifications import notifications
from core.refunds import owes_kept_back, refund_id_for, went_back_id
from core.return_models import ReceiveReturn, RequestReturn, Return
from core.returns import Returns
from core.status import OrderStatus, PaymentStatus
from functions.plugin_loading import load_plugin_manager
from tests.builders import location
from tests.fakes import run_return_workflow
from tests.unit.test_unit_cancellation import PerUnitShipping
from tests.unit.world import Clock, Died, World, build_world, dies_before_recording

# MUG is only in the west and CAP only in the east: an order of both ships in two parcels.
STOCK = [("MUG", "wh-west", 3), ("CAP", "wh-east", 4), ("TSHIRT", "wh-east", 10)]


def renewed_between_parcels(world: World, clock: Clock) -> tuple[Order, Order]:
    """The west parcel (a mug, with the shipping) shipped on the first authorization; the east
    parcel (three caps) ten days later, on the renewed one. The order after each ship."""
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (next(s.id for s in order.shipments if s.location_id == loc) for loc in ("wh-west", "wh-east"))
    first = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    clock.days_later(10)
    second = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    assert second.payment.authorization != first.payment.authorization
    return first, second


def returns_of(world: World, clock: Clock) -> Returns:
    return Returns(
        world.orders, world.returns, world.catalog, world.inventory, world.labels,
        load_plugin_manager(enable_test_payments=True).hook, world.refunds, clock=clock, capture=world.capture,
    )  # fmt: skip


def returned(world: World, clock: Clock, order: Order, *lines: tuple[str, int]) -> Order:
    """`lines` ({line id, units}) returned, received and refunded; the order after."""
    returns = returns_of(world, clock)
    asked = RequestReturn.model_validate(
        {"lines": [{"line_id": line_id, "quantity": units, "reason": "changed my mind"} for line_id, units in lines]}
    )
    item = returns.request(order.id, asked, actor="key_cs")
    back = [{"line_id": line_id, "quantity": units, "condition": "resellable"} for line_id, units in lines]
    receipt = {"location_id": "wh-west", "lines": back}
    returns.receive(item.id, ReceiveReturn.model_validate(receipt), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")
    return world.order(order.id)


def test_a_return_of_the_first_parcel_after_a_renewal_is_refunded_against_the_authorization_that_captured_it(
    world, clock
):
    # Before: refunded against the renewed authorization, which captured only the caps: a real
    # gateway refuses it (or refunds the wrong charge).
    first, second = renewed_between_parcels(world, clock)
    mug = second.lines[0]

    after = returned(world, clock, second, ("L1", 1))

    [refund] = after.payment.refunds
    assert (refund.status, refund.amount, refund.authorization, refund.parts) == (
        "succeeded", mug.total, first.payment.authorization, None
    )  # fmt: skip
    assert world.spy.refunded == [(first.payment.authorization, mug.total, payment_keys.refund(second.id, refund.id))]
    assert after.payment.refunded == mug.total


def test_a_return_of_both_parcels_is_split_into_one_refund_per_authorization(world, clock):
    first, second = renewed_between_parcels(world, clock)
    mug, caps = second.lines

    after = returned(world, clock, second, ("L1", 1), ("L2", 3))

    [refund] = after.payment.refunds
    assert (refund.status, refund.amount, refund.authorization) == ("succeeded", mug.total + caps.total, None)
    old, new = first.payment.authorization, second.payment.authorization
    assert [(p.authorization, p.amount, p.status) for p in refund.parts or []] == [
        (old, mug.total, "succeeded"), (new, caps.total, "succeeded")
    ]  # fmt: skip
    assert world.spy.refunded == [
        (old, mug.total, payment_keys.refund_part(second.id, refund.id, old)),
        (new, caps.total, payment_keys.refund_part(second.id, refund.id, new)),
    ]
    assert after.payment.refunded == refund.amount
    entry = next(e for e in world.history(second.id) if e.type == "payment_refunded")
    assert [part["authorization"] for part in entry.detail["parts"]] == [old, new]


def test_an_appeasement_of_more_than_the_renewed_authorization_captured_takes_the_rest_from_the_old_one(world, clock):
    first, second = renewed_between_parcels(world, clock)
    old, new = first.payment.authorization, second.payment.authorization
    under_old = first.payment.captured
    under_new = second.payment.captured - under_old

    refund = world.refunds.issue_refund(second.id, second.payment.captured, "goodwill", "appease-all", actor="key_cs")

    assert refund.status == "succeeded"
    refund_id = refund_id_for(second.id, "appease-all")
    assert sorted(world.spy.refunded) == sorted([
        (old, under_old, payment_keys.refund_part(second.id, refund_id, old)),
        (new, under_new, payment_keys.refund_part(second.id, refund_id, new)),
    ])  # fmt: skip
    after = world.order(second.id)
    assert (after.payment.refunded, after.payment.status) == (second.payment.captured, PaymentStatus.REFUNDED)


def test_a_refund_made_before_the_renewal_keeps_counting_against_the_authorization_it_went_to(world, clock):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = (next(s.id for s in order.shipments if s.location_id == loc) for loc in ("wh-west", "wh-east"))
    first = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    five = Money.of("5.00", "USD")
    world.refunds.issue_refund(order.id, five, "late", "appease-early", actor="key_cs")
    clock.days_later(10)
    second = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    old = first.payment.authorization
    assert second.payment.refunds[0].authorization == old  # named by the renewal's write

    rest = second.payment.captured - five
    world.refunds.issue_refund(order.id, rest, "goodwill", "appease-rest", actor="key_cs")

    refund_id = refund_id_for(order.id, "appease-rest")
    assert world.spy.refunded[-2:] == [
        (old, first.payment.captured - five, payment_keys.refund_part(order.id, refund_id, old)),
        (second.payment.authorization, second.payment.captured - first.payment.captured,
         payment_keys.refund_part(order.id, refund_id, second.payment.authorization)),
    ]  # fmt: skip
    with pytest.raises(RefundExceedsCaptured):
        world.refunds.issue_refund(order.id, Money.of("0.01", "USD"), "more", "appease-more", actor="key_cs")


def test_a_split_refund_whose_second_part_is_refused_fails_and_counts_only_what_went_back(world, clock):
    first, second = renewed_between_parcels(world, clock)
    world.gateway.script("refund", "approve", "refuse")

    refund = world.refunds.issue_refund(second.id, second.payment.captured, "goodwill", "appease-1", actor="key_cs")

    assert refund.status == "failed"
    after = world.order(second.id)
    [stored] = after.payment.refunds
    assert [(p.authorization, p.status) for p in stored.parts or []] == [
        (first.payment.authorization, "succeeded"), (second.payment.authorization, "failed")
    ]  # fmt: skip
    assert after.payment.refunded == first.payment.captured  # what the gateway did give back
    assert after.payment.refundable() == second.payment.captured - first.payment.captured


def test_a_split_refund_the_gateway_could_not_finish_asks_each_part_again_under_its_own_key(world, clock):
    first, second = renewed_between_parcels(world, clock)
    world.gateway.script("refund", "approve", "transient", "transient", "transient", "approve")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(second.id, second.payment.captured, "goodwill", "appease-1", actor="key_cs")
    assert world.order(second.id).payment.refunds[0].status == "pending"

    again = world.refunds.issue_refund(second.id, second.payment.captured, "goodwill", "appease-1", actor="key_cs")

    refund_id = refund_id_for(second.id, "appease-1")
    old, new = first.payment.authorization, second.payment.authorization
    assert again.status == "succeeded"
    keys = [payment_keys.refund_part(second.id, refund_id, a) for a in (old, new)]
    assert world.gateway.keys("refund") == [keys[0], keys[1], keys[1], keys[1], keys[0], keys[1]]
    assert world.order(second.id).payment.refunded == second.payment.captured


def test_the_typical_order_refunds_against_its_one_authorization_under_the_refunds_own_key(world, clock):
    order = world.allocated(("MUG", 1), ("CAP", 3))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")

    after = returned(world, clock, world.order(order.id), ("L1", 1), ("L2", 3))

    [refund] = after.payment.refunds
    assert (refund.authorization, refund.parts) == (None, None)
    assert world.spy.refunded == [
        (order.payment.authorization, refund.amount, payment_keys.refund(order.id, refund.id))
    ]
    stored = json.loads(after.stored_json())
    assert "earlier_captures" not in stored
    assert {"authorization", "parts"}.isdisjoint(stored["payment"]["refunds"][0])


def test_what_each_authorization_captured_is_stored_and_read_back(world, clock):
    first, second = renewed_between_parcels(world, clock)
    west = next(s.id for s in second.shipments if s.location_id == "wh-west")

    [earlier] = second.earlier_captures
    assert (earlier.authorization, earlier.captured, earlier.shipments) == (
        first.payment.authorization, first.payment.captured, [west]
    )  # fmt: skip
    assert Order.model_validate_json(second.stored_json()).earlier_captures == second.earlier_captures
    assert "earlier_captures" not in second.model_dump(mode="json")


class CaptureCalls:
    """Records every capture asked of the gateway, a repeat under a key seen before too: (authorization, key)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    @hookimpl(wrapper=True)
    def oms_payment_capture(self, authorization, idempotency_key):
        self.calls.append((authorization, idempotency_key))
        return (yield)


def west_ship_died_after_its_capture(world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[Order, str, str]:
    """A MUG (wh-west) and three CAPs (wh-east) allocated; the west parcel's ship died after the
    gateway captured it, before recording it: the order as placed, the west and east parcels."""
    order = world.allocated(("MUG", 1), ("CAP", 3))
    west, east = world.shipment_at(order, "wh-west"), world.shipment_at(order, "wh-east")
    with monkeypatch.context() as patched:
        dies_before_recording(world, patched, "shipment_shipped")
        with pytest.raises(Died):
            world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")
    return order, west, east


def test_a_capture_a_ship_left_standing_through_a_renewal_stays_under_the_authorization_it_was_made_under(
    clock, monkeypatch
):
    # The west parcel's ship died after the gateway captured it on the first authorization; ten days
    # later the east parcel's ship renewed the authorization. Before: the west ship repeated asked
    # for its capture again against the renewed authorization (under the capture's key, which a
    # real gateway refuses or answers with the capture on the first one), and counted it there, so
    # the mug's return was refunded against an authorization that never captured it.
    captures = CaptureCalls()
    world = build_world(STOCK, captures, clock=clock)
    order, west, east = west_ship_died_after_its_capture(world, monkeypatch)
    old = order.payment.authorization
    clock.days_later(10)
    renewed = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    assert renewed.payment.authorization != old

    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    west_key = payment_keys.capture(order.id, west)
    assert [authorization for authorization, key in captures.calls if key == west_key] == [old, old]
    share = shipped.shipment(west).captured
    assert share is not None
    assert shipped.earlier_captures == [EarlierCaptures(authorization=old, captured=share, shipments=[west])]
    after = returned(world, clock, shipped, ("L1", 1))
    [refund] = after.payment.refunds
    assert world.spy.refunded == [(old, refund.amount, payment_keys.refund(order.id, refund.id))]


def test_a_return_whose_split_refund_was_refused_after_its_first_part_went_back_gives_back_only_the_rest(world, clock):
    # The mug's part went back on the first authorization, then the gateway refused the caps' part
    # on the renewed one: the refund failed. Without counting the part that went back, the
    # return's next attempt refunded the mug a second time.
    _, second = renewed_between_parcels(world, clock)
    mug, caps = second.lines
    world.gateway.script("refund", "approve", "refuse")
    returns = returns_of(world, clock)
    asked = RequestReturn.model_validate(
        {"lines": [{"line_id": line_id, "quantity": units, "reason": "changed my mind"} for line_id, units in
                   (("L1", 1), ("L2", 3))]}
    )  # fmt: skip
    item = returns.request(second.id, asked, actor="key_cs")
    back = [
        {"line_id": line_id, "quantity": units, "condition": "resellable"} for line_id, units in (("L1", 1), ("L2", 3))
    ]
    returns.receive(item.id, ReceiveReturn.model_validate({"location_id": "wh-west", "lines": back}), "key_wh")
    assert run_return_workflow(returns, item.id, actor="key_wh").status.value == "received"
    assert world.order(second.id).payment.refunded == mug.total

    world.gateway.script("refund", "approve")
    done = run_return_workflow(returns, item.id, actor="key_wh")

    after = world.order(second.id)
    failed, succeeded = after.payment.refunds
    assert (failed.status, succeeded.status, succeeded.amount) == ("failed", "succeeded", caps.total)
    assert after.payment.refunded == mug.total + caps.total
    assert (done.status.value, done.refund) == ("refunded", mug.total + caps.total)


def test_a_capture_request_stored_before_requests_named_their_authorization_stays_under_the_one_it_was_asked_under(
    clock, monkeypatch
):
    # As above, but the west ship died before this version (its request names no authorization:
    # the order's, then). Before: the renewal for the east parcel took the old authorization for
    # the order's own, so the west ship repeated asked for its capture again on the renewed one,
    # and the old one, which had captured it, was voided as if nothing stood on it.
    captures = CaptureCalls()
    world = build_world(STOCK, captures, clock=clock)
    order, west, east = west_ship_died_after_its_capture(world, monkeypatch)
    old = order.payment.authorization
    stored = world.order(order.id)
    legacy = [request.model_copy(update={"authorization": None}) for request in stored.captures_requested]
    world.orders.orders[order.id] = stored.model_copy(update={"captures_requested": legacy})
    clock.days_later(10)
    renewed = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh_east")
    assert renewed.payment.authorization != old and old not in world.spy.voided

    shipped = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh_west")

    west_key = payment_keys.capture(order.id, west)
    assert [authorization for authorization, key in captures.calls if key == west_key] == [old, old]
    share = shipped.shipment(west).captured
    assert share is not None
    assert shipped.earlier_captures == [EarlierCaptures(authorization=old, captured=share, shipments=[west])]


def test_a_cancellation_refund_refused_after_its_first_part_went_back_refunds_only_the_rest_when_settled_again(clock):
    # The caps (and all the shipping, 2.00 a unit) were captured on the first authorization, the
    # mug ten days later on the renewed one; an appeasement then took all but 1.00 of the first.
    # Cancelling the pen made shipping 4.00 cheaper: 1.00 of that went back on the first
    # authorization, then the gateway refused the 3.00 on the renewed one, so the cancellation
    # refund failed. Before: the cancel repeated counted nothing of it and refunded the whole 4.00
    # again, 1.00 more than the pen's cancel took off the order.
    world = build_world([*STOCK, ("PEN", "wh-north", 5)], PerUnitShipping(), clock=clock)
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=45.0, longitude=-93.0))
    order = world.allocated(("CAP", 3), ("MUG", 1), ("PEN", 2), shipping_method="per_unit")
    east, west = world.shipment_at(order, "wh-east"), world.shipment_at(order, "wh-west")
    assert order.shipments[0].id == east  # its capture carries all the shipping
    first = world.actions.ship(order.id, east, tracking_number=None, actor="key_wh")
    clock.days_later(10)
    second = world.actions.ship(order.id, west, tracking_number=None, actor="key_wh")
    assert second.payment.authorization != first.payment.authorization
    one = Money.of("1.00", "USD")
    world.refunds.issue_refund(order.id, first.payment.captured - one, "late", "appease-1", actor="key_cs")
    world.gateway.script("refund", "approve", "refuse", "approve")

    world.actions.cancel(order.id, "no pen", actor="key_web", lines={"L3": 2})
    failed = world.order(order.id)
    [cancellation] = [r for r in failed.payment.refunds if r.kind == "cancellation"]
    assert cancellation.status == "failed" and [p.status for p in cancellation.parts or []] == ["succeeded", "failed"]

    done = world.actions.cancel(order.id, "no pen", actor="key_web")

    given_back = done.payment.refunded - (first.payment.captured - one)
    assert given_back == Money.of("4.00", "USD")
    assert done.payment.captured - done.payment.refunded == done.totals.grand_total - (first.payment.captured - one)


def test_a_split_refund_refused_in_part_tells_what_went_back_and_what_did_not_once_each(world, clock):
    # The gateway gave back what the first authorization captured, then refused the rest. Before:
    # one `refund.failed` for the whole amount (no `refund.succeeded`, the customer never told of
    # the money that went back), and GET /orders/{id}/refunds listed only that failed refund, so
    # `payment.refunded` was not the sum of the refunds that succeeded.
    first, second = renewed_between_parcels(world, clock)
    under_old = first.payment.captured
    under_new = second.payment.captured - under_old
    world.gateway.script("refund", "approve", "refuse")
    refund_id = refund_id_for(second.id, "appease-1")
    pending, _ = second.begin_refund(refund_id, second.payment.captured, reason="goodwill", at=clock(), actor="key_cs")

    answered = world.refunds.issue_refund(second.id, second.payment.captured, "goodwill", "appease-1", actor="key_cs")

    after = world.order(second.id)
    assert (answered.id, answered.status, answered.amount) == (refund_id, "failed", under_new)
    listed = world.refunds.refunds(second.id)
    assert [(r.id, r.status, r.amount) for r in listed] == [
        (refund_id, "failed", under_new), (went_back_id(refund_id), "succeeded", under_old)
    ]  # fmt: skip
    assert sum((r.amount for r in listed if r.status == "succeeded"), Money.zero("USD")) == after.payment.refunded
    old_doc, new_doc = json.loads(pending.stored_json()), json.loads(after.stored_json())
    events = order_events(old_doc, new_doc)
    assert [(e.type.value, e.data["refund"]) for e in events] == [
        (f"refund.{r.status}", r.model_dump(mode="json")) for r in listed
    ]
    assert [e.id for e in order_events(old_doc, new_doc)] == [e.id for e in events]  # a redelivery
    assert order_events(new_doc, {**new_doc, "version": new_doc["version"] + 1}) == []
    (told,) = notifications(old_doc, new_doc)
    assert told.details == {"refund_id": went_back_id(refund_id), "amount": str(under_old.amount), "currency": "USD"}


def test_a_refused_split_give_back_of_an_exchanges_credit_logs_only_what_did_not_go_back(world, clock, caplog):
    # The mug and the caps (one parcel on each authorization) exchanged for a t-shirt, whose order
    # is cancelled before it ships: its whole credit is given back, split over the original's two
    # authorizations; the first part went back, the second was refused. The ERROR line the
    # person CreditsNotGivenBackAlarm calls reads names what is left to give back: the refused
    # part, not the whole credit, nor the part that went back.
    _, second = renewed_between_parcels(world, clock)
    returns = returns_of(world, clock)
    units = [("L1", 1), ("L2", 3)]
    asked = RequestReturn.model_validate({
        "lines": [{"line_id": line_id, "quantity": n, "reason": "size"} for line_id, n in units],
        "exchange": {"lines": [{"sku": "TSHIRT", "quantity": 1}]},
    })  # fmt: skip
    item = returns.request(second.id, asked, actor="key_cs")
    back = [{"line_id": line_id, "quantity": n, "condition": "resellable"} for line_id, n in units]
    returns.receive(item.id, ReceiveReturn.model_validate({"location_id": "wh-east", "lines": back}), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    world.gateway.script("refund", "approve", "refuse")
    caplog.set_level("ERROR")

    world.actions.cancel(replacement.id, "changed my mind", actor="key_cs")

    [refused] = [r for r in world.order(second.id).payment.refunds if r.status == "failed"]
    went, kept = refused.parts or []
    assert (went.status, kept.status, went.amount + kept.amount) == ("succeeded", "failed", refused.amount)
    assert went.amount.amount > 0
    logged = [r for r in caplog.records if r.levelname == "ERROR" and "did not use" in r.getMessage()]
    assert [(r.__dict__.get("order_id"), r.__dict__.get("refund_id"), r.__dict__.get("amount")) for r in logged] == [
        (second.id, refused.id, str(kept.amount.amount))
    ]
    assert f"{kept.amount.amount} USD not given back" in logged[0].getMessage()


def test_a_return_of_an_exchanges_replacement_whose_draw_on_the_credit_was_refused_in_part_draws_only_the_rest(
    world, clock
):
    # The caps were exchanged for a t-shirt, which came back too: what its own capture did not
    # cover was drawn on the caps' credit, a refund split over the original's two authorizations;
    # the first part went back, the second was refused. Before: the retry counted nothing of the
    # first part and drew the whole amount again, refunding the customer 13.41 twice.
    _, second = renewed_between_parcels(world, clock)
    returns = returns_of(world, clock)
    asked = RequestReturn.model_validate({
        "lines": [{"line_id": "L2", "quantity": 3, "reason": "size"}],
        "exchange": {"lines": [{"sku": "TSHIRT", "quantity": 1}]},
    })  # fmt: skip
    item = returns.request(second.id, asked, actor="key_cs")
    received = {"location_id": "wh-east", "lines": [{"line_id": "L2", "quantity": 3, "condition": "resellable"}]}
    returns.receive(item.id, ReceiveReturn.model_validate(received), "key_wh")
    replacement_id = run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or ""
    for shipment in world.run(replacement_id).shipments:
        world.actions.ship(replacement_id, shipment.id, tracking_number=None, actor="key_wh")
    replacement = world.order(replacement_id)
    tshirt = replacement.lines[0].total
    back = returns.request(replacement_id, RequestReturn.model_validate(
        {"lines": [{"line_id": "L1", "quantity": 1, "reason": "changed my mind"}]}
    ), actor="key_cs")  # fmt: skip
    received = {"location_id": "wh-east", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    returns.receive(back.id, ReceiveReturn.model_validate(received), "key_wh")
    # The replacement's own capture goes back, then the draw's first part; its second is refused.
    world.gateway.script("refund", "approve", "approve", "refuse")
    assert run_return_workflow(returns, back.id, actor="key_wh").status.value == "received"
    [refused] = [r for r in world.order(second.id).payment.refunds if r.status == "failed"]
    assert [p.status for p in refused.parts or []] == ["succeeded", "failed"]

    world.gateway.script("refund", "approve")
    done = run_return_workflow(returns, back.id, actor="key_wh")

    moved = sum((amount for _, amount, _ in world.spy.refunded), Money.zero("USD"))
    assert moved == tshirt  # the replacement's capture and the credit's share, once
    assert (done.status.value, done.refund) == ("refunded", tshirt)
    assert world.order(second.id).payment.refunded + world.order(replacement_id).payment.refunded == tshirt


def test_a_page_after_a_pending_refund_that_is_then_refused_in_part_shows_what_went_back_and_nothing_twice(
    world, clock
):
    # A split appeasement left pending by an outage, two refunds after it; a client read the first
    # page (the pending one and the next) before the reconciler finished it, refused in part.
    # Before: the next page started two places on in a list grown by what went back, so it showed
    # the second refund again and never what went back.
    _, second = renewed_between_parcels(world, clock)
    spans_both = second.payment.captured - Money.of("2.00", "USD")
    world.gateway.script("refund", "transient")
    with pytest.raises(PaymentGatewayUnavailable):
        world.refunds.issue_refund(second.id, spans_both, "goodwill", "appease-1", actor="key_cs")
    world.gateway.script("refund", "approve")
    world.refunds.issue_refund(second.id, Money.of("1.00", "USD"), "late", "appease-2", actor="key_cs")
    world.refunds.issue_refund(second.id, Money.of("0.50", "USD"), "later", "appease-3", actor="key_cs")
    pending, b, c = (refund_id_for(second.id, f"appease-{n}") for n in (1, 2, 3))
    read, cursor = world.refunds.page(second.id, None, 2, None)
    assert [(r.id, r.status) for r in read] == [(pending, "pending"), (b, "succeeded")]

    world.gateway.script("refund", "approve", "refuse")
    world.refunds.finish_pending(second.id, "reconciler")

    rest, more = world.refunds.page(second.id, None, 2, cursor)
    assert [(r.id, r.status) for r in rest] == [(went_back_id(pending), "succeeded"), (c, "succeeded")]
    assert more is None
    assert sorted(r.id for r in read + rest) == sorted(r.id for r in world.refunds.refunds(second.id))


def test_a_replacement_whose_settlement_refund_went_back_in_part_before_a_refusal_gives_back_none_of_its_credit(
    clock,
):
    # A t-shirt exchanged for three caps, a mug and two pens, dearer than its credit: the caps'
    # parcel captured all the shipping (2.00 a unit) on the first authorization, the mug ten days
    # later on the renewed one; an appeasement took all but 1.00 of the first. Cancelling the pens
    # made shipping 4.00 cheaper: 1.00 went back on the first authorization, the renewed one refused
    # 3.00, refunded when the cancel was repeated. Before: the credit counted the 1.00 that went
    # back as still paid by the replacement, and gave 1.00 of itself back on the original too.
    world = build_world([*STOCK, ("PEN", "wh-north", 5)], PerUnitShipping(), clock=clock)
    world.catalog.put_location(location("wh-north", name="North warehouse", latitude=45.0, longitude=-93.0))
    returns = returns_of(world, clock)
    order = world.allocated(("TSHIRT", 1), shipping_method="per_unit")
    world.actions.ship(order.id, order.shipments[0].id, tracking_number=None, actor="key_wh")
    asked = RequestReturn.model_validate({
        "lines": [{"line_id": "L1", "quantity": 1, "reason": "size"}],
        "exchange": {"lines": [{"sku": sku, "quantity": units} for sku, units in (("CAP", 3), ("MUG", 1), ("PEN", 2))]},
    })  # fmt: skip
    item = returns.request(order.id, asked, actor="key_cs")
    received = {"location_id": "wh-east", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
    returns.receive(item.id, ReceiveReturn.model_validate(received), "key_wh")
    replacement = world.run(run_return_workflow(returns, item.id, actor="key_wh").exchange_order_id or "")
    east, west = world.shipment_at(replacement, "wh-east"), world.shipment_at(replacement, "wh-west")
    assert replacement.shipments[0].id == east  # its capture carries all the shipping
    first = world.actions.ship(replacement.id, east, tracking_number=None, actor="key_wh")
    clock.days_later(10)
    second = world.actions.ship(replacement.id, west, tracking_number=None, actor="key_wh")
    assert second.payment.authorization != first.payment.authorization
    one = Money.of("1.00", "USD")
    world.refunds.issue_refund(replacement.id, first.payment.captured - one, "late", "appease-1", actor="key_cs")
    world.gateway.script("refund", "approve", "refuse", "approve")

    world.actions.cancel(replacement.id, "no pens", actor="key_web", lines={"L3": 2})
    done = world.actions.cancel(replacement.id, "no pens", actor="key_web")

    cancellations = [r for r in done.payment.refunds if r.kind == "cancellation"]
    assert [(r.status, [p.status for p in r.parts or []]) for r in cancellations] == [
        ("failed", ["succeeded", "failed"]), ("succeeded", [])
    ]  # fmt: skip
    assert done.exchange_credit is not None and done.totals.grand_total > done.exchange_credit
    assert world.order(order.id).payment.refunds == []  # the caps and the mug use all the credit
    appeased = first.payment.captured - one
    assert done.payment.captured - done.payment.refunded == done.totals.grand_total - done.exchange_credit - appeased


@pytest.mark.parametrize(("reason_code", "shipping_back"), [("damaged", True), ("size_or_fit", False)])
def test_a_return_of_all_that_shipped_then_a_cancel_of_the_rest_gives_the_shipping_back_when_the_policy_does(
    world, clock, reason_code, shipping_back
):
    # The mug's parcel comes back (the built-in policy gives the shipping back with a whole order
    # returned damaged), then the caps, which never shipped, are cancelled: no receipt brought the
    # order's last unit back, so the cancel refunds the shipping for that return, once.
    order = world.allocated(("MUG", 1), ("CAP", 3))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), tracking_number=None, actor="key_wh_west")
    returns = returns_of(world, clock)
    line = {"line_id": "L1", "quantity": 1, "reason": "arrived like this", "reason_code": reason_code}
    item = returns.request(order.id, RequestReturn.model_validate({"lines": [line]}), actor="key_cs")
    receipt = {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "damaged"}]}
    returns.receive(item.id, ReceiveReturn.model_validate(receipt), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")

    world.actions.cancel(order.id, "the rest is not needed", actor="key_web")

    after = world.order(order.id)
    shipping = after.totals.shipping
    assert after.status is OrderStatus.RETURNED
    assert [(r.amount, r.status, r.return_id) for r in after.payment.refunds] == [
        (after.lines[0].total, "succeeded", item.id),
        *([(shipping, "succeeded", item.id)] if shipping_back else []),
    ]
    assert after.payment.refunded == (after.payment.captured if shipping_back else after.payment.captured - shipping)
    assert not owes_kept_back(after)  # nothing more is owed: a sweep asks nothing again


def test_a_split_refund_whose_first_part_is_refused_asks_no_later_part_and_gives_nothing_back(world, clock):
    # The refund fails with its first part: asked, a later part the gateway approved would give
    # back money under a refund recorded failed, which its client, told so, makes again.
    first, second = renewed_between_parcels(world, clock)
    world.gateway.script("refund", "refuse", "approve")

    refund = world.refunds.issue_refund(second.id, second.payment.captured, "goodwill", "appease-1", actor="key_cs")

    refund_id = refund_id_for(second.id, "appease-1")
    assert refund.status == "failed"
    assert world.gateway.keys("refund") == [payment_keys.refund_part(second.id, refund_id, first.payment.authorization)]
    after = world.order(second.id)
    [stored] = after.payment.refunds
    assert [p.status for p in stored.parts or []] == ["failed", "failed"]
    assert after.payment.refunded == Money.zero("USD") and world.spy.refunded == []


def test_a_returns_split_refund_the_reconciler_hears_refused_after_its_first_part_went_back_is_owed_showing(
    world, clock
):
    # The gateway went down on the caps' part after giving back the mug's; the reconciler's pass asks
    # the refund again and hears the caps' part refused. The mug's money did go back for the return:
    # recorded with the refusal as owed showing on it, for the kept-back pass to show it, however the
    # pass ends (it shows no return itself). Left out, the return showed nothing of it.
    _, second = renewed_between_parcels(world, clock)
    mug, _ = second.lines
    world.gateway.script("refund", "approve", "transient", "transient", "transient", "approve", "refuse")
    returns = returns_of(world, clock)
    lines = (("L1", 1), ("L2", 3))
    asked = RequestReturn.model_validate(
        {"lines": [{"line_id": line_id, "quantity": units, "reason": "changed my mind"} for line_id, units in lines]}
    )
    item = returns.request(second.id, asked, actor="key_cs")
    back = [{"line_id": line_id, "quantity": units, "condition": "resellable"} for line_id, units in lines]
    returns.receive(item.id, ReceiveReturn.model_validate({"location_id": "wh-west", "lines": back}), "key_wh")
    run_return_workflow(returns, item.id, actor="key_wh")
    assert [r.status for r in world.order(second.id).payment.refunds] == ["pending"]

    (answered,) = world.refunds.finish_pending(second.id, "reconciler", unshown=True)

    after = world.order(second.id)
    assert answered.status == "failed" and after.payment.refunded == mug.total
    assert after.returns_to_show == [item.id]


def mug_and_caps_received(world: World, clock: Clock, order_id: str) -> tuple[Returns, Return]:
    """The order's mug (L1, 1) and three caps (L2, 3) returned for a change of mind and received
    resellable at wh-west: the returns service and the return."""
    returns = returns_of(world, clock)
    lines = (("L1", 1), ("L2", 3))
    asked = [{"line_id": line_id, "quantity": units, "reason": "changed my mind"} for line_id, units in lines]
    item = returns.request(order_id, RequestReturn.model_validate({"lines": asked}), actor="key_cs")
    back = [{"line_id": line_id, "quantity": units, "condition": "resellable"} for line_id, units in lines]
    returns.receive(item.id, ReceiveReturn.model_validate({"location_id": "wh-west", "lines": back}), "key_wh")
    return returns, item


@pytest.mark.parametrize("left", ["0.00", "2.00"], ids=["goodwill-took-it-all", "goodwill-left-2.00"])
def test_a_split_return_refund_refused_in_part_then_capped_by_a_goodwill_keeps_back_only_what_did_not_go_back(
    world, clock, left
):
    # The mug's part of the return's refund went back on the first authorization before the renewed
    # one refused the caps' part; a goodwill then left `left` refundable, so the return's next
    # attempt gives that and keeps the rest of the caps back for the pens' capture. Keeping the
    # mug back too, the pens' capture refunded the mug a second time.
    world.catalog.put_location(location("wh-north", name="North warehouse"))
    world.inventory.set_on_hand("PEN", "wh-north", 10, reason="count")
    order = world.allocated(("MUG", 1), ("CAP", 3), ("PEN", 10))
    world.actions.ship(order.id, world.shipment_at(order, "wh-west"), None, actor="key_wh_west")
    clock.days_later(10)
    world.actions.ship(order.id, world.shipment_at(order, "wh-east"), None, actor="key_wh_east")
    mug, caps, _ = order.lines
    world.gateway.script("refund", "approve", "refuse")
    returns, item = mug_and_caps_received(world, clock, order.id)
    assert run_return_workflow(returns, item.id, actor="key_wh").status.value == "received"
    paid = world.order(order.id).payment
    assert paid.refunded == mug.total
    goodwill = paid.captured - paid.refunded - Money.of(left, "USD")
    world.gateway.script("refund", "approve")
    assert world.refunds.issue_refund(order.id, goodwill, "goodwill", "appease-1", actor="key_cs").status == "succeeded"

    assert run_return_workflow(returns, item.id, actor="key_wh").status.value == "refunded"
    pens = world.shipment_at(order, "wh-north")
    world.actions.ship(order.id, pens, None, actor="key_wh")
    after = world.actions.deliver(order.id, pens, actor="key_wh")

    paid = after.payment
    assert paid.captured == order.totals.grand_total
    assert paid.captured - paid.refunded == order.totals.grand_total - mug.total - caps.total - goodwill
    assert returns.get(item.id).refund == mug.total + caps.total


def test_a_return_whose_split_refund_went_back_whole_and_whose_step_died_before_marking_it_shows_it_once(
    world, clock, monkeypatch
):
    # The mug's and the caps' parts both went back; the step died before it marked the return
    # refunded. Its retry finds the refund made and marks the return with it, once: counting the
    # parts of a refund that succeeded as what a refused attempt gave back showed it twice.
    _, second = renewed_between_parcels(world, clock)
    mug, caps = second.lines
    returns, item = mug_and_caps_received(world, clock, second.id)
    real = world.returns.update

    def dies_marking_it_refunded(new, expected, *args, **kwargs):
        if new.status.value == "refunded":
            monkeypatch.setattr(world.returns, "update", real)
            raise Died("return refunded")
        real(new, expected, *args, **kwargs)

    monkeypatch.setattr(world.returns, "update", dies_marking_it_refunded)
    with pytest.raises(Died):
        run_return_workflow(returns, item.id, actor="key_wh")

    done = run_return_workflow(returns, item.id, actor="key_wh")

    [refund] = world.order(second.id).payment.refunds
    assert [p.status for p in refund.parts or []] == ["succeeded", "succeeded"]
    assert (done.status.value, done.refund) == ("refunded", mug.total + caps.total)

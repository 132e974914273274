"""Holds for review: review rules at capture, a person's hold and release, and a held order that
does nothing until it is released, then carries on exactly where it stopped."""

import functools
from datetime import timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import hookimpl
from core.errors import Backordered, Conflict, InvalidTransition, NotFound, OrderHeld, PluginError, StaleVersion
from core.holds import HoldRequest, Holds, ReleaseRequest, give_back_surplus
from core.models import (
    MAX_REVIEW_REQUESTS,
    RELEASE_RETRY_WINDOW,
    LineInput,
    Order,
    OrderEdit,
    ReplacedLine,
    ReviewRequest,
)
from core.money import Money
from core.status import OrderStatus, ShipmentStatus
from plugins import review_threshold
from tests.builders import NOW, address_body, product
from tests.unit.world import World, before_the_next_write, build_world

S = OrderStatus
STOCK = [("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 10), ("MUG", "wh-east", 10)]
STEPS = ["authorize_payment", "reserve_stock", "create_shipments"]


def holds(world: World) -> Holds:
    return Holds(world.orders, clock=lambda: NOW, inventory=world.inventory, catalog=world.catalog)


def hold(world: World, order_id: str, reason: str = "fraud_review", note: str | None = "check the address") -> Order:
    return holds(world).hold(order_id, HoldRequest(reason=reason, note=note), actor="key_ops")


def release(world: World, order_id: str, note: str | None = "looks fine") -> Order:
    return holds(world).release(order_id, ReleaseRequest(note=note), actor="key_ops")


def backordered_books(on_hand: int, ordered: int) -> tuple[World, str]:
    """A world with `on_hand` books (which allow backorder) at wh-west, and an order of `ordered`
    of them that took those and waits `backordered` for the rest."""
    world = build_world([("BOOK", "wh-west", on_hand)])
    world.catalog.put_product(product("BOOK", "12.00", allow_backorder=True))
    order_id = world.place(("BOOK", ordered))
    world.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(order_id)
    return world, order_id


def run_step(world: World, step: str, order_id: str) -> None:
    if step == "authorize_payment":
        world.workflow.authorize_payment(order_id, attempt=0)
    else:
        getattr(world.workflow, step)(order_id)


def run_from(world: World, order_id: str, first: int = 0) -> None:
    for step in STEPS[first:]:
        run_step(world, step, order_id)


# --- OMS_REVIEW_THRESHOLD ------------------------------------------------------------------------


def test_thresholds_are_parsed_per_currency_as_written():
    assert review_threshold.parse_thresholds("USD:1000.00, EUR:900, JPY:150000") == {
        "USD": Decimal("1000.00"),
        "EUR": Decimal("900"),
        "JPY": Decimal("150000"),
    }
    assert review_threshold.parse_thresholds("") == {}
    assert review_threshold.parse_thresholds(" , ") == {}


@pytest.mark.parametrize(
    "text",
    ["USD", "USD:", ":100", "USD:abc", "XXX:10", "XYZ:5", "USD:10,USD:20", "USD:0", "USD:0.00", "USD:-5", "USD:1e3"],
)
def test_a_malformed_threshold_is_refused_with_the_variable_named(text):
    with pytest.raises(ValueError, match="OMS_REVIEW_THRESHOLD"):
        review_threshold.parse_thresholds(text)


@functools.cache
def _pattern() -> str:
    from infra.local.template import load_template

    return load_template()["Parameters"]["ReviewThreshold"]["AllowedPattern"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "USD:1000.00",
        "USD:1000.123",
        "JPY:10.5",
        "USD:0.5",
        "USD:05",
        "KWD:1.2345",
        "USD:" + "9" * 40,
        "EUR:1,USD:9",
    ],
)
def test_every_threshold_a_deploy_takes_loads_the_plugin(text):
    # The pattern took USD:1000.123 and JPY:10.5 (more decimals than the currency has), and a
    # threshold of 16 digits or more, but the plugin refused them at load: a deploy succeeded and
    # /health then named the plugin unloaded, every order unreviewed. They are kept as written.
    from infra.local.template import parameter_refused

    assert parameter_refused({"Type": "String", "AllowedPattern": _pattern()}, text) is None
    assert review_threshold.parse_thresholds(text) == {
        part.split(":")[0]: Decimal(part.split(":")[1]) for part in text.split(",") if part
    }


@pytest.mark.parametrize("text", ["USD:0", "USD:0.00", "XYZ:5", "USD:10,USD:20", "USD:1,EUR:2,USD:3", "usd:5"])
def test_a_threshold_without_a_clear_meaning_is_refused_at_deploy_as_by_the_plugin(text):
    # USD:0 (every order, or never?), XYZ:5 (a typo: reviews nothing) and a currency named twice
    # (which one?) passed the pattern, so the deploy succeeded with the plugin refusing them.
    from infra.local.template import parameter_refused

    assert parameter_refused({"Type": "String", "AllowedPattern": _pattern()}, text) is not None
    with pytest.raises(ValueError, match="OMS_REVIEW_THRESHOLD"):
        review_threshold.parse_thresholds(text)


@pytest.mark.parametrize("text", [",USD:5", "USD:5,", "USD:5,,EUR:1", "USD:.5", "USD:5.", " USD:5"])
def test_the_pattern_refuses_what_is_not_written_as_pairs(text):
    from infra.local.template import parameter_refused

    assert parameter_refused({"Type": "String", "AllowedPattern": _pattern()}, text) is not None


_PAIRS = st.tuples(
    st.sampled_from(["USD", "JPY", "KWD", "EUR", "XYZ", "usd"]),
    st.from_regex(r"\A[0-9]{1,20}(\.[0-9]{1,8})?\Z"),
).map(":".join)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.lists(_PAIRS, max_size=4).map(",".join))
def test_the_plugin_takes_whatever_the_pattern_takes(text):
    # make run refuses what the pattern refuses (parameter_refused); what it takes, a deploy takes,
    # and the plugin must load with it, each amount exactly as written.
    import re

    if re.fullmatch(_pattern(), text, re.ASCII):
        thresholds = review_threshold.parse_thresholds(text)
        pairs = (part.split(":") for part in text.split(",") if part)
        assert thresholds == {currency: Decimal(amount) for currency, amount in pairs}


def test_the_patterns_currencies_are_the_ones_the_oms_prices_in():
    import itertools
    import re
    import string

    from core.money import MINOR_UNITS

    pattern = re.compile(_pattern(), re.ASCII)
    codes = ("".join(letters) for letters in itertools.product(string.ascii_uppercase, repeat=3))
    assert {code for code in codes if pattern.fullmatch(f"{code}:1")} == set(MINOR_UNITS)


def test_the_rule_asks_for_review_at_or_above_the_threshold_of_the_orders_currency(world):
    order = world.order(world.place(("TSHIRT", 1)))  # 19.99 + shipping and tax
    total = order.totals.grand_total.amount
    at = review_threshold.review(order, {"USD": total})
    assert at == [ReviewRequest(reason="fraud_review", note=at[0].note)]
    assert str(total) in at[0].note
    assert review_threshold.review(order, {"USD": total - Decimal("0.001")}) != []
    assert review_threshold.review(order, {"USD": total + Decimal("0.001")}) == []  # not rounded down to the total
    assert review_threshold.review(order, {"USD": total + Decimal("0.01")}) == []
    assert review_threshold.review(order, {"EUR": Decimal("1.00")}) == []
    assert review_threshold.review(order, {}) == []


def test_a_threshold_of_any_decimals_a_deploy_takes_holds_with_a_note_naming_it_as_a_total_reaches_it(world):
    # The pattern and the plugin take any decimals (USD:1000.123 holds 1000.13): the note named the
    # threshold as written, and one of 490 decimals made a note past ReviewRequest's 500
    # characters, so every order reaching it failed its review rule (its capture failed) instead
    # of being held. The note names the smallest amount of the currency that reaches it.
    order = world.order(world.place(("TSHIRT", 1)))
    total = order.totals.grand_total.amount
    text = f"USD:{total - 1}{'0' * 490}1"  # a hair above total - 1: a total of total - 0.99 reaches it
    assert review_threshold.parse_thresholds(text) == {"USD": Decimal(text[4:])}
    (held,) = review_threshold.review(order, review_threshold.parse_thresholds(text))
    assert held.note == f"grand total {total} USD is at or above the review threshold {total - 1 + Decimal('0.01')} USD"
    yen = Money(amount="11", currency="JPY")
    in_yen = order.model_copy(
        update={"currency": "JPY", "totals": order.totals.model_copy(update={"grand_total": yen})}
    )
    # Named as the note names the total, the amount then its currency: "threshold 11" said not which money.
    assert review_threshold.review(in_yen, {"JPY": Decimal("10.5")})[0].note.endswith("review threshold 11 JPY")


def test_the_built_in_rule_reads_oms_review_threshold_and_holds_a_high_value_order_at_capture(world, monkeypatch):
    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:100.00,EUR:1.00")

    small = world.order(world.place(("TSHIRT", 1)))
    big = world.order(world.place(("TSHIRT", 6)))

    assert small.status is S.PENDING and small.hold is None
    assert big.status is S.ON_HOLD
    assert (big.hold.reason, big.hold.since, big.hold.resume_to) == ("fraud_review", NOW, S.PENDING)
    assert "review threshold 100.00" in big.hold.note


# --- Review rules at capture --------------------------------------------------------------------


class AddressReview:
    @hookimpl
    def oms_review_order(self, order: Order) -> list[ReviewRequest]:
        if order.shipping_address.city != "San Francisco":
            return []
        return [ReviewRequest(reason="address_review", note="new address"), ReviewRequest(reason="other")]


def test_a_review_rule_stores_the_new_order_on_hold_in_the_same_write_before_any_authorization():
    world = build_world(STOCK, AddressReview())

    order_id = world.place(("TSHIRT", 1))

    order = world.order(order_id)
    assert (order.status, order.version, order.payment.status) == (S.ON_HOLD, 2, "pending")
    assert (order.hold.reason, order.hold.note, order.hold.resume_to) == ("address_review", "new address", S.PENDING)
    created, held = world.history(order_id)
    assert (created.type, created.to_status) == ("created", S.PENDING)
    assert (held.type, held.from_status, held.to_status, held.actor) == (
        "on_hold",
        S.PENDING,
        S.ON_HOLD,
        "review_rules",
    )
    assert held.detail == {
        "reason": "address_review",
        "note": "new address",
        "requests": [{"reason": "address_review", "note": "new address"}, {"reason": "other"}],
    }
    # Its workflow, started from the new item, ends at the hold without calling the gateway.
    with pytest.raises(OrderHeld):
        world.workflow.authorize_payment(order_id, attempt=0)
    assert world.gateway.calls == [] and world.spy.authorized == []


class EscapingReview:
    """A rule whose note quotes what its fraud service said, terminal escapes and bidi overrides included."""

    NOTE = "score 97\x1b[2J\r\u202egnp.exe\x00\nsee\tcase 12\r\n"

    @hookimpl
    def oms_review_order(self, order: Order) -> list[ReviewRequest]:
        # Built without validation, as a plugin may: the host's check of the answer is what counts.
        return [ReviewRequest.model_construct(reason="fraud_review", note=self.NOTE)]


def test_a_review_rules_note_is_held_with_controls_and_bidi_overrides_made_visible():
    # A person's hold note refuses these (core.models.Note); a rule's note was stored as given and
    # reached the order's hold, its history and its events. Refusing it would fail the capture of
    # the very order the rule asked a person to review, so the host replaces each with U+FFFD and
    # keeps tabs and line breaks, as a person's note does.
    world = build_world(STOCK, EscapingReview())

    order = world.order(world.place(("TSHIRT", 1)))

    safe = "score 97\ufffd[2J\ufffd\ufffdgnp.exe\ufffd\nsee\tcase 12\r\n"
    assert (order.status, order.hold.reason, order.hold.note) == (S.ON_HOLD, "fraud_review", safe)
    held = world.history(order.id)[1]
    assert held.detail == {
        "reason": "fraud_review",
        "note": safe,
        "requests": [{"reason": "fraud_review", "note": safe}],
    }


class InsistentReview:
    """A rule that asks 2,000 times, each with a note of 500 characters."""

    @hookimpl
    def oms_review_order(self, order: Order) -> list[ReviewRequest]:
        return [ReviewRequest(reason="fraud_review", note=f"{i:>500}") for i in range(2_000)]


def test_a_rule_asking_for_review_many_times_holds_the_order_with_the_first_requests_kept():
    # Every request went into the hold's history entry, in the order's one DynamoDB item: past its
    # 400 KB every capture failed with a 500 and no order was placed.
    world = build_world(STOCK, InsistentReview())

    order = world.order(world.place(("TSHIRT", 1)))

    assert (order.status, order.hold.reason, order.hold.note) == (S.ON_HOLD, "fraud_review", f"{0:>500}")
    held = world.history(order.id)[1]
    kept = [{"reason": "fraud_review", "note": f"{i:>500}"} for i in range(MAX_REVIEW_REQUESTS)]
    assert (held.detail["requests"], held.detail["requests_not_kept"]) == (kept, 2_000 - MAX_REVIEW_REQUESTS)


def test_an_allocated_order_edited_past_the_review_threshold_is_held_in_the_same_write(world, monkeypatch):
    # A $30 order, allocated, then edited to six T-shirts: without a review it was sourced again
    # and shipped, past OMS_REVIEW_THRESHOLD, never seen by a person.
    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:100.00")
    order = world.allocated(("TSHIRT", 1))
    six = OrderEdit(lines=[{"sku": "TSHIRT", "quantity": 6}])

    edited = world.actions.edit(order.id, order.version, six, actor="key_web")

    # Four versions: the request for the new total's authorization, the edit held, the withdrawn
    # parcel's booking cancelled with the carrier, the old authorization's void.
    assert (edited.status, edited.version, edited.allocations, edited.shipments) == (
        S.ON_HOLD, order.version + 4, [], [],
    )  # fmt: skip
    assert (edited.hold.reason, edited.hold.resume_to) == ("fraud_review", S.AUTHORIZED)
    assert edited.payment.authorized == edited.totals.grand_total  # authorized for it, nothing captured
    assert world.order(order.id) == edited
    # The withdrawn parcel's booking is cancelled, then the old authorization voided, after the write.
    edit_entry, on_hold, booking = world.history(order.id)[-4:-1]
    assert booking.type == "carrier_booking_cancelled"
    assert (edit_entry.type, edit_entry.from_status, edit_entry.to_status) == ("edited", S.ALLOCATED, S.AUTHORIZED)
    assert (on_hold.type, on_hold.from_status, on_hold.to_status, on_hold.actor) == (
        "on_hold", S.AUTHORIZED, S.ON_HOLD, "review_rules",
    )  # fmt: skip
    assert "review threshold 100.00" in on_hold.detail["note"]
    with pytest.raises(OrderHeld):
        world.workflow.reserve_stock(order.id)

    assert release(world, order.id).status is S.AUTHORIZED
    run_from(world, order.id)
    assert world.order(order.id).status is S.ALLOCATED
    assert world.held_for(order.id) == {("TSHIRT", "wh-west", f"{order.id}#L2"): 6}


class BrokenReview:
    @hookimpl
    def oms_review_order(self, order: Order) -> list[ReviewRequest]:
        if order.totals.grand_total.amount > 100:
            raise RuntimeError("the fraud service is down")
        return []


def test_a_review_rule_that_fails_on_an_edit_leaves_no_new_authorization_behind():
    world = build_world(STOCK, BrokenReview())
    order = world.allocated(("TSHIRT", 1))

    with pytest.raises(PluginError):
        world.actions.edit(order.id, order.version, OrderEdit(lines=[{"sku": "TSHIRT", "quantity": 6}]), "key_web")

    assert world.order(order.id) == order
    assert len(world.spy.authorized) == 1 and world.spy.voided == []


def test_a_pending_order_edited_past_the_threshold_is_held_before_its_authorization(world, monkeypatch):
    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:100.00")
    order = world.order(world.place(("TSHIRT", 1)))

    edited = world.actions.edit(order.id, order.version, OrderEdit(lines=[{"sku": "TSHIRT", "quantity": 6}]), "k")

    assert (edited.status, edited.hold.resume_to, edited.payment.status) == (S.ON_HOLD, S.PENDING, "pending")
    with pytest.raises(OrderHeld):
        world.workflow.authorize_payment(order.id, attempt=0)
    assert world.spy.authorized == []


def test_an_edit_asks_again_only_for_a_review_the_order_did_not_need_as_it_was(world, monkeypatch):
    # Held at capture and released by a person: a new street at the same total is not a new review,
    # a bigger total is (the rule's note names the total it judged).
    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:100.00")
    order = world.order(world.place(("TSHIRT", 6)))
    assert order.status is S.ON_HOLD
    released = release(world, order.id)
    next_door = address_body(line1="3 Market St")

    moved = world.actions.edit(order.id, released.version, OrderEdit(shipping_address=next_door), actor="key_web")
    assert (moved.status, moved.hold, moved.totals) == (S.PENDING, None, released.totals)

    more = world.actions.edit(order.id, moved.version, OrderEdit(lines=[{"sku": "TSHIRT", "quantity": 7}]), "k")
    assert (more.status, more.hold.reason) == (S.ON_HOLD, "fraud_review")


def test_an_edit_that_lowers_a_reviewed_total_still_past_the_threshold_asks_no_review_again(world, monkeypatch):
    # A reviewer released the order at seven T-shirts; the customer drops one. The rule's note names
    # the total it judged, so the smaller total read as a review not asked before: the order went
    # back on hold for a person to approve less money than they had approved already.
    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:100.00")
    order = world.order(world.place(("TSHIRT", 7)))
    assert order.status is S.ON_HOLD
    released = release(world, order.id)
    run_from(world, order.id)
    allocated = world.order(order.id)
    assert allocated.status is S.ALLOCATED

    six = world.actions.edit(order.id, allocated.version, OrderEdit(lines=[{"sku": "TSHIRT", "quantity": 6}]), "k")

    assert six.totals.grand_total.amount >= Decimal("100.00")
    assert six.totals.grand_total.amount < released.totals.grand_total.amount
    assert (six.status, six.hold) == (S.AUTHORIZED, None)
    assert [entry.type for entry in world.history(order.id)[-2:]] != ["edited", "on_hold"]
    # A person's hold on it meanwhile (the address) gains no fraud review from a smaller edit either.
    run_from(world, order.id)
    held = hold(world, order.id, reason="address_review")
    five = world.actions.edit(order.id, held.version, OrderEdit(lines=[{"sku": "TSHIRT", "quantity": 5}]), "k")
    assert five.totals.grand_total.amount >= Decimal("100.00")
    assert (five.status, five.hold.reason) == (S.ON_HOLD, "address_review")


def test_a_rule_that_asks_nothing_leaves_the_order_pending():
    world = build_world(STOCK, AddressReview())
    order = world.order(world.place(("TSHIRT", 1), shipping_address=address_body(city="Oakland")))
    assert (order.status, order.hold, order.version) == (S.PENDING, None, 1)


# --- A person's hold and release -----------------------------------------------------------------


@pytest.mark.parametrize("done", [0, 1, 2, 3])
def test_hold_and_release_at_every_step_resume_exactly_where_the_order_stopped(world, done):
    order_id = world.place(("MUG", 2))
    for step in STEPS[:done]:
        run_step(world, step, order_id)
    before = world.order(order_id)

    held = hold(world, order_id)

    assert (held.status, held.hold.resume_to) == (S.ON_HOLD, before.status)
    frozen = world.snapshot(order_id)
    for step in STEPS:  # whichever step an execution reaches, a held order does nothing
        with pytest.raises(OrderHeld):
            run_step(world, step, order_id)
    assert world.snapshot(order_id) == frozen

    released = release(world, order_id)
    assert (released.status, released.hold) == (before.status, None)
    run_from(world, order_id)  # the release starts the whole workflow again: done steps skip

    order = world.order(order_id)
    assert order.status is S.ALLOCATED
    assert len(set(world.spy.authorized)) == 1 and world.spy.voided == []
    assert sum(world.held_for(order_id).values()) == 2
    assert len(order.shipments) == 1


def test_hold_and_release_are_in_the_history_with_actor_reason_and_note(world):
    order_id = world.place(("MUG", 1))
    hold(world, order_id, reason="customer_request", note="customer called")
    release(world, order_id, note="address confirmed")

    held, released = world.history(order_id)[-2:]
    assert (held.type, held.actor, held.from_status, held.to_status) == ("on_hold", "key_ops", S.PENDING, S.ON_HOLD)
    assert held.detail == {"reason": "customer_request", "note": "customer called"}
    assert (released.type, released.actor, released.from_status, released.to_status) == (
        "released", "key_ops", S.ON_HOLD, S.PENDING,
    )  # fmt: skip
    assert released.detail == {"reason": "customer_request", "note": "address confirmed"}


def test_the_order_shows_the_hold_and_the_release_clears_it(world):
    order_id = world.place(("MUG", 1))
    held = hold(world, order_id, note=None)
    shown = held.model_dump(mode="json")["hold"]
    assert set(shown) == {"reason", "note", "since"}
    assert (shown["reason"], shown["note"], held.hold.since) == ("fraud_review", None, NOW)
    assert release(world, order_id, note=None).model_dump(mode="json")["hold"] is None


def test_an_order_on_hold_shipped_or_closed_cannot_be_held_and_only_a_held_one_released(world):
    order_id = world.place(("MUG", 1))
    with pytest.raises(InvalidTransition):
        release(world, order_id)
    hold(world, order_id)
    with pytest.raises(InvalidTransition):
        hold(world, order_id)

    shipped = world.allocated(("MUG", 1))
    world.actions.ship(shipped.id, shipped.shipments[0].id, None, actor="key_wh")
    with pytest.raises(InvalidTransition):
        hold(world, shipped.id)

    cancelled = world.place(("MUG", 1))
    world.actions.cancel(cancelled, "changed mind", actor="key_web")
    with pytest.raises(InvalidTransition):
        hold(world, cancelled)


def test_another_channels_order_is_not_found(world):
    order_id = world.place(("MUG", 1))
    with pytest.raises(NotFound):
        holds(world).hold(order_id, HoldRequest(reason="other"), actor="key_pos", channel="pos")


def test_a_held_allocated_order_cannot_ship_until_it_is_released_to_allocated(world):
    order = world.allocated(("MUG", 1))
    shipment_id = order.shipments[0].id
    hold(world, order.id)

    with pytest.raises(InvalidTransition):
        world.actions.ship(order.id, shipment_id, None, actor="key_wh")
    assert world.spy.captured == []

    assert release(world, order.id).status is S.ALLOCATED
    shipped = world.actions.ship(order.id, shipment_id, None, actor="key_wh")
    assert shipped.status is S.SHIPPED and len(world.spy.captured) == 1


def test_a_held_order_cancelled_releases_its_stock_and_voids_its_authorization(world):
    order_id = world.place(("MUG", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    hold(world, order_id)

    cancelled = world.actions.cancel(order_id, "fraud confirmed", actor="key_ops")

    assert (cancelled.status, cancelled.hold, cancelled.payment.status) == (S.CANCELLED, None, "voided")
    assert world.held_for(order_id) == {}


def test_a_hold_that_lands_while_stock_runs_out_is_not_cancelled_by_the_workflow(world):
    # ReserveStock found too little and raised OutOfStock; before CancelOrder ran, a person held the
    # order. The cancel spares it, as FailPayment spares a held order: released, it is sourced anew.
    order_id = world.place(("MUG", 2))
    world.workflow.authorize_payment(order_id, attempt=0)
    hold(world, order_id)

    world.workflow.cancel_after_failure(order_id, "OutOfStock", "no MUG left")

    held = world.order(order_id)
    assert (held.status, held.payment.status) == (S.ON_HOLD, "authorized")
    release(world, order_id)
    world.workflow.reserve_stock(order_id)
    assert sum(world.held_for(order_id).values()) == 2


def test_a_release_sent_right_after_the_hold_is_decided_on_the_order_as_written(world, monkeypatch):
    # GetItem is eventually consistent: just after the hold answered, a plain read may still show
    # the order as it was. A release decided on that read would be refused "not on hold".
    order = world.allocated(("MUG", 1))
    hold(world, order.id)
    real = world.orders.get
    monkeypatch.setattr(world.orders, "get", lambda oid, consistent=False: real(oid) if consistent else order)

    released = release(world, order.id)

    assert (released.status, released.hold) == (S.ALLOCATED, None)
    assert [e.type for e in world.history(order.id)][-2:] == ["on_hold", "released"]


def test_a_hold_sent_right_after_the_order_was_placed_finds_it(world, monkeypatch):
    order_id = world.place(("MUG", 1))
    real = world.orders.get
    monkeypatch.setattr(world.orders, "get", lambda oid, consistent=False: real(oid) if consistent else None)

    assert hold(world, order_id).status is S.ON_HOLD


def test_a_refusal_stands_on_the_order_as_written(world):
    order = world.allocated(("MUG", 1))
    with pytest.raises(InvalidTransition):
        release(world, order.id)
    with pytest.raises(NotFound):
        release(world, "ord_" + "a" * 24)


def test_a_hold_from_a_version_a_step_changed_before_its_write_holds_nothing(world, monkeypatch):
    # The approver read the order pending; its authorization lands between the hold's read and its
    # write. Decided again on the order as it is, the hold would land on what they never saw.
    order_id = world.place(("MUG", 1))
    seen = world.order(order_id).version
    before_the_next_write(world, monkeypatch, lambda: world.workflow.authorize_payment(order_id, attempt=0))

    with pytest.raises(StaleVersion) as refused:
        holds(world).hold(order_id, HoldRequest(reason="fraud_review"), actor="key_ops", expected_version=seen)

    assert refused.value.details == [{"field": "If-Match", "message": f"current version is {seen + 1}"}]
    assert (world.order(order_id).status, world.order(order_id).version) == (S.AUTHORIZED, seen + 1)
    assert "on_hold" not in [entry.type for entry in world.history(order_id)]


def test_a_release_from_a_stale_version_changes_nothing_but_its_keyed_retry_answers_the_release_it_made(world):
    order = world.allocated(("MUG", 1))
    held = hold(world, order.id)
    before = world.snapshot(order.id)

    with pytest.raises(StaleVersion):
        holds(world).release(order.id, ReleaseRequest(), actor="key_ops", expected_version=order.version)
    assert world.snapshot(order.id) == before
    released = holds(world).release(order.id, ReleaseRequest(), actor="key_ops", request_key="api:key_ops:k1",
                                    expected_version=held.version)  # fmt: skip
    again = holds(world).release(order.id, ReleaseRequest(), actor="key_ops", request_key="api:key_ops:k1",
                                 expected_version=held.version)  # fmt: skip

    assert again == released and again.status is S.ALLOCATED
    with pytest.raises(StaleVersion):
        holds(world).release(order.id, ReleaseRequest(), actor="key_ops", expected_version=held.version)


# --- A hold racing a running step: neither is lost -----------------------------------------------


def test_a_hold_that_wins_over_the_authorization_keeps_both(world, monkeypatch):
    order_id = world.place(("MUG", 2))
    before_the_next_write(world, monkeypatch, lambda: hold(world, order_id))

    with pytest.raises(OrderHeld):
        world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    (reference,) = world.spy.authorized
    # The hold stands, and the authorization is recorded on the held order (never voided, never
    # asked for twice): a release carries on after it, a cancel would void it.
    assert (order.status, order.hold.reason, order.hold.resume_to) == (S.ON_HOLD, "fraud_review", S.AUTHORIZED)
    assert (order.payment.status, order.payment.authorization) == ("authorized", reference)
    assert world.spy.voided == []
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.from_status, entry.to_status) == ("payment_authorized", None, None)

    release(world, order_id)
    run_from(world, order_id)
    assert world.order(order_id).status is S.ALLOCATED
    assert world.spy.authorized == [reference] and world.gateway.keys("authorize") == [f"{order_id}:authorize:v1"]


def test_an_authorization_lost_to_an_edit_of_the_held_order_is_voided(world, monkeypatch):
    order_id = world.place(("MUG", 2))

    def hold_and_edit() -> None:
        hold(world, order_id)
        current = world.order(order_id)
        world.actions.edit(order_id, current.version, OrderEdit(lines=[{"sku": "MUG", "quantity": 3}]), actor="k")

    before_the_next_write(world, monkeypatch, hold_and_edit)
    with pytest.raises(OrderHeld):
        world.workflow.authorize_payment(order_id, attempt=0)

    order = world.order(order_id)
    assert (order.status, order.payment.status, order.hold.resume_to) == (S.ON_HOLD, "pending", S.PENDING)
    assert world.spy.voided == world.spy.authorized != []


def test_release_after_a_hold_placed_while_pending_reuses_the_authorization_key(world, monkeypatch):
    """The gateway approved, then the step died before its write; a hold came; the release's
    execution asks again with the same key, so the customer is authorized once."""
    order_id = world.place(("MUG", 1))
    real = world.orders.update

    def crash(order, expected, entries, **conditions):
        monkeypatch.setattr(world.orders, "update", real)
        raise RuntimeError("the Lambda died after the gateway answered")

    monkeypatch.setattr(world.orders, "update", crash)
    with pytest.raises(RuntimeError):
        world.workflow.authorize_payment(order_id, attempt=0)
    hold(world, order_id)
    with pytest.raises(OrderHeld):  # the execution's retry finds the hold and stops
        world.workflow.authorize_payment(order_id, attempt=1)
    release(world, order_id)

    run_from(world, order_id)

    order = world.order(order_id)
    assert order.version > 3 and order.status is S.ALLOCATED
    assert world.gateway.keys("authorize") == [f"{order_id}:authorize:v1"] * 2
    assert len(set(world.spy.authorized)) == 1 and order.payment.authorization == world.spy.authorized[0]


def test_an_edit_while_held_gets_a_new_authorization_key(world):
    order_id = world.place(("MUG", 1))
    held = hold(world, order_id)
    world.actions.edit(order_id, held.version, OrderEdit(lines=[{"sku": "MUG", "quantity": 2}]), actor="k")
    release(world, order_id)

    run_from(world, order_id)

    assert world.gateway.keys("authorize") == [f"{order_id}:authorize:v3"]


def test_an_authorized_order_edited_while_held_to_a_grown_total_is_authorized_again_for_it(world):
    # Held after its authorization (by a person, or parked by the workflow): the edit must cover
    # the new total, or every capture of it would ask for more than was authorized.
    order_id = world.place(("MUG", 1))
    run_step(world, "authorize_payment", order_id)
    first = world.order(order_id).payment.authorization
    held = hold(world, order_id)

    edited = world.actions.edit(order_id, held.version, OrderEdit(lines=[{"sku": "MUG", "quantity": 3}]), actor="k")

    assert edited.status is S.ON_HOLD
    assert edited.payment.authorized == edited.totals.grand_total
    assert edited.payment.authorization != first
    assert world.spy.voided == [first]
    release(world, order_id)
    run_from(world, order_id, first=1)
    order = world.order(order_id)
    for shipment in order.shipments:
        world.actions.ship(order_id, shipment.id, None, actor="key_wh")
    shipped = world.order(order_id)
    assert shipped.payment.captured == shipped.totals.grand_total == shipped.payment.authorized


@pytest.mark.parametrize("step", ["reserve_stock", "create_shipments"])
def test_a_hold_that_wins_over_a_later_step_stops_it_and_the_release_runs_it_again(world, monkeypatch, step):
    order_id = world.place(("MUG", 2))
    for earlier in STEPS[: STEPS.index(step)]:
        run_step(world, earlier, order_id)
    reserved_before = world.held_for(order_id)
    before_the_next_write(world, monkeypatch, lambda: hold(world, order_id))

    with pytest.raises(OrderHeld):
        run_step(world, step, order_id)

    order = world.order(order_id)
    assert (order.status, order.hold.resume_to, order.shipments) == (S.ON_HOLD, S.AUTHORIZED, [])
    # The step undid its own work (the reservations it made) before it stopped: nothing new is held.
    assert world.held_for(order_id) == reserved_before

    release(world, order_id)
    run_from(world, order_id)
    assert world.order(order_id).status is S.ALLOCATED
    assert sum(world.held_for(order_id).values()) == 2
    assert len(set(world.spy.authorized)) == 1 and world.spy.voided == []


def test_a_step_that_wins_over_the_hold_lets_the_hold_apply_to_its_result(world, monkeypatch):
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    landed = before_the_next_write(world, monkeypatch, lambda: world.workflow.create_shipments(order_id))

    held = hold(world, order_id)  # the hold re-reads after losing, and holds the allocated order

    assert landed == [True]
    assert (held.status, held.hold.resume_to, len(held.shipments)) == (S.ON_HOLD, S.ALLOCATED, 1)


def test_a_held_order_read_back_from_a_response_is_valid_but_cannot_be_released(world):
    order_id = world.place(("MUG", 1))
    held = hold(world, order_id)

    shown = Order.model_validate(held.model_dump(mode="json"))  # POST /orders re-validates its answer

    assert shown.hold.resume_to is None and shown.hold.reason == "fraud_review"
    with pytest.raises(InvalidTransition):
        shown.release(note=None, at=NOW, actor="key_ops")


# --- Editing a held order that holds stock -------------------------------------------------------


def test_a_held_allocated_order_gets_its_address_fixed_and_is_sourced_again_once_released(world):
    # An address review: the parcel must not leave before the address is fixed, so the fix is made
    # on the held order, not after a release that would let it ship to the old address.
    order = world.allocated(("MUG", 2))
    held = hold(world, order.id, reason="address_review")
    portland = address_body(city="Portland", region="OR", postal_code="97201")

    edited = world.actions.edit(order.id, held.version, OrderEdit(shipping_address=portland), actor="key_ops")

    assert (edited.status, edited.hold.reason, edited.allocations, edited.shipments) == (
        S.ON_HOLD, "address_review", [], [],
    )  # fmt: skip
    assert edited.shipping_address.city == "Portland"
    with pytest.raises(OrderHeld):
        world.workflow.reserve_stock(order.id)  # nothing is sourced while it is held
    entry, booking = world.history(order.id)[-2:]  # the edit, then its withdrawn parcel's booking cancelled
    assert (entry.type, entry.actor, entry.detail["released"]) == (
        "edited", "key_ops", [a.model_dump() for a in order.allocations],
    )  # fmt: skip
    assert booking.type == "carrier_booking_cancelled"

    released = release(world, order.id)

    assert released.status is S.AUTHORIZED  # the outbox starts its workflow again, as after a release
    run_from(world, order.id)
    again = world.order(order.id)
    assert again.status is S.ALLOCATED
    assert sum(world.held_for(order.id).values()) == 2
    assert len(again.shipments) == 1 and world.spy.voided == []


def test_a_held_pickup_waiting_at_its_store_is_edited_on_hold_and_sourced_again_when_released(world):
    # API.md: edits "until the first shipment ships"; a pickup waiting at its store has not shipped.
    world.inventory.set_on_hand("MUG", "store-sf", 5, reason="count")
    order = world.allocated(("MUG", 1), fulfillment={"type": "pickup", "location_id": "store-sf"})
    world.actions.ready(order.id, order.shipments[0].id, actor="key_store")
    held = hold(world, order.id)

    edited = world.actions.edit(order.id, held.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_ops")

    assert (edited.status, edited.shipments, edited.allocations) == (S.ON_HOLD, [], [])
    assert edited.hold is not None and edited.hold.resume_to is S.AUTHORIZED
    released = release(world, edited.id)
    assert released.status is S.AUTHORIZED
    world.workflow.reserve_stock(order.id)
    world.workflow.create_shipments(order.id)
    again = world.order(order.id)
    (parcel,) = again.shipments
    assert (again.status, parcel.status, parcel.location_id, parcel.lines[0].quantity) == (
        S.ALLOCATED, ShipmentStatus.PENDING, "store-sf", 2
    )  # fmt: skip


# --- Cancelling units of a held order -------------------------------------------------------------


def test_units_of_a_held_allocated_order_are_cancelled_on_hold_and_their_stock_released(world):
    order = world.allocated(("MUG", 3), ("TSHIRT", 1))
    held = hold(world, order.id, reason="customer_request")

    done = world.actions.cancel(order.id, "two mugs are enough", actor="key_ops", lines={"L1": 1})

    assert (done.status, done.hold.reason) == (S.ON_HOLD, "customer_request")
    assert [(line.quantity, line.cancelled_quantity) for line in done.lines] == [(2, 1), (1, 0)]
    assert sum(a.quantity for a in done.allocations if a.line_id == "L1") == 2
    assert sum(world.held_for(order.id).values()) == 3  # two mugs and the T-shirt
    # Four versions: the cancel, the shrunk parcel's new label (shipment_relabelled), its first
    # booking cancelled with the carrier, then the release the cancel recorded as owed, done.
    assert done.version == held.version + 4
    entry, relabelled, booking = world.history(order.id)[-3:]
    assert (entry.type, entry.actor, entry.detail["lines"]) == ("units_cancelled", "key_ops", {"L1": 1})
    assert (relabelled.type, booking.type) == ("shipment_relabelled", "carrier_booking_cancelled")
    assert world.spy.captured == []

    released = release(world, order.id)

    assert released.status is S.ALLOCATED
    for shipment in released.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    shipped = world.order(order.id)
    assert shipped.status is S.SHIPPED
    assert shipped.payment.captured == shipped.totals.grand_total


def test_every_unit_of_a_held_allocated_order_cancels_it(world):
    order = world.allocated(("MUG", 2))
    hold(world, order.id)

    done = world.actions.cancel(order.id, "fraud confirmed", actor="key_ops", lines={"L1": 2})

    assert (done.status, done.payment.status) == (S.CANCELLED, "voided")
    assert world.held_for(order.id) == {}
    (line,) = done.lines
    assert (line.quantity, line.cancelled_quantity, line.total.amount, done.totals.grand_total.amount) == (0, 2, 0, 0)


def test_units_of_an_order_held_before_authorization_are_cancelled_and_the_release_authorizes_what_is_left(world):
    # API.md: a cancel with `lines` cancels those quantities whatever the status; held while pending
    # it answered 409 invalid_transition.
    order_id = world.place(("MUG", 2))
    hold(world, order_id)

    done = world.actions.cancel(order_id, "one is enough", actor="key_ops", lines={"L1": 1})

    assert (done.status, done.hold.resume_to, done.lines[0].quantity) == (S.ON_HOLD, S.PENDING, 1)
    release(world, order_id)
    run_from(world, order_id)
    sourced = world.order(order_id)
    assert (sourced.status, sourced.payment.authorized) == (S.ALLOCATED, done.totals.grand_total)
    assert world.held_for(order_id) == {("MUG", "wh-west", f"{order_id}#L1"): 1}


def test_units_of_an_order_held_while_backordered_are_cancelled_on_hold_and_the_release_sources_what_is_left():
    # API.md: a cancel with `lines` cancels those quantities (README: "A cancel works on a held order
    # as on any other"); held while backordered it answered 409 invalid_transition, so a customer's
    # smaller order waited for the release, and stock arriving meanwhile, at its old quantity.
    world, order_id = backordered_books(on_hand=6, ordered=10)
    held = hold(world, order_id, reason="customer_request")

    done = world.actions.cancel(order_id, "two books are enough", actor="key_cs", lines={"L1": 8})

    assert (done.status, done.hold.reason, done.hold.resume_to) == (S.ON_HOLD, "customer_request", S.AUTHORIZED)
    assert (done.lines[0].quantity, done.lines[0].cancelled_quantity, done.allocations) == (2, 8, [])
    assert done.totals.grand_total.amount < held.totals.grand_total.amount
    # What its lines no longer want goes back at once (its workflow waits for the release).
    assert world.held_for(order_id) == {("BOOK", "wh-west", f"{order_id}#L1"): 2}
    assert world.level("BOOK", "wh-west") == (6, 2, 4)
    entry = world.history(order_id)[-1]
    assert (entry.type, entry.detail["lines"]) == ("units_cancelled", {"L1": 8})

    released = release(world, order_id)

    assert released.status is S.AUTHORIZED
    run_from(world, order_id, 1)
    allocated = world.order(order_id)
    assert allocated.status is S.ALLOCATED and sum(a.quantity for a in allocated.allocations) == 2
    assert world.held_for(order_id) == {("BOOK", "wh-west", f"{order_id}#L1"): 2}


def test_every_unit_of_an_order_held_while_backordered_cancels_it():
    world, order_id = backordered_books(on_hand=1, ordered=3)
    hold(world, order_id)

    done = world.actions.cancel(order_id, "no longer wanted", actor="key_cs", lines={"L1": 3})

    assert (done.status, done.payment.status) == (S.CANCELLED, "voided")
    assert world.held_for(order_id) == {}


def test_an_order_held_while_backordered_is_edited_on_hold_and_the_release_sources_it_again():
    # API.md: PATCH answers 200 "until the first shipment ships", and an edited backordered order "is
    # sourced again"; held while backordered it answered 409 invalid_transition ("release it to edit
    # it"), so a customer who asked to change a held order waited for its release, and for stock
    # arriving meanwhile, at the order they no longer wanted.
    world, order_id = backordered_books(on_hand=6, ordered=10)
    held = hold(world, order_id, reason="customer_request")

    edited = world.actions.edit(order_id, held.version, OrderEdit(lines=[LineInput(sku="BOOK", quantity=3)]), "key_cs")

    assert (edited.status, edited.hold.reason, edited.hold.resume_to) == (S.ON_HOLD, "customer_request", S.AUTHORIZED)
    assert (edited.lines[0].quantity, edited.allocations, edited.shipments) == (3, [], [])
    assert edited.totals.grand_total.amount < held.totals.grand_total.amount
    assert world.history(order_id)[-1].type == "edited"
    # What its lines no longer want goes back at once (its workflow waits for the release).
    assert world.held_for(order_id) == {("BOOK", "wh-west", f"{order_id}#L1"): 3}
    assert world.level("BOOK", "wh-west") == (6, 3, 3)

    released = release(world, order_id)

    assert released.status is S.AUTHORIZED
    run_from(world, order_id, 1)
    allocated = world.order(order_id)
    assert allocated.status is S.ALLOCATED and sum(a.quantity for a in allocated.allocations) == 3
    assert world.held_for(order_id) == {("BOOK", "wh-west", f"{order_id}#L2"): 3}  # the edited line's id


def test_an_order_held_while_backordered_edited_to_more_than_there_is_waits_backordered_once_released():
    world, order_id = backordered_books(on_hand=6, ordered=10)
    held = hold(world, order_id, reason="customer_request")

    edited = world.actions.edit(order_id, held.version, OrderEdit(lines=[LineInput(sku="BOOK", quantity=12)]), "key_cs")

    assert (edited.status, edited.hold.resume_to, edited.lines[0].quantity) == (S.ON_HOLD, S.AUTHORIZED, 12)
    assert edited.payment.authorized == edited.totals.grand_total  # a grown total is authorized again first
    release(world, order_id)
    world.workflow.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(order_id)
    waiting = world.order(order_id)
    assert waiting.status is S.BACKORDERED
    assert world.held_for(order_id) == {("BOOK", "wh-west", f"{order_id}#L2"): 6}


def test_a_hold_that_lands_while_an_edited_order_is_sourced_again_leaves_it_holding_no_more_than_it_needs(
    world, monkeypatch
):
    order_id = world.place(("MUG", 6))
    run_from(world, order_id)
    order = world.order(order_id)
    world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_cs")
    assert sum(world.held_for(order_id).values()) == 6
    landed = before_the_next_write(world, monkeypatch, lambda: hold(world, order_id))

    with pytest.raises(OrderHeld):
        world.workflow.reserve_stock(order_id)

    assert landed and world.order(order_id).status is S.ON_HOLD
    assert sum(world.held_for(order_id).values()) <= 2
    monkeypatch.undo()
    release(world, order_id)
    run_from(world, order_id, 1)
    allocated = world.order(order_id)
    assert allocated.status is S.ALLOCATED and sum(a.quantity for a in allocated.allocations) == 2
    assert sum(world.held_for(order_id).values()) == 2


def test_a_hold_of_an_allocated_order_keeps_every_unit_it_holds(world):
    order_id = world.place(("MUG", 12))
    run_from(world, order_id)
    before = world.held_for(order_id)

    hold(world, order_id)

    assert world.held_for(order_id) == before and sum(before.values()) == 12


def test_a_hold_of_a_backordered_order_whose_units_were_cancelled_gives_back_what_it_no_longer_needs():
    # The cancel sent it back to be sourced for the 2 books left, holding the 6 it had: held
    # before its workflow ran, it kept the 4 it no longer needed from other orders.
    world, order_id = backordered_books(on_hand=6, ordered=10)
    world.actions.cancel(order_id, "customer_request", "key_cs", lines={"L1": 8})
    assert sum(world.held_for(order_id).values()) == 6

    hold(world, order_id)

    assert world.held_for(order_id) == {("BOOK", "wh-west", f"{order_id}#L1"): 2}
    assert world.level("BOOK", "wh-west") == (6, 2, 4)


def test_a_hold_that_lands_while_an_edited_order_is_sourced_again_leaves_it_holding_what_it_needs(world, monkeypatch):
    # Edited from 6 MUGs down to 2 and held (an address review) while its workflow was sourcing it
    # again: the order keeps the 2 it needs for the release, not 0 for another order to take.
    order_id = world.place(("MUG", 6))
    run_from(world, order_id)
    order = world.order(order_id)
    world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_cs")
    landed = before_the_next_write(world, monkeypatch, lambda: hold(world, order_id))

    with pytest.raises(OrderHeld):
        world.workflow.reserve_stock(order_id)

    assert landed and world.order(order_id).status is S.ON_HOLD
    assert sum(world.held_for(order_id).values()) == 2


class InventoryDown(Exception):
    """What the inventory's store raised (throttled past its retries, say): nothing was written."""


def inventory_down(*args: object, **kwargs: object) -> None:
    raise InventoryDown("busy")


def test_a_hold_whose_stock_cannot_be_given_back_stands_and_the_release_gives_it_back(world, monkeypatch):
    # Edited from 6 MUGs down to 2, then held (an address review) while the inventory refused the
    # trim: the hold is written, so it answers the held order (a retry would be 409, held already),
    # the history says what stayed reserved, and the released order is sourced down to its 2.
    order_id = world.place(("MUG", 6))
    run_from(world, order_id)
    order = world.order(order_id)
    world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_cs")
    monkeypatch.setattr(world.inventory, "shrink", inventory_down)

    held = hold(world, order_id)

    assert held.status is S.ON_HOLD and held == world.order(order_id)
    assert sum(world.held_for(order_id).values()) == 6
    (kept,) = [h for h in world.history(order_id) if h.type == "surplus_not_given_back"]
    assert kept.detail == {"error": "InventoryDown"}
    monkeypatch.undo()
    release(world, order_id)
    run_from(world, order_id, 1)
    assert world.order(order_id).status is S.ALLOCATED
    assert sum(world.held_for(order_id).values()) == 2


def test_an_edit_of_a_held_order_whose_stock_cannot_be_given_back_stands(world, monkeypatch):
    order_id = world.place(("MUG", 6))
    run_from(world, order_id)
    held = hold(world, order_id)
    monkeypatch.setattr(world.inventory, "shrink", inventory_down)

    edited = world.actions.edit(order_id, held.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_cs")

    assert (edited.status, edited.lines[0].quantity) == (S.ON_HOLD, 2) and edited == world.order(order_id)
    assert sum(world.held_for(order_id).values()) == 6
    types = [h.type for h in world.history(order_id)]
    assert types.index("surplus_not_given_back") == types.index("edited") + 1
    monkeypatch.undo()
    release(world, order_id)
    run_from(world, order_id, 1)
    assert world.order(order_id).status is S.ALLOCATED
    assert sum(world.held_for(order_id).values()) == 2


def test_a_hold_stands_when_the_stock_and_then_its_note_both_fail(world, monkeypatch, caplog):
    order_id = world.place(("MUG", 6))
    run_from(world, order_id)
    order = world.order(order_id)
    world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]), "key_cs")
    monkeypatch.setattr(world.inventory, "shrink", inventory_down)
    write = world.orders.update

    def orders_down_for_the_note(new: Order, expected: Order, entries: list, **conditions: object) -> None:
        if any(entry.type == "surplus_not_given_back" for entry in entries):
            raise InventoryDown("the orders table is busy too")
        write(new, expected, entries, **conditions)

    monkeypatch.setattr(world.orders, "update", orders_down_for_the_note)

    held = hold(world, order_id)

    assert held.status is S.ON_HOLD and held == world.order(order_id)
    (logged,) = [r for r in caplog.records if r.name == "core.holds"]
    assert (logged.levelname, logged.order_id) == ("WARNING", order_id)


def test_a_hold_gives_back_the_units_of_a_line_an_edit_replaced_and_could_not_release(world, monkeypatch):
    # 2 MUGs edited to a TSHIRT while the inventory refused the MUGs' release (the edit stands, its
    # order owes that release: Order.replaced_lines), then held before its workflow ran again: the
    # hold gives back what the workflow it puts off would have, the MUGs too, or they stay kept from
    # other orders for as long as the hold lasts.
    order_id = world.place(("MUG", 2))
    run_from(world, order_id)
    order = world.order(order_id)
    monkeypatch.setattr(world.inventory, "release", inventory_down)
    world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), "key_cs")
    monkeypatch.undo()

    held = hold(world, order_id)

    assert held.status is S.ON_HOLD
    assert world.held_for(order_id) == {}
    release(world, order_id)
    run_from(world, order_id, 1)
    assert world.order(order_id).status is S.ALLOCATED
    assert world.held_for(order_id) == {("TSHIRT", "wh-west", f"{order_id}#L2"): 1}


def test_a_hold_sent_again_under_its_idempotency_key_is_answered_within_the_retry_window_and_refused_after(world):
    # Within the window it is a retry whose answer was lost; after it, the key is no retry of
    # anything a client still waits on: the order held already is 409, as without a key.
    order_id = world.place(("TSHIRT", 1))
    request = HoldRequest(reason="fraud_review", note="check the address")
    Holds(world.orders, clock=lambda: NOW).hold(order_id, request, actor="key_ops", request_key="k-1")

    within = Holds(world.orders, clock=lambda: NOW + RELEASE_RETRY_WINDOW - timedelta(seconds=1))
    assert within.hold(order_id, request, actor="key_ops", request_key="k-1").status is S.ON_HOLD
    after = Holds(world.orders, clock=lambda: NOW + RELEASE_RETRY_WINDOW + timedelta(seconds=1))
    with pytest.raises(InvalidTransition):
        after.hold(order_id, request, actor="key_ops", request_key="k-1")


def test_a_hold_sent_again_under_its_idempotency_key_with_another_body_is_refused_as_a_reused_key(world):
    # The key names the first request: another reason, or another note, under it is a client's
    # bug, not a retry, and is not answered as the hold it did not ask for; a release likewise.
    order_id = world.place(("TSHIRT", 1))
    ops = Holds(world.orders, clock=lambda: NOW)
    ops.hold(order_id, HoldRequest(reason="fraud_review", note="check the address"), actor="key_ops", request_key="k-1")

    for other in (HoldRequest(reason="address_review", note="check the address"),
                  HoldRequest(reason="fraud_review", note="call the customer")):  # fmt: skip
        with pytest.raises(Conflict) as reused:
            ops.hold(order_id, other, actor="key_ops", request_key="k-1")
        assert reused.value.code == "idempotency_key_reused"
    ops.release(order_id, ReleaseRequest(note="looks fine"), actor="key_ops", request_key="k-2")
    with pytest.raises(Conflict) as reused:
        ops.release(order_id, ReleaseRequest(note="cleared by the bank"), actor="key_ops", request_key="k-2")
    assert reused.value.code == "idempotency_key_reused"
    assert world.order(order_id).status is S.PENDING


# --- give_back_surplus: what a held order sent back to be sourced keeps ---------------------------


def test_surplus_given_back_keeps_what_two_lines_of_one_sku_want_where_the_most_units_are_held(world):
    # 3 + 2 MUGs held as 6 at wh-east (3 under each line) and 5 at wh-west: the 5 wanted are kept
    # at wh-east, the location holding the most of the order's units (one parcel), though wh-west
    # comes first in the network; the line holding more than it wants is shrunk, wh-west released.
    order = world.order(world.place(("MUG", 3), ("MUG", 2)))
    world.inventory.reserve("MUG", "wh-east", f"{order.id}#L1", 3)
    world.inventory.reserve("MUG", "wh-east", f"{order.id}#L2", 3)
    world.inventory.reserve("MUG", "wh-west", f"{order.id}#L1", 5)

    give_back_surplus(world.inventory, order, ["wh-west", "wh-east"])

    assert world.held_for(order.id) == {
        ("MUG", "wh-east", f"{order.id}#L1"): 3,
        ("MUG", "wh-east", f"{order.id}#L2"): 2,
    }
    assert (world.level("MUG", "wh-east"), world.level("MUG", "wh-west")) == ((10, 5, 5), (10, 0, 10))


def test_surplus_given_back_between_locations_holding_as_many_keeps_the_one_first_in_the_network(world):
    order = world.order(world.place(("MUG", 2)))
    for location_id in ("wh-east", "wh-west"):
        world.inventory.reserve("MUG", location_id, f"{order.id}#L1", 2)

    give_back_surplus(world.inventory, order, ["wh-west", "wh-east"])

    assert world.held_for(order.id) == {("MUG", "wh-west", f"{order.id}#L1"): 2}
    assert world.level("MUG", "wh-east") == (10, 0, 10)


def test_surplus_given_back_keeps_a_lines_own_units_before_those_of_the_line_an_edit_replaced(world):
    # L1 (2 MUGs) was edited into L2 (2 MUGs), whose release the inventory refused (the order owes
    # it: Order.replaced_lines), and L2 was sourced at the same location meanwhile: the units are
    # kept under L2's own key, the one the order's shipment and cancel name, and L1's released.
    placed = world.order(world.place(("MUG", 2)))
    line = placed.lines[0].model_copy(update={"line_id": "L2"})
    order = placed.model_copy(update={"lines": [line], "replaced_lines": [ReplacedLine(line_id="L1", sku="MUG")]})
    world.inventory.reserve("MUG", "wh-east", f"{order.id}#L1", 2)
    world.inventory.reserve("MUG", "wh-east", f"{order.id}#L2", 2)

    give_back_surplus(world.inventory, order, ["wh-east", "wh-west"])

    assert world.held_for(order.id) == {("MUG", "wh-east", f"{order.id}#L2"): 2}
    assert world.level("MUG", "wh-east") == (10, 2, 8)

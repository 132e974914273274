"""An order is one DynamoDB item, refused by AWS past 400 KB (moto refuses it too, as a 500 to the
request that met it), and its refunds and returns live on it: nothing bounded how many an order
took. Appeasements (a cent each, the longest reason, as many as captured minus refunded allows)
and returns (one unit each, as many as shipped units allow) now stop at a clear 409 while the
stored item still has room for the writes that follow them. So do edits of an order's lines while
its workflow does not run (pending, or held): each keeps every line it replaced (the order's
`replaced_lines`) until the order's sourcing clears them."""

from __future__ import annotations

import random

import pytest

from core import hookimpl
from core.errors import Backordered, Conflict
from core.holds import HoldRequest, Holds
from core.models import (
    MAX_BOOKINGS_TO_CANCEL,
    MAX_REPLACED_AUTHORIZATIONS,
    MAX_REPLACED_LINE_BYTES,
    LineInput,
    Order,
    OrderEdit,
    PaymentRefund,
    RefundedUnits,
    ReplacedLine,
)
from core.money import Money
from core.refunds import MAX_APPEASEMENT_BYTES, appeasement_bytes
from core.return_models import RequestReturn
from core.returns import MAX_RETURNS
from core.status import OrderStatus
from functions.adapters import order_codec
from functions.adapters.dynamodb import HISTORY_KEPT_BYTES
from tests.builders import product
from tests.integration.test_event_sizes import the_largest_order
from tests.unit.test_refund_authorizations import STOCK, returns_of
from tests.unit.world import Clock, build_world

ITEM_LIMIT = 400 * 1024  # DynamoDB's item limit: names and values of every attribute
# What the order's item holds beside its document: its history (HISTORY_KEPT_BYTES, then moved to
# pages, plus the entries of the write that passes it) and its key, index and token attributes.
BESIDE_THE_DOCUMENT = HISTORY_KEPT_BYTES + 8 * 1024


def _reason(rnd: random.Random) -> str:
    # 200 random CJK ideographs: the longest reason, 600 bytes of UTF-8 that zlib cannot shrink.
    return "".join(chr(0x4E00 + rnd.randrange(0x5000)) for _ in range(200))


def _stored(order: Order) -> int:
    """The bytes of the order's document as the DynamoDB adapter stores it (order_codec)."""
    return len(order_codec.compress(order.stored_json().encode()))


@pytest.fixture
def shipped():
    clock = Clock()
    world = build_world([*STOCK[:2], ("TSHIRT", "wh-east", 200)], clock=clock)
    order = world.allocated(("TSHIRT", 200))
    (shipment,) = order.shipments
    world.actions.ship(order.id, shipment.id, tracking_number=None, actor="key_wh")
    return world, clock, world.order(order.id)


def test_appeasements_of_a_cent_stop_at_a_409_before_the_order_outgrows_its_item(shipped):
    """Before: 900 appeasements of a cent with the longest reason were all taken, the order's stored
    document passing 400 KB on its own (AWS would have refused the write: a 500)."""
    world, _, order = shipped
    rnd = random.Random(524)
    taken = 0
    with pytest.raises(Conflict) as refused:
        for n in range(900):
            world.refunds.issue_refund(order.id, Money.of("0.01", "USD"), _reason(rnd), f"goodwill-{n}", actor="cs")
            taken += 1
    assert refused.value.code == "too_many_refunds"
    after = world.order(order.id)
    assert len(after.payment.refunds) == taken and taken > 50
    assert appeasement_bytes(after) <= MAX_APPEASEMENT_BYTES
    assert _stored(after) + BESIDE_THE_DOCUMENT < ITEM_LIMIT


def test_an_appeasement_refused_for_room_is_refused_again_under_its_key_and_names_the_limit(shipped):
    world, _, order = shipped
    rnd = random.Random(7)
    n = 0
    with pytest.raises(Conflict) as refused:
        while True:
            world.refunds.issue_refund(order.id, Money.of("0.01", "USD"), _reason(rnd), f"k-{n}", actor="cs")
            n += 1
    assert str(MAX_APPEASEMENT_BYTES // 1024) in refused.value.message
    refused_at = world.order(order.id)
    with pytest.raises(Conflict):
        world.refunds.issue_refund(order.id, Money.of("0.01", "USD"), _reason(rnd), f"k-{n + 1}", actor="cs")
    assert world.order(order.id).version == refused_at.version  # nothing written, nothing asked
    # A key already taken answers its refund as before (no new refund to make room for).
    assert world.refunds.issue_refund(order.id, Money.of("0.01", "USD"), "x", "k-0", actor="cs").order_id == order.id


def test_returns_of_one_unit_stop_at_a_409_with_room_left_for_their_refunds(shipped):
    """Before: every shipped unit could be a return of its own, and each received return writes a
    refund (and its entries) on the order: an order of 10,000 units, 10,000 of them."""
    world, clock, order = shipped
    returns = returns_of(world, clock)
    asked = RequestReturn.model_validate({"lines": [{"line_id": "L1", "quantity": 1, "reason": "r"}]})
    made = 0
    with pytest.raises(Conflict) as refused:
        for _ in range(MAX_RETURNS + 1):
            returns.request(order.id, asked, actor="key_cs")
            made += 1
    assert refused.value.code == "too_many_returns"
    assert made == 100  # as README says: an order takes 100 returns, the 101st is 409


def test_the_returns_an_order_takes_fit_its_item_with_their_refunds_at_their_largest():
    """MAX_RETURNS returns of the largest order's 100 lines, each refunded once with every amount at
    its widest, on the largest order POST /orders takes (its name random: a text zlib cannot shrink), and
    its appeasements at their room, each with a random reason of the longest."""
    rnd = random.Random(1)
    base = the_largest_order(OrderStatus.DELIVERED, delivered=100, returned=False)
    base = base.model_copy(update={"shipping_address": base.shipping_address.model_copy(update={"name": _reason(rnd)})})

    def amount() -> Money:
        return Money.of(f"{rnd.randrange(10**9)}.{rnd.randrange(100):02d}", "USD")

    returned = [
        PaymentRefund(
            id=f"ref_{rnd.getrandbits(96):024x}", amount=amount(), reason=f"return rma_{n:026d}", kind="return",
            return_id=f"rma_{rnd.getrandbits(96):024x}", reference=f"{rnd.getrandbits(256):064x}", at=base.created_at,
            lines=[RefundedUnits(line_id=f"L{k}", quantity=1, amount=amount(), before=rnd.randrange(10**4))
                   for k in range(1, 101)],
            shipping=amount(), kept_back=amount(),
        )
        for n in range(MAX_RETURNS)
    ]  # fmt: skip
    appeased = []
    while sum(len(r.model_dump_json().encode()) for r in appeased) < MAX_APPEASEMENT_BYTES:
        appeased.append(
            PaymentRefund(
                id=f"ref_{rnd.getrandbits(96):024x}", amount=amount(), reason=_reason(rnd),
                reference=f"{rnd.getrandbits(256):064x}", at=base.created_at,
            )
        )  # fmt: skip
    full = base.model_copy(update={"payment": base.payment.model_copy(update={"refunds": appeased + returned})})
    assert _stored(full) + BESIDE_THE_DOCUMENT < ITEM_LIMIT, _stored(full)


SKUS = [f"SKU-{n:03d}" for n in range(1, 101)]


def _replaced_bytes(order: Order) -> int:
    return sum(len(line.model_dump_json().encode()) for line in order.replaced_lines)


@pytest.fixture
def hundred_lines():
    """A world selling 100 skus, and a pending order of one unit of each (its workflow not run)."""
    world = build_world([(sku, "wh-east", 100) for sku in SKUS])
    for sku in SKUS:
        world.catalog.put_product(product(sku, "1.00"))
    return world, world.place(*[(sku, 1) for sku in SKUS])


def _edit_to(world, order_id: str, quantity: int) -> None:
    order = world.order(order_id)
    world.actions.edit(
        order_id, order.version, OrderEdit(lines=[LineInput(sku=sku, quantity=quantity) for sku in SKUS]), "key_web"
    )


def test_edits_of_a_pending_order_stop_at_a_409_before_the_lines_they_replaced_outgrow_its_item(hundred_lines):
    """Before: every edit of the 100 lines kept all of them in `replaced_lines` (~260 bytes stored
    an edit, ~1,400 edits to pass 400 KB, each edit slower than the last), with nothing refusing one."""
    world, order_id = hundred_lines
    edits = 0
    with pytest.raises(Conflict) as refused:
        for n in range(60):
            _edit_to(world, order_id, 1 + n % 2)
            edits += 1
    assert refused.value.code == "too_many_edits"
    assert str(MAX_REPLACED_LINE_BYTES // 1024) in refused.value.message
    at_room = world.order(order_id)
    assert edits > 10 and _replaced_bytes(at_room) <= MAX_REPLACED_LINE_BYTES
    assert _stored(at_room) + BESIDE_THE_DOCUMENT < ITEM_LIMIT
    # Its sourcing clears them (ReserveStock's write): edited again once it has run.
    assert world.run(order_id).replaced_lines == []
    _edit_to(world, order_id, 3)
    assert world.order(order_id).replaced_lines


def test_an_edit_of_a_held_order_refused_for_room_writes_nothing_and_asks_the_gateway_nothing(hundred_lines):
    """Authorized and held (its workflow stopped): each edit grows the total, so each asks the
    gateway for a new authorization; the one refused for room asks nothing."""
    world, order_id = hundred_lines
    world.workflow.authorize_payment(order_id, attempt=0)
    Holds(world.orders, clock=lambda: world.order(order_id).updated_at).hold(
        order_id, HoldRequest(reason="fraud_review"), "key_ops"
    )
    with pytest.raises(Conflict) as refused:
        for quantity in range(2, 60):
            _edit_to(world, order_id, quantity)
            asked, before, entries = list(world.spy.authorized), world.order(order_id), len(world.history(order_id))
    assert refused.value.code == "too_many_edits"
    assert world.spy.authorized == asked
    assert world.order(order_id) == before and len(world.history(order_id)) == entries
    # A cancel still goes through, and gives back the authorization.
    assert world.actions.cancel(order_id, "changed my mind", "key_web").status is OrderStatus.CANCELLED


def test_the_lines_edits_replace_fit_the_item_at_their_largest_beside_everything_else():
    """MAX_REPLACED_LINE_BYTES of replaced lines each of a random sku at its longest (128
    characters zlib cannot shrink), on the largest order POST /orders takes, held, with its
    appeasements and returns' refunds at their room besides (an order has no replaced lines once
    anything has shipped: this is more than any order holds)."""
    rnd = random.Random(3)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-"
    replaced: list[ReplacedLine] = []
    while True:
        line = ReplacedLine(
            line_id=f"L{len(replaced) + 101}", sku=rnd.choice(alphabet[:62]) + "".join(rnd.choices(alphabet, k=127))
        )
        if sum(len(r.model_dump_json().encode()) for r in [*replaced, line]) > MAX_REPLACED_LINE_BYTES:
            break
        replaced.append(line)
    held = the_largest_order(OrderStatus.ON_HOLD, delivered=0, returned=False)
    held = held.model_copy(update={"shipping_address": held.shipping_address.model_copy(update={"name": _reason(rnd)})})
    assert _stored(held.model_copy(update={"replaced_lines": replaced})) + BESIDE_THE_DOCUMENT < ITEM_LIMIT


@pytest.mark.parametrize("void", ["refuse", "transient"])
def test_edits_that_grow_the_total_stop_at_a_409_while_the_authorizations_they_replaced_stand(void):
    """Before: with the gateway refusing voids (or down for them) every edit that grew the total
    left the authorization it replaced standing on the order (`replaced_authorizations`), each a
    hold on the customer's card, and the next edit asked the gateway to void every one again:
    40 such edits, 40 standing, nothing refusing the 41st."""
    clock = Clock()
    world = build_world([("TSHIRT", "wh-east", 100)], clock=clock)
    world.gateway.script("void", void)
    order_id = world.place(("TSHIRT", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    grown = 0
    with pytest.raises(Conflict) as refused:
        for quantity in range(2, 42):
            order = world.order(order_id)
            before, entries = world.order(order_id), len(world.history(order_id))
            asked = list(world.gateway.keys("authorize"))
            world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=quantity)]),
                               "key_web")  # fmt: skip
            grown += 1
    assert refused.value.code == "too_many_authorizations"
    assert grown == MAX_REPLACED_AUTHORIZATIONS
    assert world.gateway.keys("authorize") == asked  # the gateway not asked for another
    assert world.order(order_id) == before and len(world.history(order_id)) == entries
    assert len(before.replaced_authorizations) == MAX_REPLACED_AUTHORIZATIONS
    # An edit that does not grow the total still goes through, and so does a cancel.
    edited = world.actions.edit(order_id, before.version, OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1)]), "k")
    assert edited.totals.grand_total.amount < before.totals.grand_total.amount
    assert world.actions.cancel(order_id, "changed my mind", "key_web").status is OrderStatus.CANCELLED


def test_the_skus_a_backordered_order_waited_for_are_only_those_of_its_lines():
    """Before: `may_wait` kept every sku the order ever waited backordered for, each new wait
    adding its skus to those an edit had dropped (though an edit adding one back asks more of it
    than none, so none could be used again): edited and backordered again and again, each time for
    other skus, it grew with the catalog's backorderable skus, up to 100 a cycle. Now each wait
    keeps only the skus of its lines (the write leaves the others' queues, as before)."""
    skus = [f"PRE-{n}" for n in range(6)]
    world = build_world([])
    for sku in skus:
        world.catalog.put_product(product(sku, "5.00", allow_backorder=True))
    order_id = world.place((skus[0], 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    for sku in skus[1:]:
        with pytest.raises(Backordered):
            world.workflow.reserve_stock(order_id)
        order = world.order(order_id)
        world.actions.edit(order_id, order.version, OrderEdit(lines=[LineInput(sku=sku, quantity=1)]), "key_web")
    with pytest.raises(Backordered):
        world.workflow.reserve_stock(order_id)
    waited = world.order(order_id)
    assert (waited.status, waited.may_wait) == (OrderStatus.BACKORDERED, [skus[-1]])


class CarrierCancelsDown:
    """The carrier books parcels, but its cancel fails (an outage of that endpoint alone)."""

    @hookimpl(tryfirst=True)
    def oms_carrier_cancel_shipment(self, carrier, tracking_number, booking_key, order_id):
        raise TimeoutError("the carrier's cancel did not answer")


def test_edits_of_an_allocated_order_stop_at_a_409_while_the_bookings_they_gave_up_are_owed_a_cancel():
    """Before: each edit of an allocated order gives up its parcels' bookings (`bookings_to_cancel`)
    and its sourcing books new ones; with the carrier's cancel down they all stayed owed, two more
    each edit here (~140 bytes stored), every later change asking the carrier for each again."""
    clock = Clock()
    world = build_world([("TSHIRT", "wh-east", 100), ("MUG", "wh-west", 100)], CarrierCancelsDown(), clock=clock)
    order = world.allocated(("TSHIRT", 1), ("MUG", 1))
    edits = 0
    with pytest.raises(Conflict) as refused:
        for quantity in range(2, 80):
            before, entries = world.order(order.id), len(world.history(order.id))
            edit = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=quantity), LineInput(sku="MUG", quantity=1)])
            world.actions.edit(order.id, before.version, edit, "key_web")
            edits += 1
            world.run(order.id)
    assert refused.value.code == "too_many_bookings_to_cancel"
    assert world.order(order.id) == before and len(world.history(order.id)) == entries
    assert MAX_BOOKINGS_TO_CANCEL <= len(before.bookings_to_cancel) < MAX_BOOKINGS_TO_CANCEL + 2
    # A cancel still goes through (its bookings owed too).
    assert world.actions.cancel(order.id, "changed my mind", "key_web").status is OrderStatus.CANCELLED


def test_an_order_owing_its_carrier_cancels_is_still_edited_while_no_edit_gives_up_its_bookings():
    """The limit keeps an edit from giving up more bookings: an order sent back to be sourced (its
    parcel rejected), its workflow not run yet, holds none to give up, so its edit is taken."""
    clock = Clock()
    stock = [(sku, location_id, 100) for sku in ("TSHIRT", "MUG") for location_id in ("wh-east", "wh-west")]
    world = build_world(stock, CarrierCancelsDown(), clock=clock)
    order = world.allocated(("TSHIRT", 1), ("MUG", 1))
    with pytest.raises(Conflict):
        for quantity in range(2, 80):
            edit = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=quantity), LineInput(sku="MUG", quantity=1)])
            world.actions.edit(order.id, world.order(order.id).version, edit, "key_web")
            world.run(order.id)
    owing = world.order(order.id)
    world.actions.reject(order.id, owing.shipments[0].id, "damaged stock", actor="key_store")
    sent_back = world.order(order.id)  # its units are the other warehouse's to take
    assert sent_back.status is OrderStatus.AUTHORIZED and not sent_back.sourced_again_by_edit()
    assert len(sent_back.bookings_to_cancel) >= MAX_BOOKINGS_TO_CANCEL

    edited = world.actions.edit(order.id, sent_back.version, OrderEdit(shipping_method="express"), "key_web")

    assert edited.shipping_method == "express" and edited.status is OrderStatus.AUTHORIZED


def test_an_order_whose_lines_take_no_more_edits_still_takes_an_edit_of_its_shipping_method(hundred_lines):
    # The 409 says so: only an edit of the lines adds replaced lines; one of the method keeps them.
    world, order_id = hundred_lines
    with pytest.raises(Conflict):
        for n in range(60):
            _edit_to(world, order_id, 1 + n % 2)
    at_room = world.order(order_id)

    edited = world.actions.edit(order_id, at_room.version, OrderEdit(shipping_method="express"), "key_web")

    assert edited.shipping_method == "express" and edited.replaced_lines == at_room.replaced_lines

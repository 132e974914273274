"""An order is one DynamoDB item, refused by AWS past 400 KB (moto refuses it too, as a 500 to the
request that met it), and its refunds and returns live on it: nothing bounded how many an order
took. Appeasements (a cent each, the longest reason, as many as captured minus refunded allows)
and returns (one unit each, as many as shipped units allow) now stop at a clear 409 while the
stored item still has room for the writes that follow them."""

from __future__ import annotations

import random

import pytest

from core.errors import Conflict
from core.models import Order, PaymentRefund, RefundedUnits
from core.money import Money
from core.refunds import MAX_APPEASEMENT_BYTES, appeasement_bytes
from core.return_models import RequestReturn
from core.returns import MAX_RETURNS
from core.status import OrderStatus
from functions.adapters import order_codec
from functions.adapters.dynamodb import HISTORY_KEPT_BYTES
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
    assert made == MAX_RETURNS


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

"""A line id names one line of an order for its whole life: an edit's lines are numbered after the
highest id the order has had, and every id that can give is one the bodies naming lines take."""

from __future__ import annotations

from core.models import CancelRequest, LineInput, OrderEdit, ReplacedLine
from core.return_models import ReceiveReturn, RequestReturn
from tests.unit.world import build_world


def test_the_next_line_number_follows_the_highest_id_of_the_lines_and_of_those_still_owed_a_release():
    world = build_world([("TSHIRT", "wh-west", 10), ("MUG", "wh-west", 10)])
    order = world.order(world.place(("TSHIRT", 1), ("MUG", 1)))
    assert order.next_line_number() == 3

    # An order an older version edited (its lines numbered from L1 again) whose replaced line L2
    # still holds units: the next edit does not give L2 to other goods.
    edited_before = order.model_copy(
        update={"lines": order.lines[:1], "replaced_lines": [ReplacedLine(line_id="L2", sku="MUG")]}
    )
    assert edited_before.next_line_number() == 3


def test_every_line_id_edits_can_reach_is_one_a_cancel_a_return_and_a_receipt_name():
    # An edit takes up to 100 lines, each under a new id: ten edits of a full order pass L999,
    # past what a return's body took (L1 to L999), and the units of those lines could never be
    # returned or received.
    world = build_world([("TSHIRT", "wh-west", 200)])
    order = world.order(world.place(("TSHIRT", 1)))
    for edit in range(10):  # each a change: one unit a line, then two
        full = OrderEdit(lines=[LineInput(sku="TSHIRT", quantity=1 + edit % 2)] * 100)
        order = world.actions.edit(order.id, order.version, full, actor="key_web")
    assert [line.line_id for line in order.lines] == [f"L{n}" for n in range(902, 1002)]
    last = "L1001"

    CancelRequest.model_validate({"reason": "changed my mind", "lines": [{"line_id": last, "quantity": 1}]})
    RequestReturn.model_validate({"lines": [{"line_id": last, "quantity": 1, "reason": "too small"}]})
    ReceiveReturn.model_validate(
        {"location_id": "wh-west", "lines": [{"line_id": last, "quantity": 1, "condition": "resellable"}]}
    )

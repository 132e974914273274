"""A cancel of units that lands between the workflow's ReserveStock and its CreateShipments, in-process
on moto: the order is `authorized` with its stock reserved (its allocations) and no parcel yet, its
execution booking the parcels (the carrier slow, or down and retried). Before, that cancel was 409
`units of an order that is authorized cannot be cancelled`, where the same cancel a moment before or
after was 200 (the contract cancels units of an authorized or allocated order) and a whole cancel then
was 200 too. Now the units leave the order and its allocations there, what they held is released at
once, and the execution in flight books only what is left: its write, over the version before the
cancel, is refused, the bookings it made for the old parcels given up, and its retry books anew."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.test_cancel_units_api import api, authorized, cancel, stock  # noqa: F401 (a fixture)


def test_units_cancelled_after_the_stock_was_reserved_leave_it_and_the_parcels_are_booked_for_the_rest(api):  # noqa: F811
    order_id, workflow = authorized(api, ("MUG", 3), ("CAP", 2))
    workflow.reserve_stock(order_id)
    mug, cap = stock(api, "MUG", "wh-west"), stock(api, "CAP", "wh-east")
    assert api.get(f"/orders/{order_id}").json()["status"] == "authorized"

    answer = cancel(api, order_id, [("L1", 2), ("L2", 2)])

    assert answer.status_code == 200, answer.text
    order = answer.json()
    assert order["status"] == "authorized"
    assert [(line["quantity"], line["cancelled_quantity"]) for line in order["lines"]] == [(1, 2), (0, 2)]
    assert order["allocations"] == [{"line_id": "L1", "location_id": "wh-west", "quantity": 1}]
    assert stock(api, "MUG", "wh-west") == (mug[0], mug[1] - 2, mug[2] + 2)
    assert stock(api, "CAP", "wh-east") == (cap[0], cap[1] - 2, cap[2] + 2)
    # Nothing is captured before a parcel ships, nor is the authorization released: it covers the
    # new total, which the parcel captures when it ships.
    assert (order["payment"]["status"], order["payment"]["captured"]["amount"]) == ("authorized", "0.00")
    workflow.create_shipments(order_id)
    allocated = api.get(f"/orders/{order_id}").json()
    assert allocated["status"] == "allocated"
    assert [(s["location_id"], s["lines"]) for s in allocated["shipments"]] == [
        ("wh-west", [{"line_id": "L1", "quantity": 1}])
    ]
    assert stock(api, "MUG", "wh-west") == (mug[0], mug[1] - 2, mug[2] + 2)
    shipped = api.post(f"/orders/{order_id}/shipments/{allocated['shipments'][0]['id']}/ship", json={}).json()
    assert (shipped["status"], shipped["payment"]["status"]) == ("shipped", "captured")
    assert shipped["payment"]["captured"] == order["totals"]["grand_total"]


def test_a_cancel_of_units_landing_while_the_parcels_are_booked_has_only_the_rest_booked(api, monkeypatch):  # noqa: F811
    import core.workflow as steps

    order_id, workflow = authorized(api, ("MUG", 3), ("CAP", 1))
    workflow.reserve_stock(order_id)
    mug = stock(api, "MUG", "wh-west")
    booking = steps.book_parcel
    answers: list[Any] = []

    def booked_then_cancelled(*args: Any, **kwargs: Any) -> Any:
        made = booking(*args, **kwargs)
        if not answers:
            answers.append(cancel(api, order_id, [("L1", 1)]))
        return made

    monkeypatch.setattr(steps, "book_parcel", booked_then_cancelled)
    with pytest.raises(Exception, match="changed while this step ran"):  # TransientError: Step Functions retries it
        workflow.create_shipments(order_id)
    monkeypatch.undo()
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    assert stock(api, "MUG", "wh-west") == (mug[0], mug[1] - 1, mug[2] + 1)

    workflow.create_shipments(order_id)  # the retry

    allocated = api.get(f"/orders/{order_id}").json()
    assert allocated["status"] == "allocated"
    assert sorted((s["location_id"], s["lines"][0]["quantity"]) for s in allocated["shipments"]) == [
        ("wh-east", 1), ("wh-west", 2)
    ]  # fmt: skip
    assert stock(api, "MUG", "wh-west") == (mug[0], mug[1] - 1, mug[2] + 1)


def test_every_unit_cancelled_after_the_stock_was_reserved_cancels_the_order(api):  # noqa: F811
    order_id, workflow = authorized(api, ("MUG", 2))
    before = stock(api, "MUG", "wh-west")
    workflow.reserve_stock(order_id)

    answer = cancel(api, order_id, [("L1", 2)])

    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["payment"]["status"]) == ("cancelled", "voided")
    assert stock(api, "MUG", "wh-west") == before

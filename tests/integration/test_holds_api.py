"""POST /orders/{id}/hold and /release over the in-process API: the scope, the contract's shapes,
and a held order that cannot ship. The workflow is not running here (no event sources): each
test moves the order itself through the container's workflow where it needs one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.client import Catalog, assert_error, order_body, put_network, stocked_sku, unique, unsigned
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


@pytest.fixture(scope="module")
def sku(api: InProcessApi) -> str:
    """A product at 25.00 with 100 units at the network's west warehouse."""
    return stocked_sku(api, "25.00", on_hand=100)[1]


def place(api: InProcessApi, sku: str, **overrides: Any) -> dict[str, Any]:
    response = api.post("/orders", json=order_body((sku, 1), **overrides))
    assert response.status_code == 201, response.text
    return response.json()


def test_an_approver_holds_and_releases_an_order_and_the_history_names_them(api: InProcessApi, sku: str):
    approver = issue(api, "orders:approve", "orders:read")
    order = place(api, sku)

    held = api.post(f"/orders/{order['id']}/hold", key=approver, json={"reason": "payment_review", "note": "odd card"})

    assert held.status_code == 200, held.text
    body = held.json()
    assert body["status"] == "on_hold" and body["version"] == order["version"] + 1
    assert set(body["hold"]) == {"reason", "note", "since"}
    assert (body["hold"]["reason"], body["hold"]["note"]) == ("payment_review", "odd card")
    assert "resume_to" not in held.text and "priced_version" not in held.text

    released = api.post(f"/orders/{order['id']}/release", key=approver, json={"note": "customer confirmed"})
    assert released.status_code == 200, released.text
    assert (released.json()["status"], released.json()["hold"]) == ("pending", None)

    entries = api.get(f"/orders/{order['id']}/history").json()["items"]
    on_hold, release = entries[-2:]
    assert on_hold["type"] == "on_hold" and on_hold["actor"] == release["actor"] != "workflow"
    assert on_hold["detail"] == {"reason": "payment_review", "note": "odd card"}
    assert (release["type"], release["from_status"], release["to_status"]) == ("released", "on_hold", "pending")
    assert release["detail"] == {"reason": "payment_review", "note": "customer confirmed"}


def test_a_release_needs_no_body(api: InProcessApi, sku: str):
    order = place(api, sku)
    assert api.post(f"/orders/{order['id']}/hold", json={"reason": "other"}).status_code == 200
    response = api.post(f"/orders/{order['id']}/release")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "pending"


@pytest.mark.parametrize("path", ["hold", "release"])
def test_holding_and_releasing_need_orders_approve(api: InProcessApi, sku: str, path: str):
    writer = issue(api, "orders:write", "orders:read", "fulfillment:write")
    order = place(api, sku)
    assert_error(api.post(f"/orders/{order['id']}/{path}", key=writer, json={"reason": "other"}), 403, "forbidden")


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "reason"), ({"reason": "because"}, "reason"), ({"reason": "other", "extra": 1}, "extra"),
     ({"reason": "other", "note": "x" * 501}, "note"), ({"reason": "other", "note": "odd\u0000card"}, "note"),
     ({"reason": "other", "note": "card \u202eedo"}, "note"), ({"reason": "other", "note": "\u001b[2Jodd"}, "note")],
)  # fmt: skip
def test_a_malformed_hold_is_422(api: InProcessApi, sku: str, body: dict[str, Any], field: str):
    order = place(api, sku)
    assert_error(api.post(f"/orders/{order['id']}/hold", json=body), 422, None, field)
    assert api.get(f"/orders/{order['id']}").json()["status"] == "pending"


def test_a_note_keeps_its_lines_and_tabs(api: InProcessApi, sku: str):
    order = place(api, sku)
    note = "called twice:\n\tno answer\r\ncheck again tomorrow"
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "other", "note": note})
    assert held.status_code == 200, held.text
    assert held.json()["hold"]["note"] == note


def test_holding_twice_or_releasing_an_order_not_held_is_409(api: InProcessApi, sku: str):
    order = place(api, sku)
    assert_error(api.post(f"/orders/{order['id']}/release"), 409)
    assert api.post(f"/orders/{order['id']}/hold", json={"reason": "other"}).status_code == 200
    assert_error(api.post(f"/orders/{order['id']}/hold", json={"reason": "other"}), 409)


def test_a_hold_retried_under_its_idempotency_key_answers_the_first_answer_and_never_holds_again(
    api: InProcessApi, sku: str
):
    # The approver's hold took effect but its answer was lost; another approver released the order;
    # the first approver's client retries. Without the key honoured the retry was 409 `on hold
    # already` for a hold that worked, or, once released, held the order a second time.
    order = place(api, sku)
    path = f"/orders/{order['id']}"
    key = {"Idempotency-Key": unique("hold")}
    held = api.post(f"{path}/hold", json={"reason": "payment_review", "note": "odd card"}, headers=key)
    assert held.status_code == 200, held.text

    again = api.post(f"{path}/hold", json={"reason": "payment_review", "note": "odd card"}, headers=key)
    assert again.status_code == 200, again.text
    assert again.json() == held.json()

    released = api.post(f"{path}/release", json={"note": "card checked"})
    assert released.status_code == 200, released.text
    late = api.post(f"{path}/hold", json={"reason": "payment_review", "note": "odd card"}, headers=key)
    assert late.status_code == 200, late.text
    assert api.get(path).json()["status"] == "pending"
    assert api.get(path).json()["version"] == released.json()["version"]
    types = [entry["type"] for entry in api.get(f"{path}/history").json()["items"]]
    assert types.count("on_hold") == 1, types
    assert_error(api.post(f"{path}/hold", json={"reason": "other"}, headers=key), 409, "idempotency_key_reused")


def held_with_its_answer_lost(api: InProcessApi, sku: str) -> tuple[str, str]:
    """An order placed and held for `address_review` ("flat number missing") by the admin key under
    an Idempotency-Key, by a request that wrote the hold and died before powertools stored its
    answer: the order's path and the key."""
    from core.access import ADMIN_KEY_ID
    from core.holds import HoldRequest
    from functions.api.dependencies import container

    order = place(api, sku)
    idempotency_key = unique("hold")
    container().holds.hold(
        order["id"], HoldRequest(reason="address_review", note="flat number missing"), actor=ADMIN_KEY_ID,
        request_key=f"api:{ADMIN_KEY_ID}:{idempotency_key}",
    )  # fmt: skip
    return f"/orders/{order['id']}", idempotency_key


def test_a_hold_whose_answer_was_never_stored_answers_the_order_under_its_key_not_409(api: InProcessApi, sku: str):
    # The first request wrote the hold and died before powertools stored its answer: the retry under
    # the same key finds the hold it made in the order's history (as a release's retry does), and a
    # retry of that key with another body is 409 `idempotency_key_reused`.
    path, idempotency_key = held_with_its_answer_lost(api, sku)
    held = api.get(path).json()
    key = {"Idempotency-Key": idempotency_key}

    again = api.post(f"{path}/hold", json={"reason": "address_review", "note": "flat number missing"}, headers=key)

    assert again.status_code == 200, again.text
    assert unsigned(again.json()) == unsigned(held)
    assert_error(api.post(f"{path}/hold", json={"reason": "address_review"}), 409, "invalid_transition")
    assert_error(api.post(f"{path}/hold", json={"reason": "fraud_review"}, headers=key), 409, "idempotency_key_reused")


def test_a_hold_whose_answer_was_never_stored_sent_again_with_another_reason_under_its_key_is_409(
    api: InProcessApi, sku: str
):
    # No answer is stored under the key (the first request died after its hold was written), so the
    # idempotency layer has no body to compare: the hold's entry, which keeps the key, says the key
    # stood for another reason, and the request is refused, not answered as the hold it made.
    path, idempotency_key = held_with_its_answer_lost(api, sku)
    key = {"Idempotency-Key": idempotency_key}

    other = api.post(f"{path}/hold", json={"reason": "fraud_review", "note": "flat number missing"}, headers=key)

    assert_error(other, 409, "idempotency_key_reused")
    held = api.get(path).json()
    assert (held["status"], held["hold"]["reason"]) == ("on_hold", "address_review")


def test_a_release_whose_answer_was_never_stored_answers_the_order_under_its_key_not_409(api: InProcessApi, sku: str):
    # The first release ended the hold and died before powertools stored its answer: the retry under
    # the same key finds the release it made in the order's history, not 409 `not on hold`, and sends
    # the order to no second release.
    from core.access import ADMIN_KEY_ID
    from core.holds import ReleaseRequest
    from functions.api.dependencies import container

    order = place(api, sku)
    path = f"/orders/{order['id']}"
    assert api.post(f"{path}/hold", json={"reason": "address_review"}).status_code == 200
    idempotency_key = unique("release")
    container().holds.release(
        order["id"], ReleaseRequest(note="flat number added"), actor=ADMIN_KEY_ID,
        request_key=f"api:{ADMIN_KEY_ID}:{idempotency_key}",
    )  # fmt: skip
    released = api.get(path).json()
    key = {"Idempotency-Key": idempotency_key}

    again = api.post(f"{path}/release", json={"note": "flat number added"}, headers=key)

    assert again.status_code == 200, again.text
    assert unsigned(again.json()) == unsigned(released)
    assert [entry["type"] for entry in api.get(f"{path}/history").json()["items"]].count("released") == 1


def held_backordered(api: InProcessApi) -> tuple[str, dict[str, Any], Any]:
    """A backorderable book with 2 units at the west warehouse, an order of 5 of it backordered
    holding those 2, then held for `customer_request`: the book, the order and the hold's answer."""
    from core.errors import Backordered
    from functions.bootstrap import Config, bootstrap

    network = put_network(api)
    book = Catalog(api).product("12.00", allow_backorder=True)
    Catalog(api).stock(book, network["west"], 2)
    order = place(api, book, lines=[{"sku": book, "quantity": 5}])
    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(order["id"], attempt=0)
    with pytest.raises(Backordered):
        steps.reserve_stock(order["id"])
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "customer_request"})
    assert held.status_code == 200, held.text
    return book, order, held


def test_units_of_an_order_held_while_backordered_are_cancelled_and_its_stock_given_back(api: InProcessApi):
    # Held while backordered, a cancel with `lines` was 409 invalid_transition (README: "A cancel
    # works on a held order as on any other"): the units are cancelled on hold, what the order no
    # longer needs goes back on sale at once, and its release sends it to be sourced again.
    book, order, _ = held_backordered(api)
    path = f"/orders/{order['id']}"

    cancelled = api.post(
        f"{path}/cancel", json={"reason": "one is enough", "lines": [{"line_id": "L1", "quantity": 4}]}
    )

    assert cancelled.status_code == 200, cancelled.text
    body = cancelled.json()
    assert (body["status"], body["hold"]["reason"], body["allocations"]) == ("on_hold", "customer_request", [])
    assert [(line["quantity"], line["cancelled_quantity"]) for line in body["lines"]] == [(1, 4)]
    (stock,) = api.get(f"/inventory/{book}").json()["locations"]
    assert (stock["on_hand"], stock["reserved"]) == (2, 1)
    released = api.post(f"{path}/release")
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "authorized"


def test_an_order_held_while_backordered_is_edited_on_hold_and_released_to_be_sourced_again(api: InProcessApi):
    # API.md: PATCH answers 200 "until the first shipment ships"; held while backordered it was 409
    # invalid_transition ("release it to edit it"), though nothing of it had shipped.
    book, order, held = held_backordered(api)
    path = f"/orders/{order['id']}"

    edited = api.request("PATCH", path, json={"lines": [{"sku": book, "quantity": 1}]},
                         headers={"If-Match": str(held.json()["version"])})  # fmt: skip

    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["status"], body["hold"]["reason"], body["allocations"]) == ("on_hold", "customer_request", [])
    assert body["lines"][0]["quantity"] == 1
    assert body["totals"]["grand_total"] != held.json()["totals"]["grand_total"]
    (stock,) = api.get(f"/inventory/{book}").json()["locations"]
    assert (stock["on_hand"], stock["reserved"]) == (2, 1)  # what it no longer wants is on sale again
    released = api.post(f"{path}/release")
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "authorized"  # the outbox starts its workflow: sourced again
    assert run_to_allocated(api, order["id"])["allocations"][0]["quantity"] == 1


def test_another_channels_order_is_404(api: InProcessApi, sku: str):
    other = issue(api, "orders:approve", channel=f"pos-{uuid.uuid4().hex[:8]}")
    order = place(api, sku)
    assert_error(api.post(f"/orders/{order['id']}/hold", key=other, json={"reason": "other"}), 404)


def test_a_held_allocated_order_cannot_ship_until_released(api: InProcessApi, sku: str):
    order = place(api, sku)
    run_to_allocated(api, order["id"])
    shipment_id = api.get(f"/orders/{order['id']}").json()["shipments"][0]["id"]
    assert api.post(f"/orders/{order['id']}/hold", json={"reason": "address_review"}).status_code == 200

    assert_error(api.post(f"/orders/{order['id']}/shipments/{shipment_id}/ship"), 409)

    assert api.post(f"/orders/{order['id']}/release").json()["status"] == "allocated"
    shipped = api.post(f"/orders/{order['id']}/shipments/{shipment_id}/ship")
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["status"] == "shipped"


def test_a_held_allocated_order_gets_its_address_fixed_on_hold_and_is_sourced_again_once_released(
    api: InProcessApi, sku: str
):
    order = place(api, sku)
    run_to_allocated(api, order["id"])
    held = api.post(f"/orders/{order['id']}/hold", json={"reason": "address_review"}).json()
    address = {**order["shipping_address"], "line1": "2 Main St, Apt 4"}

    edited = api.request(
        "PATCH", f"/orders/{order['id']}", json={"shipping_address": address},
        headers={"If-Match": str(held["version"])},
    )  # fmt: skip

    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["status"], body["hold"]["reason"], body["allocations"], body["shipments"]) == (
        "on_hold", "address_review", [], [],
    )  # fmt: skip
    assert body["shipping_address"]["line1"] == "2 Main St, Apt 4"
    assert api.post(f"/orders/{order['id']}/release").json()["status"] == "authorized"
    run_to_allocated(api, order["id"])  # what the execution the outbox starts for the release does
    again = api.get(f"/orders/{order['id']}").json()
    assert again["status"] == "allocated" and len(again["shipments"]) == 1


def test_a_shipped_order_cannot_be_held(api: InProcessApi, sku: str):
    order = place(api, sku)
    run_to_allocated(api, order["id"])
    shipment_id = api.get(f"/orders/{order['id']}").json()["shipments"][0]["id"]
    assert api.post(f"/orders/{order['id']}/shipments/{shipment_id}/ship").status_code == 200
    assert_error(api.post(f"/orders/{order['id']}/hold", json={"reason": "other"}), 409)


def test_an_approver_that_may_not_read_orders_gets_a_receipt_not_the_order(api: InProcessApi, sku: str):
    approver = issue(api, "orders:approve")
    order = place(api, sku)

    held = api.post(f"/orders/{order['id']}/hold", key=approver, json={"reason": "fraud_review"})
    released = api.post(f"/orders/{order['id']}/release", key=approver, json={})

    assert held.status_code == released.status_code == 200, (held.text, released.text)
    assert held.json() == {"id": order["id"], "status": "on_hold", "version": order["version"] + 1}
    assert set(released.json()) == {"id", "status", "version"}


def test_an_order_held_to_confirm_whether_a_parcel_left_refuses_what_would_put_its_units_back_on_sale(
    api: InProcessApi, sku: str
):
    # The jeopardy scan held it: the parcel's ship died after its capture, so it may be in the
    # carrier's van. An edit, a cancel of its units and a reject are 409 parcel_not_confirmed, naming
    # the shipment, until a person releases the hold (the parcel confirmed).
    from core.models import utc_now
    from core.order_changes import modify
    from functions.api.dependencies import container

    order = place(api, sku, lines=[{"sku": sku, "quantity": 2}])
    run_to_allocated(api, order["id"])
    allocated = api.get(f"/orders/{order['id']}").json()
    shipment_id, line_id = allocated["shipments"][0]["id"], allocated["lines"][0]["line_id"]
    modify(
        container().order_repository, order["id"],
        lambda current: current.hold_unfinished_ships([shipment_id], at=utc_now(), actor="jeopardy_scan"),
    )  # fmt: skip
    held = api.get(f"/orders/{order['id']}").json()
    path = f"/orders/{order['id']}"
    address = {**order["shipping_address"], "line1": "2 Main St, Apt 4"}

    for refused in (
        api.request("PATCH", path, json={"shipping_address": address}, headers={"If-Match": str(held["version"])}),
        api.post(f"{path}/cancel", json={"reason": "one fewer", "lines": [{"line_id": line_id, "quantity": 1}]}),
        api.post(f"{path}/shipments/{shipment_id}/reject", json={"reason": "no staff"}),
    ):
        error = assert_error(refused, 409, "parcel_not_confirmed")
        assert [detail["shipment_id"] for detail in error["details"]] == [shipment_id]
    after = api.get(path).json()
    assert [after[name] for name in ("version", "status", "hold", "allocations")] == [
        held[name] for name in ("version", "status", "hold", "allocations")
    ]
    assert [(s["id"], s["status"], s["lines"]) for s in after["shipments"]] == [(shipment_id, "pending", [
        {"line_id": line_id, "quantity": 2}
    ])]  # fmt: skip

    released = api.post(f"{path}/release", json={"note": "the parcel never left"})
    assert released.json()["status"] == "allocated"
    edited = api.request(
        "PATCH", path, json={"shipping_address": address}, headers={"If-Match": str(released.json()["version"])}
    )
    assert edited.status_code == 200, edited.text


def test_a_storefront_cannot_cancel_an_order_held_to_confirm_a_parcel_but_a_person_who_may_release_it_can(
    api: InProcessApi, sku: str
):
    # A storefront's cancel is the customer's wish, not an answer to whether the parcel left: put
    # back on sale, units that may be in the carrier's van would be sold twice. It waits for a person
    # (orders:approve, who may release the hold), whose cancel is that answer (the parcel never left).
    from core.models import utc_now
    from core.order_changes import modify
    from functions.api.dependencies import container

    storefront = issue(api, "orders:write", "orders:read")
    order = place(api, sku, lines=[{"sku": sku, "quantity": 2}])
    run_to_allocated(api, order["id"])
    shipment_id = api.get(f"/orders/{order['id']}").json()["shipments"][0]["id"]
    modify(
        container().order_repository, order["id"],
        lambda current: current.hold_unfinished_ships([shipment_id], at=utc_now(), actor="jeopardy_scan"),
    )  # fmt: skip
    path = f"/orders/{order['id']}"
    held = api.get(path).json()
    history = api.get(f"{path}/history").json()["items"]

    for body in ({"reason": "changed my mind"}, {"reason": "changed my mind", "lines": [
        {"line_id": held["lines"][0]["line_id"], "quantity": 2}
    ]}):  # fmt: skip
        error = assert_error(api.post(f"{path}/cancel", key=storefront, json=body), 409, "parcel_not_confirmed")
        assert [detail["shipment_id"] for detail in error["details"]] == [shipment_id]
    # Each read presigns the label links anew (a new X-Amz-Date once a second passed): the rest is as it was.
    assert unsigned(api.get(path).json()) == unsigned(held)
    assert api.get(f"{path}/history").json()["items"] == history

    approver = issue(api, "orders:write", "orders:approve", "orders:read")
    cancelled = api.post(f"{path}/cancel", key=approver, json={"reason": "the parcel never left"})
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"


def test_a_release_retried_under_its_idempotency_key_once_a_delivery_report_ended_the_hold_it_left_answers_again(
    api: InProcessApi, sku: str
):
    # A person's release of their own hold left the system's hold for a parcel whose ship died; the
    # carrier's report then ended that hold. The person's retry under the same key was 409 `not on
    # hold` for a release that took effect: it answers the first answer again.
    from core.models import utc_now
    from core.order_changes import modify
    from functions.api.dependencies import container

    order = place(api, sku)
    run_to_allocated(api, order["id"])
    path = f"/orders/{order['id']}"
    shipment_id = api.get(path).json()["shipments"][0]["id"]
    assert api.post(f"{path}/hold", json={"reason": "address_review"}).status_code == 200
    modify(
        container().order_repository, order["id"],
        lambda current: current.park_for_unfinished_ships([shipment_id], at=utc_now(), actor="jeopardy_scan"),
    )  # fmt: skip
    key = {"Idempotency-Key": unique("release")}
    released = api.post(f"{path}/release", json={"note": "address checked"}, headers=key)
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "on_hold"
    delivered = api.post(f"{path}/shipments/{shipment_id}/deliver")
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["status"] == "delivered"

    again = api.post(f"{path}/release", json={"note": "address checked"}, headers=key)

    assert again.status_code == 200, again.text
    assert unsigned(again.json()) == unsigned(released.json())
    assert_error(api.post(f"{path}/release", json={"note": "address checked"}), 409, "invalid_transition")
    assert_error(api.post(f"{path}/release", json={"note": "another"}, headers=key), 409, "idempotency_key_reused")
    assert api.get(path).json()["version"] == delivered.json()["version"]


class ParkContext:
    function_name = "ParkOrderFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ParkOrderFunction"
    aws_request_id = "park-request"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


DENIED = (
    "An error occurred (AccessDeniedException) when calling the UpdateItem operation: User: "
    "arn:aws:sts::210987654321:assumed-role/oms-ReserveStockRole-1AB2C3/oms-ReserveStock is not authorized to "
    "perform: dynamodb:UpdateItem on resource: arn:aws:dynamodb:us-east-1:210987654321:table/oms-Inventory-9XYZ"
)


@pytest.mark.parametrize(
    ("error", "message", "note"),
    [
        # Another's error (botocore's here; Lambda's, a bug's): its message may name the account, roles
        # and tables, which are no storefront's to read: named by its type only.
        ("ClientError", DENIED, "order workflow failed after retries: ClientError"),
        ("Lambda.TooManyRequestsException", "Rate exceeded", "order workflow failed after retries: "
         "Lambda.TooManyRequestsException"),
        # The OMS's own, whose message it writes for the person who releases the order: kept.
        ("ReservationsFull", "the stock item of S at L holds as many open reservations as it takes",
         "order workflow failed after retries: ReservationsFull: the stock item of S at L holds as many open "
         "reservations as it takes"),
    ],
)  # fmt: skip
def test_a_parked_orders_hold_shows_a_storefront_no_infrastructure_message(
    api: InProcessApi, sku: str, error: str, message: str, note: str
):
    import json

    from functions.workflow.park_order import lambda_handler

    storefront = issue(api, "orders:write", "orders:read", channel="web")
    order = place(api, sku)
    cause = json.dumps({"errorType": error, "errorMessage": message, "trace": ["File ..."]})

    lambda_handler({"order_id": order["id"], "error": error, "cause": cause, "execution": "run-1"}, ParkContext())

    shown = api.get(f"/orders/{order['id']}", key=storefront)
    assert shown.status_code == 200, shown.text
    assert (shown.json()["status"], shown.json()["hold"]["note"]) == ("on_hold", note)
    history = api.get(f"/orders/{order['id']}/history", key=storefront)
    parked = history.json()["items"][-1]
    assert (parked["type"], parked["detail"]["error"]) == ("on_hold", error)
    if error != "ReservationsFull":
        assert message not in shown.text + history.text and "210987654321" not in shown.text + history.text


def test_an_allocated_order_edited_past_the_review_threshold_is_authorized_for_it_first_then_held_unsourced(
    api: InProcessApi, sku: str, monkeypatch: pytest.MonkeyPatch
):
    # Unlike a new order, held before its payment is authorized, an authorized order's edit asks the
    # gateway for the grown total first (API.md: "a grown total is authorized again first") and is
    # held in the same write that records it, before it is sourced again. A card that will not
    # cover the grown total is told at the edit (409 payment_declined), the order left as it was,
    # still to ship: held first, the edit would be stored at a total no authorization covers, and a
    # decline at its release would leave an order that can neither ship nor go back to what it was.
    from plugins import test_payments
    from tests.integration.test_edit_refusals_api import CardLimit
    from tests.integration.test_payment_plugin_failures_api import registered

    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:100.00")
    on_the_card = set(test_payments._held)
    order = run_to_allocated(api, place(api, sku)["id"])
    path = f"/orders/{order['id']}"
    six = {"lines": [{"sku": sku, "quantity": 6}]}

    with registered(CardLimit("60.00")):
        declined = api.request("PATCH", path, json=six, headers={"If-Match": str(order["version"])})

    assert_error(declined, 409, "payment_declined")
    shown = api.get(path).json()
    kept = ("status", "hold", "lines", "totals", "payment", "allocations")
    assert {k: shown[k] for k in kept} == {k: order[k] for k in kept}
    assert unsigned(shown)["shipments"] == unsigned(order)["shipments"]

    edited = api.request("PATCH", path, json=six, headers={"If-Match": str(shown["version"])})

    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["status"], body["hold"]["reason"], body["allocations"], body["shipments"]) == (
        "on_hold", "fraud_review", [], []
    )  # fmt: skip
    payment = body["payment"]
    assert (payment["authorized"], payment["captured"]["amount"]) == (body["totals"]["grand_total"], "0.00")
    # The reviewer refuses it: its cancel leaves nothing held on the card, the grown authorization
    # included (the one it replaced was voided after the edit).
    cancelled = api.post(f"{path}/cancel", json={"reason": "fraud review refused"})
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["payment"]["status"]) == ("cancelled", "voided")
    made = {reference: held for reference, held in test_payments._held.items() if reference not in on_the_card}
    # (so was the declined attempt's key: the card limit answered it, not the test gateway, which
    # approved it when the second edit settled that attempt, asking again under its key, then voided it)
    assert body["totals"]["grand_total"]["amount"] in {str(held.amount.amount) for held in made.values()}
    assert all(held.voided and not held.captured.amount for held in made.values())


def test_an_edit_past_the_review_threshold_of_an_order_a_person_holds_leaves_it_held_for_that_review(
    api: InProcessApi, sku: str, monkeypatch: pytest.MonkeyPatch
):
    # A customer service agent holds a small order to check its address; the customer asks for five
    # more units on the phone, taking it past OMS_REVIEW_THRESHOLD. The edit skipped the review rules
    # because the order was held already, so the hold still said `address_review` and the agent's
    # release sent an order the fraud rule asks to review to be authorized and shipped unseen (placed
    # that large, or edited that large while not held, it waits on hold for `fraud_review`).
    monkeypatch.setenv("OMS_REVIEW_THRESHOLD", "USD:100.00")  # the rule reads it at each call
    order = place(api, sku)
    path = f"/orders/{order['id']}"
    held = api.post(f"{path}/hold", json={"reason": "address_review", "note": "flat number missing"})
    assert held.status_code == 200, held.text

    edited = api.request(
        "PATCH", path, json={"lines": [{"sku": sku, "quantity": 6}]}, headers={"If-Match": str(held.json()["version"])}
    )

    assert edited.status_code == 200, edited.text
    body = edited.json()
    assert (body["status"], body["hold"]["reason"]) == ("on_hold", "fraud_review"), body["hold"]
    assert "100.00" in body["hold"]["note"] and body["hold"]["since"] == held.json()["hold"]["since"]
    entry = api.get(f"{path}/history").json()["items"][-1]
    assert (entry["type"], entry["actor"], entry["detail"]["reason"]) == ("on_hold", "review_rules", "fraud_review")
    assert (entry["from_status"], entry["to_status"]) == (None, None)
    queue = api.get("/orders", params={"status": "on_hold", "limit": 100}).json()["items"]
    assert [o["hold"]["reason"] for o in queue if o["id"] == order["id"]] == ["fraud_review"]
    released = api.post(f"{path}/release", json={"note": "large order checked"})
    assert (released.json()["status"], released.json()["hold"]) == ("pending", None)


def test_a_hold_naming_a_version_changed_since_is_409_and_holds_nothing(api: InProcessApi, sku: str):
    # An approver holds the order they read; meanwhile its address was fixed. The hold went through
    # (If-Match ignored): they held what they never saw. The version they saw is now refused.
    order = place(api, sku)
    path = f"/orders/{order['id']}"
    edited = api.request("PATCH", path, json={"shipping_address": {**order["shipping_address"], "line2": "Flat 4"}},
                         headers={"If-Match": str(order["version"])})  # fmt: skip
    assert edited.status_code == 200, edited.text
    history = api.get(f"{path}/history").json()["items"]

    stale = api.post(f"{path}/hold", json={"reason": "address_review"}, headers={"If-Match": str(order["version"])})
    keyed = api.post(f"{path}/hold", json={"reason": "address_review"},
                     headers={"If-Match": str(order["version"]), "Idempotency-Key": unique("hold")})  # fmt: skip

    error = assert_error(stale, 409, "version_conflict", "If-Match")
    assert error["details"] == [{"field": "If-Match", "message": f"current version is {edited.json()['version']}"}]
    assert_error(keyed, 409, "version_conflict", "If-Match")
    assert unsigned(api.get(path).json()) == unsigned(edited.json())
    assert api.get(f"{path}/history").json()["items"] == history
    current = api.post(
        f"{path}/hold", json={"reason": "address_review"}, headers={"If-Match": f'W/"{edited.json()["version"]}"'}
    )
    assert (current.status_code, current.json()["status"]) == (200, "on_hold"), current.text


def test_a_release_naming_a_version_changed_since_is_409_and_the_order_stays_held(api: InProcessApi, sku: str):
    order = place(api, sku)
    path = f"/orders/{order['id']}"
    held = api.post(f"{path}/hold", json={"reason": "payment_review", "note": "odd card"}).json()
    noted = api.request("PATCH", path, json={"shipping_address": {**order["shipping_address"], "line2": "Flat 4"}},
                        headers={"If-Match": str(held["version"])})  # fmt: skip
    assert noted.status_code == 200, noted.text

    stale = api.post(f"{path}/release", json={"note": "card checked"}, headers={"If-Match": str(held["version"])})
    keyed = api.post(f"{path}/release", json={"note": "card checked"},
                     headers={"If-Match": str(held["version"]), "Idempotency-Key": unique("release")})  # fmt: skip

    assert_error(stale, 409, "version_conflict", "If-Match")
    assert_error(keyed, 409, "version_conflict", "If-Match")
    assert unsigned(api.get(path).json()) == unsigned(noted.json())
    assert "released" not in [entry["type"] for entry in api.get(f"{path}/history").json()["items"]]
    current = api.post(
        f"{path}/release", json={"note": "card checked"}, headers={"If-Match": str(noted.json()["version"])}
    )
    assert (current.status_code, current.json()["status"]) == (200, "pending"), current.text


def test_a_keyed_hold_whose_answer_was_never_stored_answers_the_order_whatever_if_match_it_was_read_at(
    api: InProcessApi, sku: str
):
    # Its retry carries the If-Match the first request sent: the version its own hold moved on.
    path, idempotency_key = held_with_its_answer_lost(api, sku)
    held = api.get(path).json()
    headers = {"Idempotency-Key": idempotency_key, "If-Match": str(held["version"] - 1)}

    again = api.post(f"{path}/hold", json={"reason": "address_review", "note": "flat number missing"}, headers=headers)

    assert again.status_code == 200, again.text
    assert unsigned(again.json()) == unsigned(held)
    assert_error(
        api.post(f"{path}/hold", json={"reason": "address_review"}, headers={"If-Match": "1"}), 409, "version_conflict"
    )

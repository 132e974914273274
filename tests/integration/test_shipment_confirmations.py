"""POST /shipments/confirmations over the in-process API: scopes and channel keys as on the single
routes, one result per item in the contract's error shape, the Idempotency-Key, and the refusals
that concern the whole batch. The workflow is not running here: each test allocates its orders
through the container's workflow steps."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.e2e.client import assert_error, order_body, stocked_sku, unique, unsigned
from tests.integration.in_process import InProcessApi, allocated, in_process_api_with_labels, issue, run_to_allocated

PATH = "/shipments/confirmations"


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


@pytest.fixture(scope="module")
def sku(api: InProcessApi) -> str:
    """A product at 25.00 with 1000 units at the network's west warehouse."""
    return stocked_sku(api, "25.00", on_hand=1000)[1]


def item(order_id: str, shipment_id: str, action: str, **more: Any) -> dict[str, Any]:
    return {"order_id": order_id, "shipment_id": shipment_id, "action": action, **more}


def test_a_warehouse_key_ships_and_delivers_a_batch_and_reads_one_result_per_item(api, sku):
    wms = issue(api, "fulfillment:write")
    (first, one), (second, two) = allocated(api, sku), allocated(api, sku)

    response = api.post(
        PATH,
        key=wms,
        json={"items": [item(first, one, "ship", tracking_number="1Z999AA1"), item(second, two, "ship"),
                        item(first, one, "deliver")]},
    )  # fmt: skip

    assert response.status_code == 200, response.text
    results = response.json()["items"]
    assert [(r["order_id"], r["shipment_id"], r["action"], r["status"], r["order_status"]) for r in results] == [
        (first, one, "ship", "shipped", "shipped"),
        (second, two, "ship", "shipped", "shipped"),
        (first, one, "deliver", "delivered", "delivered"),
    ]
    assert all(r["error"] is None and r["retry"] is False for r in results)
    # What the batch answers a key without orders:read is what a receipt shows: no order body.
    assert "customer" not in response.text and "shipping_address" not in response.text
    shipped = api.get(f"/orders/{first}").json()
    assert shipped["version"] == results[2]["version"]
    assert shipped["shipments"][0]["tracking_number"] == "1Z999AA1"
    assert shipped["payment"]["captured"] == shipped["totals"]["grand_total"]


def test_a_refused_item_answers_in_the_contracts_error_shape_beside_the_others(api, sku):
    (order_id, shipment_id), (pending, pending_shipment) = allocated(api, sku), allocated(api, sku)
    before = unsigned(api.get(f"/orders/{pending}").json())

    response = api.post(
        PATH,
        json={"items": [item("ord_aaaaaaaaaaaaaaaaaaaaaaaa", "shp_aaaaaaaaaaaaaaaaaaaaaaaa", "ship"),
                        item(pending, pending_shipment, "deliver"), item(order_id, shipment_id, "ship")]},
    )  # fmt: skip

    assert response.status_code == 200, response.text
    unknown, wrong_state, fine = response.json()["items"]
    assert unknown["error"]["code"] == "not_found" and unknown["status"] is None
    assert wrong_state["error"]["code"] == "invalid_transition"
    for refused in (unknown, wrong_state):
        assert set(refused["error"]) == {"code", "message", "details"}
        assert refused["retry"] is False
    assert fine["error"] is None and fine["status"] == "shipped"
    assert unsigned(api.get(f"/orders/{pending}").json()) == before


def test_a_channel_key_confirms_its_channels_shipments_only(api, sku):
    web = issue(api, "fulfillment:write", channel="web")
    other = issue(api, "fulfillment:write", channel=unique("shop"))
    order_id, shipment_id = allocated(api, sku)  # channel "web"

    refused = api.post(PATH, key=other, json={"items": [item(order_id, shipment_id, "ship")]})
    assert refused.status_code == 200, refused.text
    assert refused.json()["items"][0]["error"]["code"] == "not_found"
    assert api.get(f"/orders/{order_id}").json()["status"] == "allocated"

    shipped = api.post(PATH, key=web, json={"items": [item(order_id, shipment_id, "ship")]})
    assert shipped.json()["items"][0]["status"] == "shipped"


def test_a_key_without_fulfillment_write_is_403_and_changes_nothing(api, sku):
    reader = issue(api, "orders:read", "orders:write")
    order_id, shipment_id = allocated(api, sku)

    assert_error(api.post(PATH, key=reader, json={"items": [item(order_id, shipment_id, "ship")]}), 403, "forbidden")
    assert_error(api.post(PATH, key=None, json={"items": [item(order_id, shipment_id, "ship")]}), 401)
    assert api.get(f"/orders/{order_id}").json()["status"] == "allocated"


def test_a_batch_retried_with_its_idempotency_key_answers_the_first_answer(api, sku):
    order_id, shipment_id = allocated(api, sku)
    body = {"items": [item(order_id, shipment_id, "ship"), item(order_id, shipment_id, "deliver")]}
    headers = {"Idempotency-Key": unique("batch")}

    first = api.post(PATH, json=body, headers=headers)
    history = api.get(f"/orders/{order_id}/history").json()["items"]
    again = api.post(PATH, json=body, headers=headers)

    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert api.get(f"/orders/{order_id}/history").json()["items"] == history
    other_body = {"items": [item(order_id, shipment_id, "deliver")]}
    assert_error(api.post(PATH, json=other_body, headers=headers), 409, "idempotency_key_reused")


def test_a_batch_with_an_item_worth_retrying_is_not_kept_under_its_key(api, sku, monkeypatch):
    """A capture the gateway could not make now is answered with retry true and nothing is kept:
    the same batch with the same key runs again once the gateway is back."""
    from core.errors import PaymentGatewayUnavailable
    from functions.api.dependencies import container

    order_id, shipment_id = allocated(api, sku)
    actions = container().actions
    real_ship = actions.ship

    def unavailable(*args: Any, **kwargs: Any):
        raise PaymentGatewayUnavailable("the payment gateway did not complete the capture after 3 attempts")

    body = {"items": [item(order_id, shipment_id, "ship")]}
    headers = {"Idempotency-Key": unique("batch")}
    monkeypatch.setattr(actions, "ship", unavailable)
    down = api.post(PATH, json=body, headers=headers).json()["items"][0]
    assert down["error"]["code"] == "payment_gateway_unavailable" and down["retry"] is True

    monkeypatch.setattr(actions, "ship", real_ship)
    back = api.post(PATH, json=body, headers=headers).json()["items"][0]
    assert back["error"] is None and back["status"] == "shipped"


def test_dynamodb_busy_past_its_retries_fails_the_whole_batch_503_and_the_batch_sent_again_ships(api, sku):
    """README's "What fails the batch" said such a batch is answered 500: it is 503
    `temporarily_unavailable` with Retry-After, as on the single routes, and sending it again works."""
    from tests.integration.test_dynamodb_busy import THROTTLED, failing_once

    order_id, shipment_id = allocated(api, sku)
    body = {"items": [item(order_id, shipment_id, "ship")]}
    restore = failing_once("GetItem", THROTTLED)
    try:
        busy = api.post(PATH, json=body)
    finally:
        restore()

    assert_error(busy, 503, "temporarily_unavailable")
    assert busy.headers["Retry-After"] == "1"
    assert api.get(f"/orders/{order_id}").json()["status"] == "allocated"
    (again,) = api.post(PATH, json=body).json()["items"]
    assert again["error"] is None and again["status"] == "shipped"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": [item("ord_a", "shp_a", "ship")] * 101}, "items"),
        ({"items": item("ord_a", "shp_a", "ship")}, "items"),
        ({"items": [item("ord_a", "shp_a", "ship")], "captured": "10.00"}, "captured"),
    ],
)
def test_a_body_that_is_not_a_list_of_1_to_100_items_is_422_whole(api, body, field):
    error = assert_error(api.post(PATH, json=body), 422, "validation_error")
    assert any(detail["field"].startswith(field) for detail in error["details"]), error


def test_a_malformed_item_is_refused_at_its_position_and_the_rest_of_the_wave_ships(api, sku):
    """One row a WMS got wrong (an action the route does not take, a tracking number too short, one
    with a delivery, a field it does not take) blocks none of the wave: it alone is answered
    validation_error naming its position, and the same batch sent again under its key answers the
    same."""
    (first, one), (second, two) = allocated(api, sku), allocated(api, sku)
    body = {"items": [
        item(first, one, "ship", tracking_number="1Z999AA1"), item(second, two, "cancel"),
        item(second, two, "ship", tracking_number="1Z"), item(second, two, "deliver", tracking_number="1Z999AA2"),
        item(second, two, "ship", captured="10.00"), item(second, two, "ship"),
    ]}  # fmt: skip
    headers = {"Idempotency-Key": unique("wave")}

    response = api.post(PATH, json=body, headers=headers)

    assert response.status_code == 200, response.text
    results = response.json()["items"]
    assert [(r["order_id"], r["shipment_id"], r["action"], r["status"]) for r in results] == [
        (first, one, "ship", "shipped"), (second, two, None, None), (second, two, "ship", None),
        (second, two, "deliver", None), (second, two, "ship", None), (second, two, "ship", "shipped"),
    ]  # fmt: skip
    refused = results[1:5]
    assert all(r["error"]["code"] == "validation_error" and r["retry"] is False for r in refused)
    assert [[d["field"] for d in r["error"]["details"]] for r in refused] == [
        ["items[1].action"],
        ["items[2].tracking_number"],
        ["items[3].tracking_number"],
        ["items[4].captured"],
    ]
    assert api.get(f"/orders/{second}").json()["shipments"][0]["tracking_number"] != "1Z"
    assert api.post(PATH, json=body, headers=headers).json() == response.json()
    body["items"][1]["action"] = "ready"
    assert_error(api.post(PATH, json=body, headers=headers), 409, "idempotency_key_reused")


def test_the_route_is_in_the_api_description(api):
    document = api.get("/openapi.json").json()
    operation = document["paths"][PATH]["post"]
    assert "200" in operation["responses"] and "403" in operation["responses"]


def test_refused_items_are_logged_once_with_the_callers_ids_escaped(api, caplog):
    forged = "ord_x\r\nINFO forged\x1b[0m"
    caplog.set_level(logging.INFO)

    response = api.post(PATH, json={"items": [item(forged, "shp_y", "deliver")]})

    assert response.json()["items"][0]["error"]["code"] == "not_found"
    (refused,) = [r for r in caplog.records if r.getMessage() == "shipment confirmations refused"]
    assert refused.refused_items == ["ord_x\\r\\nINFO forged\\x1b[0m/shp_y deliver: not_found"]


def test_a_batch_replayed_or_confirming_again_is_logged_as_a_read_of_each_order_it_answers(api, sku):
    # A batch sent again under its Idempotency-Key answers each order's status and version again and
    # writes nothing: the key read them, as a replayed ship on the single route is logged, and the log
    # said nothing. The first batch wrote the orders' history entries (naming the key): not a read too.
    from tests.integration.test_access_log_api import consume_queued_reads, key

    wms_id, wms = key(api, "fulfillment:write")
    (first, one), (second, two) = allocated(api, sku), allocated(api, sku)
    body = {"items": [item(first, one, "ship"), item(second, two, "ship"), item(first, one, "deliver"),
                      item("ord_" + "z" * 24, two, "ship")]}  # fmt: skip
    headers = {"Idempotency-Key": unique("batch")}
    consume_queued_reads()

    answer = api.post(PATH, json=body, key=wms, headers=headers)
    assert answer.status_code == 200, answer.text
    assert [r["error"] is None for r in answer.json()["items"]] == [True, True, True, False]
    assert consume_queued_reads() == []  # changes: their history entries name the key
    again = api.post(PATH, json=body, key=wms, headers=headers)
    assert again.json() == answer.json()
    reads = consume_queued_reads()
    assert [(q["order_id"], q["actor"], q["action"], q["detail"]) for q in reads] == [
        (first, wms_id, "confirm", {"shipment_ids": [one]}),  # once, though two of its items answered
        (second, wms_id, "confirm", {"shipment_ids": [two]}),
    ]  # the unknown order's refusal read nothing

    # Without the key, a shipment delivered already is confirmed again without a write: a read too.
    unkeyed = api.post(PATH, json={"items": [item(first, one, "deliver")]}, key=wms)
    assert unkeyed.json()["items"][0]["status"] == "delivered", unkeyed.text
    assert [(q["order_id"], q["action"]) for q in consume_queued_reads()] == [(first, "confirm")]
    items = api.get(f"/orders/{first}/access-log", key=key(api, "audit:read")[1]).json()["items"]
    by_key = [i for i in items if i["actor"] == wms_id]
    assert [i["action"] for i in by_key][-2:] == ["confirm", "confirm"]
    assert [(i["detail"] or {}).get("change") for i in by_key[:-2]] == [True] * (len(by_key) - 2) != []
    consume_queued_reads()


def test_a_parcel_shipped_without_its_number_takes_the_one_learnt_later_once_on_the_route_and_in_a_batch(api, sku):
    """A warehouse confirms the hand-over first and reads the carrier's number off the manifest
    later: the later ship naming it sets it (once, in the history); another number after that is
    409 `tracking_number_conflict`, as on a parcel shipped with its number."""
    (single, one), (batched, two) = allocated(api, sku), allocated(api, sku)
    booked = api.get(f"/orders/{single}").json()["shipments"][0]["tracking_number"]
    for order_id, shipment_id in ((single, one), (batched, two)):
        assert api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={}).status_code == 200

    learnt = api.post(f"/orders/{single}/shipments/{one}/ship", json={"tracking_number": "1ZLATER0001"})
    wave = api.post(PATH, json={"items": [item(batched, two, "ship", tracking_number="1ZLATER0002"),
                                          item(batched, two, "ship", tracking_number="1ZLATER0002"),
                                          item(batched, two, "ship", tracking_number="1ZTYPO00002")]})  # fmt: skip

    assert learnt.status_code == 200, learnt.text
    assert learnt.json()["shipments"][0]["tracking_number"] == "1ZLATER0001"
    assert learnt.json()["payment"]["captured"] == learnt.json()["totals"]["grand_total"]  # captured once
    results = wave.json()["items"]
    assert [r["error"]["code"] if r["error"] else None for r in results] == [None, None, "tracking_number_conflict"]
    assert results[2]["error"]["details"][0]["tracking_number"] == "1ZLATER0002"
    assert api.get(f"/orders/{batched}").json()["shipments"][0]["tracking_number"] == "1ZLATER0002"
    set_entries = [e for e in api.get(f"/orders/{single}/history").json()["items"]
                   if e["type"] == "shipment_tracking_number_set"]  # fmt: skip
    assert [e["detail"] for e in set_entries] == [
        {"shipment_id": one, "tracking_number": "1ZLATER0001", "replaced": booked}
    ]
    again = api.post(f"/orders/{single}/shipments/{one}/ship", json={"tracking_number": "1ZLATER0001"})
    assert (again.status_code, again.json()["version"]) == (200, learnt.json()["version"])
    corrected = api.post(f"/orders/{single}/shipments/{one}/ship", json={"tracking_number": "1ZTYPO00001"})
    assert corrected.status_code == 409
    assert corrected.json()["error"]["code"] == "tracking_number_conflict"


def test_a_parcel_shipped_naming_its_number_keeps_it(api, sku):
    order_id, shipment_id = allocated(api, sku)
    booked = api.get(f"/orders/{order_id}").json()["shipments"][0]["tracking_number"]
    path = f"/orders/{order_id}/shipments/{shipment_id}/ship"
    assert api.post(path, json={"tracking_number": booked}).status_code == 200  # the label's, confirmed

    corrected = api.post(path, json={"tracking_number": "1ZTYPO00003"})

    assert corrected.status_code == 409
    assert corrected.json()["error"]["details"][0]["tracking_number"] == booked


def test_a_number_sent_again_in_another_case_is_the_same_number_and_changes_nothing(api, sku):
    """Carriers' numbers are case-insensitive: a warehouse that sends the number it shipped with
    again in another case ("1z999aa…" for "1Z999AA…") repeats itself; the number stays as first
    stored, no `shipment_tracking_number_set` entry is made (no `shipment.shipped` again) and no
    409 answers it. The label's number named in another case confirms it, as named in its own."""
    (learnt, one), (labelled, two), (batched, three) = allocated(api, sku), allocated(api, sku), allocated(api, sku)
    booked = api.get(f"/orders/{labelled}").json()["shipments"][0]["tracking_number"]
    for order_id, shipment_id in ((learnt, one), (labelled, two), (batched, three)):
        assert api.post(f"/orders/{order_id}/shipments/{shipment_id}/ship", json={}).status_code == 200
    first = api.post(f"/orders/{learnt}/shipments/{one}/ship", json={"tracking_number": "1Z999AA10123456784"})
    assert first.status_code == 200, first.text

    again = api.post(f"/orders/{learnt}/shipments/{one}/ship", json={"tracking_number": "1z999aa10123456784"})
    label = api.post(f"/orders/{labelled}/shipments/{two}/ship", json={"tracking_number": booked.lower()})
    numbers = ("1Z999AA10123456785", "1z999Aa10123456785")
    ships = [item(batched, three, "ship", tracking_number=number) for number in numbers]
    wave = api.post(PATH, json={"items": ships})

    assert (again.status_code, again.json()["version"]) == (200, first.json()["version"]), again.text
    assert again.json()["shipments"][0]["tracking_number"] == "1Z999AA10123456784"
    assert label.status_code == 200, label.text
    assert label.json()["shipments"][0]["tracking_number"] == booked
    assert [r["error"] for r in wave.json()["items"]] == [None, None]
    assert api.get(f"/orders/{batched}").json()["shipments"][0]["tracking_number"] == "1Z999AA10123456785"
    for order_id, sets in ((learnt, 1), (labelled, 0), (batched, 1)):
        types = [e["type"] for e in api.get(f"/orders/{order_id}/history").json()["items"]]
        assert types.count("shipment_tracking_number_set") == sets, (order_id, types)
    later = api.post(f"/orders/{labelled}/shipments/{two}/ship", json={"tracking_number": "1ZLATER0004"})
    assert_error(later, 409, "tracking_number_conflict")  # the label's number, named: confirmed


def test_usps_numbers_written_in_fours_are_taken_on_the_route_and_in_a_batch(api, sku):
    """A 22-digit USPS number written in groups of 4 holds stretches of 13 to 19 digits of whole
    groups that have a card's prefix and pass Luhn (these two do; 6 % of such numbers did): a
    number that goes on in groups of 4 is one longer number, not a card (core.card_numbers)."""
    (single, one), (batched, two) = allocated(api, sku), allocated(api, sku)
    numbers = ["9400 1029 5826 8770 3876 31", "9400 1679 3814 4494 5443 74"]

    shipped = api.post(f"/orders/{single}/shipments/{one}/ship", json={"tracking_number": numbers[0]})
    wave = api.post(PATH, json={"items": [item(batched, two, "ship", tracking_number=numbers[1])]})

    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["shipments"][0]["tracking_number"] == numbers[0]
    assert wave.status_code == 200, wave.text
    assert [r["error"] for r in wave.json()["items"]] == [None]
    assert api.get(f"/orders/{batched}").json()["shipments"][0]["tracking_number"] == numbers[1]
    card = api.post(f"/orders/{single}/shipments/{one}/ship", json={"tracking_number": "9400 4111111111111111"})
    assert_error(card, 422, "card_data_rejected", "tracking_number")


def test_a_card_beside_groups_of_4_that_are_no_carriers_number_is_refused(api, sku):
    """A card in 4s with a group of 4 beside it and more in its run is no 20- or 22-digit number in
    4s (core.card_numbers): refused on the route and in a batch (the whole body), where any group of 4 beside the
    card let it through."""
    (single, one), (batched, two) = allocated(api, sku), allocated(api, sku)

    shipped = api.post(
        f"/orders/{single}/shipments/{one}/ship", json={"tracking_number": "1234 4111 1111 1111 1111 5678"}
    )
    wave = api.post(PATH, json={"items": [item(batched, two, "ship", tracking_number="4111 1111 1111 1111 1225 737")]})

    assert_error(shipped, 422, "card_data_rejected", "tracking_number")
    assert_error(wave, 422, "card_data_rejected", "items[0].tracking_number")
    for order in (single, batched):
        shipment = api.get(f"/orders/{order}").json()["shipments"][0]
        assert shipment["status"] != "shipped"
        assert "4111" not in (shipment["tracking_number"] or "")


def stated(moment: datetime, hours: int = 2) -> str:
    """`moment` as a WMS in another zone writes it (RFC 3339 with its offset)."""
    return moment.astimezone(timezone(timedelta(hours=hours))).isoformat()


def shown_time(text: str) -> datetime:
    assert text.endswith("Z"), text  # shown in UTC, as every time the API answers
    return datetime.fromisoformat(text)


def west_stock(api: InProcessApi, sku: str, west: str) -> dict[str, Any]:
    return next(s for s in api.get(f"/inventory/{sku}").json()["locations"] if s["location_id"] == west)


def two_units_allocated(api: InProcessApi, on_hand: int = 5) -> tuple[str, str, str, str]:
    """A new sku with `on_hand` units at the west warehouse and an order of 2 of them allocated
    there: (sku, west's id, order id, shipment id)."""
    network, sku = stocked_sku(api, "25.00", on_hand=on_hand)
    placed = api.post("/orders", json=order_body((sku, 2)))
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    return sku, network["west"], order["id"], order["shipments"][0]["id"]


def test_a_shelf_counted_after_its_parcel_left_keeps_its_count_when_the_wave_says_when_it_left(api):
    """h758's walk: 5 on the shelf, 2 of them allocated, the parcel leaves, the shelf is counted (3:
    reserved 2, available 1), then the wave confirms the ship with the manifest's hand-over time.
    The count stands (on_hand 3, not 1), and the shipment, its history entry and its event say
    when it left, in UTC."""
    sku, west, order_id, shipment_id = two_units_allocated(api)
    left = datetime.now(UTC)
    counted = api.put(f"/inventory/{sku}/{west}", json={"on_hand": 3})
    assert counted.status_code == 200, counted.text
    assert (west_stock(api, sku, west)["reserved"], west_stock(api, sku, west)["available"]) == (2, 1)

    wave = api.post(PATH, json={"items": [item(order_id, shipment_id, "ship", shipped_at=stated(left))]})

    assert [(r["status"], r["error"]) for r in wave.json()["items"]] == [("shipped", None)], wave.text
    stock = west_stock(api, sku, west)
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (3, 0, 3)
    order = api.get(f"/orders/{order_id}").json()
    assert shown_time(order["shipments"][0]["shipped_at"]) == left
    assert order["payment"]["captured"] == order["totals"]["grand_total"]  # captured at confirmation
    (entry,) = [e for e in api.get(f"/orders/{order_id}/history").json()["items"] if e["type"] == "shipment_shipped"]
    assert shown_time(entry["detail"]["shipped_at"]) == left
    assert shown_time(entry["at"]) > left  # recorded when the wave confirmed it


def test_a_shelf_counted_before_the_stated_hand_over_still_gives_up_the_parcels_units(api):
    sku, west, order_id, shipment_id = two_units_allocated(api)
    assert api.put(f"/inventory/{sku}/{west}", json={"on_hand": 5}).status_code == 200
    left = datetime.now(UTC)  # after the count: the count had the parcel on the shelf

    wave = api.post(PATH, json={"items": [item(order_id, shipment_id, "ship", shipped_at=stated(left, -5))]})

    assert [(r["status"], r["error"]) for r in wave.json()["items"]] == [("shipped", None)], wave.text
    stock = west_stock(api, sku, west)
    assert (stock["on_hand"], stock["reserved"], stock["available"]) == (3, 0, 3)


def test_a_ship_item_with_a_hand_over_time_it_cannot_have_is_refused_alone_and_the_wave_ships(api, sku):
    """shipped_at with another action, without an offset, as Unix seconds, an hour ahead, or before
    the OMS made the parcel: each item alone is validation_error naming its field, retry false,
    its parcel untouched; the last item ships."""
    (first, one), (second, two) = allocated(api, sku), allocated(api, sku)
    now = datetime.now(UTC)
    history = api.get(f"/orders/{first}/history").json()["items"]
    made = shown_time(next(e["at"] for e in history if e["type"] == "allocated"))  # the parcel made
    body = {"items": [
        item(first, one, "deliver", shipped_at=stated(now)),
        item(first, one, "ship", shipped_at=now.replace(tzinfo=None).isoformat()),
        item(first, one, "ship", shipped_at=str(int(now.timestamp()))),
        item(first, one, "ship", shipped_at=stated(now + timedelta(hours=1))),
        item(first, one, "ship", shipped_at=stated(made - timedelta(seconds=1))),
        item(second, two, "ship", shipped_at=stated(now)),
    ]}  # fmt: skip
    before = unsigned(api.get(f"/orders/{first}").json())

    results = api.post(PATH, json=body).json()["items"]

    refused = results[:5]
    assert all(r["error"]["code"] == "validation_error" and r["retry"] is False for r in refused), refused
    assert [[d["field"] for d in r["error"]["details"]] for r in refused] == [
        [f"items[{position}].shipped_at"] for position in range(5)
    ]
    assert [r["error"]["details"][0]["message"] for r in refused[:2]] == [
        "shipped_at goes with action ship only",
        "Input should have timezone info",
    ]  # what the WMS's developer reads: the validator's words, without pydantic's "Value error, "
    assert [(r["order_id"], r["shipment_id"], r["status"]) for r in refused] == [(first, one, None)] * 5
    assert unsigned(api.get(f"/orders/{first}").json()) == before
    assert (results[5]["status"], results[5]["error"]) == ("shipped", None)
    assert shown_time(api.get(f"/orders/{second}").json()["shipments"][0]["shipped_at"]) == now


def test_a_hand_over_time_a_few_seconds_ahead_is_taken_for_when_the_oms_heard(api, sku):
    """A WMS clock running a little fast (within a minute) names a moment yet to come: the parcel
    left by the time the OMS heard of it, so that moment is recorded, never one in the future."""
    order_id, shipment_id = allocated(api, sku)

    ahead = stated(datetime.now(UTC) + timedelta(seconds=30))

    wave = api.post(PATH, json={"items": [item(order_id, shipment_id, "ship", shipped_at=ahead)]})
    after = datetime.now(UTC)

    assert [(r["status"], r["error"]) for r in wave.json()["items"]] == [("shipped", None)], wave.text
    assert shown_time(api.get(f"/orders/{order_id}").json()["shipments"][0]["shipped_at"]) <= after


def test_a_ship_sent_again_with_another_hand_over_time_changes_nothing(api, sku):
    """The first hand-over time stands: the units left on it already, and a WMS that re-reads its
    manifest, or a ship first confirmed on the single route, repeats a ship, not a correction."""
    order_id, shipment_id = allocated(api, sku)
    left = datetime.now(UTC) - timedelta(microseconds=1)
    first = api.post(PATH, json={"items": [item(order_id, shipment_id, "ship", shipped_at=stated(left))]})
    history = api.get(f"/orders/{order_id}/history").json()["items"]

    again = api.post(PATH, json={"items": [item(order_id, shipment_id, "ship", shipped_at=stated(datetime.now(UTC)))]})

    assert again.json() == first.json()
    assert [(r["status"], r["error"], r["retry"]) for r in again.json()["items"]] == [("shipped", None, False)]
    assert shown_time(api.get(f"/orders/{order_id}").json()["shipments"][0]["shipped_at"]) == left
    assert api.get(f"/orders/{order_id}/history").json()["items"] == history


def test_the_api_description_says_a_ship_item_may_carry_its_hand_over_time(api):
    document = api.get("/openapi.json").json()
    confirmation = document["components"]["schemas"]["Confirmation"]
    shipped_at = confirmation["properties"]["shipped_at"]
    assert {"type": "string", "format": "date-time"} in shipped_at["anyOf"], shipped_at
    assert "manifest" in shipped_at["description"] and "RFC 3339" in shipped_at["description"]
    assert "`shipped_at`" in document["paths"][PATH]["post"]["description"]
    assert "shipped_at" not in confirmation.get("required", [])

"""PUT /inventory/{sku}/{location_id} below the units reserved there, over the in-process API on
moto: the count is recorded (200), and the newest order's pending shipment there is rejected
(`stock_count`, by the counting key) and sourced again elsewhere. The workflow is not running
here (no event sources): the test runs the order's steps itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core.errors import Backordered
from core.fulfillment import OrderActions
from tests.e2e.client import ADMIN, Catalog, assert_error, order_body, put_network, unique
from tests.integration.in_process import InProcessApi, in_process_api_with_labels, issue, run_to_allocated


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api_with_labels() as started:
        yield started


def test_a_count_below_reserved_is_recorded_and_the_newest_order_is_sourced_again(api: InProcessApi):
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 10)
    catalog.stock(sku, network["east"], 10)
    issued = api.post("/api-keys", json={"name": unique("key"), "scopes": ["inventory:write"]}).json()
    orders = []
    for _ in range(2):
        placed = api.post("/orders", json=order_body((sku, 4)))
        assert placed.status_code == 201, placed.text
        orders.append(run_to_allocated(api, placed.json()["id"]))
    assert {s["location_id"] for o in orders for s in o["shipments"]} == {network["west"]}

    counted = api.put(f"/inventory/{sku}/{network['west']}", key=issued["key"], json={"on_hand": 5})

    assert counted.status_code == 200, counted.text
    assert {k: counted.json()[k] for k in ("on_hand", "reserved", "available")} == {
        "on_hand": 5, "reserved": 4, "available": 1,
    }  # fmt: skip
    rejected = {}
    for order in orders:
        entries = api.get(f"/orders/{order['id']}/history").json()["items"]
        rejected[order["id"]] = [
            (e["actor"], e["detail"]["reason"], e["detail"]["location_id"])
            for e in entries
            if e["type"] == "shipment_rejected"
        ]
    older, newer = orders
    assert rejected == {older["id"]: [], newer["id"]: [(issued["id"], "stock_count", network["west"])]}
    assert api.get(f"/orders/{older['id']}").json()["status"] == "allocated"
    again = run_to_allocated(api, newer["id"])
    assert {s["location_id"] for s in again["shipments"]} == {network["east"]}
    again_counted = api.put(f"/inventory/{sku}/{network['west']}", key=issued["key"], json={"on_hand": 5}).json()
    assert {**again_counted, "updated_at": None} == {**counted.json(), "updated_at": None}
    assert [(s["id"], s["status"]) for s in api.get(f"/orders/{older['id']}").json()["shipments"]] == [
        (s["id"], s["status"]) for s in older["shipments"]
    ]


def counted_short_with_its_reject_dead(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, str], str, dict[str, Any]]:
    """An order of 4 allocated at west (4 there, 10 at east), then west counted at 1 by a stock take
    whose function dies after the count and before its reject: (network, sku, the allocated order)."""
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 4)
    catalog.stock(sku, network["east"], 10)
    placed = api.post("/orders", json=order_body((sku, 4)))
    assert placed.status_code == 201, placed.text
    order = run_to_allocated(api, placed.json()["id"])
    assert [s["location_id"] for s in order["shipments"]] == [network["west"]]

    def died(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the function timed out after the count")

    with monkeypatch.context() as patched:
        patched.setattr(OrderActions, "reject", died)
        assert api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 1}).status_code >= 500
    return network, sku, order


def test_a_parcel_shipped_between_a_short_count_and_its_reject_never_takes_on_hand_below_zero(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # The count lands first (available negative until its rejects release), then its function dies
    # before the reject; the warehouse confirms the parcel left. Counted at 1, the parcel of 4 had
    # left before the count (a count counts every unit there): the ship takes its reservation, not
    # units the count never saw, and on_hand stays as counted.
    network, sku, order = counted_short_with_its_reject_dead(api, monkeypatch)
    (shipment,) = order["shipments"]
    shipped = api.post(f"/orders/{order['id']}/shipments/{shipment['id']}/ship", json={})

    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["shipments"][0]["status"] == "shipped"
    west = stock_at(api, sku, network["west"])
    assert west == {"on_hand": 1, "reserved": 0, "available": 1}
    counted_again = api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 1})
    assert counted_again.status_code == 200, counted_again.text
    assert rejected_by_count(api, order["id"]) == []


def stock_at(api: InProcessApi, sku: str, location_id: str) -> dict[str, int]:
    (found,) = [loc for loc in api.get(f"/inventory/{sku}").json()["locations"] if loc["location_id"] == location_id]
    return {name: found[name] for name in ("on_hand", "reserved", "available")}


def rejected_by_count(api: InProcessApi, order_id: str) -> list[dict]:
    entries = api.get(f"/orders/{order_id}/history").json()["items"]
    return [e for e in entries if e["type"] == "shipment_rejected" and e["detail"]["reason"] == "stock_count"]


def backordered(api: InProcessApi, **units: int) -> tuple[dict[str, str], str, str, Any]:
    """An order of 5 units of a backorderable product stocked with `units` ({"west": 3, ...}) at
    the network's locations, authorized and reserving what there is by the workflow's own steps,
    waiting backordered for the rest: (the network, the sku, the order's id, the workflow)."""
    from functions.bootstrap import Config, bootstrap

    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("10.00", allow_backorder=True)
    for name, count in units.items():
        catalog.stock(sku, network[name], count)
    placed = api.post("/orders", json=order_body((sku, 5)))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(order_id, attempt=0)
    with pytest.raises(Backordered):
        steps.reserve_stock(order_id)
    return network, sku, order_id, steps


def test_a_count_below_what_a_backordered_order_holds_sends_it_back_to_be_sourced_not_refused(api: InProcessApi):
    network, sku, order_id, _ = backordered(api, west=3)  # 3 reserved at west, 2 short: it waits for stock
    assert stock_at(api, sku, network["west"]) == {"on_hand": 3, "reserved": 3, "available": 0}

    counted = api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 1})

    assert counted.status_code == 200, counted.text  # was 409: the backorder's units were kept
    assert stock_at(api, sku, network["west"]) == {"on_hand": 1, "reserved": 0, "available": 1}
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "authorized"  # its workflow sources it again, without west
    entries = api.get(f"/orders/{order_id}/history").json()["items"]
    assert [(e["detail"]["reason"], e["detail"]["location_id"]) for e in entries if e["type"] == "sourced_again"] == [
        ("stock_count", network["west"])
    ]


def test_a_count_below_what_a_held_backordered_order_holds_sends_it_back_to_be_sourced_keeping_the_hold(
    api: InProcessApi,
):
    # A count counts what is there: the units a backordered order on hold holds are no more there
    # than a backordered one's. It was 409 (held, the order was no candidate). Its hold stays; the
    # release sources it again without that location.
    network, sku, order_id, steps = backordered(api, west=3, east=1)  # 4 reserved, 1 short: it waits for stock
    held = api.post(f"/orders/{order_id}/hold", json={"reason": "fraud_review", "note": "check"})
    assert held.status_code == 200, held.text

    counted = api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 1})

    assert counted.status_code == 200, counted.text
    assert stock_at(api, sku, network["west"]) == {"on_hand": 1, "reserved": 0, "available": 1}
    assert stock_at(api, sku, network["east"]) == {"on_hand": 1, "reserved": 1, "available": 0}  # still its own
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "on_hold" and order["hold"]["reason"] == "fraud_review"
    entries = api.get(f"/orders/{order_id}/history").json()["items"]
    assert [(e["detail"]["reason"], e["detail"]["location_id"]) for e in entries if e["type"] == "sourced_again"] == [
        ("stock_count", network["west"])
    ]

    released = api.post(f"/orders/{order_id}/release", json={})
    assert released.status_code == 200, released.text
    assert released.json()["status"] == "authorized"  # its workflow sources it again, without west
    with pytest.raises(Backordered):
        steps.reserve_stock(order_id)
    assert stock_at(api, sku, network["west"]) == {"on_hand": 1, "reserved": 0, "available": 1}
    assert stock_at(api, sku, network["east"]) == {"on_hand": 1, "reserved": 1, "available": 0}


def edited_to_3(api: InProcessApi, order_id: str, sku: str) -> Any:
    """The answer to a PATCH of the order's lines to 3 of `sku`, on its current version (an edit
    sends a backordered order back to be sourced)."""
    order = api.get(f"/orders/{order_id}").json()
    return api.request(
        "PATCH", f"/orders/{order_id}", json={"lines": [{"sku": sku, "quantity": 3}]},
        headers={"If-Match": str(order["version"])},
    )  # fmt: skip


def test_an_order_edited_before_the_counts_send_back_lands_keeps_none_of_the_units_the_count_took(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # Backordered when the count read it; a PATCH sends it back to be sourced (authorized, its units
    # still held) before the count's send-back lands. It was refused then (the order no longer
    # backordered), the count finished with 3 reserved over on_hand 0, and the order's ReserveStock
    # counted those 3 as its own: allocated from west, where the count found none.
    network, sku, order_id, steps = backordered(api, west=3)
    real = OrderActions.source_backorder_again

    def edited_first(actions: OrderActions, *args: str, **kwargs: str | None):
        edited = edited_to_3(api, order_id, sku)
        assert edited.status_code == 200 and edited.json()["status"] == "authorized", edited.text
        return real(actions, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(OrderActions, "source_backorder_again", edited_first)
        counted = api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 0})

    assert counted.status_code == 200, counted.text
    assert stock_at(api, sku, network["west"]) == {"on_hand": 0, "reserved": 0, "available": 0}
    entries = api.get(f"/orders/{order_id}/history").json()["items"]
    assert [(e["detail"]["reason"], e["detail"]["location_id"]) for e in entries if e["type"] == "sourced_again"] == [
        ("stock_count", network["west"])
    ]
    with pytest.raises(Backordered):
        steps.reserve_stock(order_id)  # the execution the edit started: west excluded, it waits for stock
    assert api.get(f"/orders/{order_id}").json()["shipments"] == []
    assert stock_at(api, sku, network["west"]) == {"on_hand": 0, "reserved": 0, "available": 0}


def test_an_adjustment_while_a_short_counts_rejects_are_owed_answers_available_never_negative(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # The count lands first (the stored available negative until its rejects release) and its
    # function dies before the reject; a receipt of one unit meanwhile answered available -2, with
    # and without an Idempotency-Key, where GET /inventory shows 0 (API.md: never negative).
    network, sku, _ = counted_short_with_its_reject_dead(api, monkeypatch)
    path = f"/inventory/{sku}/{network['west']}/adjustments"
    plain = api.post(path, json={"delta": 1, "reason": "found one"})
    keyed = api.post(path, json={"delta": 1, "reason": "found another"}, headers={"Idempotency-Key": unique("adj")})

    assert plain.status_code == keyed.status_code == 200, (plain.text, keyed.text)
    shown = [{name: answer.json()[name] for name in ("on_hand", "reserved", "available")} for answer in (plain, keyed)]
    assert shown == [{"on_hand": 2, "reserved": 4, "available": 0}, {"on_hand": 3, "reserved": 4, "available": 0}]
    assert stock_at(api, sku, network["west"]) == shown[-1]


def test_a_count_below_what_an_order_sent_back_and_not_yet_sourced_holds_is_409_recording_nothing(api: InProcessApi):
    # Backordered with 3 units at west, a PATCH sends it back to be sourced (authorized, its units
    # still held, its ReserveStock not run yet): no reject or send-back may take them, so a count of
    # 0 is refused before it is recorded (NotAllocatedYet is an InsufficientStock) in the contract's
    # error shape, and leaves no mark and nothing changed.
    network, sku, order_id, _ = backordered(api, west=3)
    edited = edited_to_3(api, order_id, sku)
    assert edited.status_code == 200 and edited.json()["status"] == "authorized", edited.text
    version = edited.json()["version"]

    counted = api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 0})

    assert counted.status_code == 409, counted.text
    body = counted.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "insufficient_stock"
    assert [d["field"] for d in body["error"]["details"]] == ["on_hand"]
    assert stock_at(api, sku, network["west"]) == {"on_hand": 3, "reserved": 3, "available": 0}
    assert api.get(f"/orders/{order_id}").json()["version"] == version


def test_a_count_retried_while_its_mark_is_kept_for_an_order_reserved_meanwhile_answers_200_as_before(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # Backordered when the count read it; edited and reserved again (its ReserveStock counting the
    # 3 units it held at west as its own) before the count's send-back landed: the count is recorded,
    # its mark kept for the parcel that order's workflow books there. The PUT retried (its answer
    # lost) answered 409 insufficient_stock for the count it had recorded.
    network, sku, order_id, steps = backordered(api, west=3)
    real = OrderActions.source_backorder_again

    def edited_and_reserved_first(actions: OrderActions, *args: str, **kwargs: str | None):
        edited = edited_to_3(api, order_id, sku)
        assert edited.status_code == 200, edited.text
        steps.reserve_stock(order_id)
        return real(actions, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(OrderActions, "source_backorder_again", edited_and_reserved_first)
        counted = api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 0})
    assert counted.status_code == 200, counted.text
    version = api.get(f"/orders/{order_id}").json()["version"]

    retried = api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 0})

    assert retried.status_code == 200, retried.text
    assert {**retried.json(), "updated_at": None} == {**counted.json(), "updated_at": None}
    assert stock_at(api, sku, network["west"]) == {"on_hand": 0, "reserved": 3, "available": 0}
    assert api.get(f"/orders/{order_id}").json()["version"] == version


def test_a_channels_key_counts_no_fewer_units_than_are_reserved_and_sends_no_order_elsewhere(api: InProcessApi):
    # A key bound to a channel changes no other channel's order (API.md, Access: a write to one is
    # 404). Its stock take below the units reserved sent the newest orders there elsewhere whatever
    # their channel, so a storefront's key with inventory:write cancelled another channel's orders
    # out of stock by counting zero. It is refused as a negative adjustment below them is.
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 4)
    channel = f"web-{unique('c')[-8:]}"
    key = issue(api, "inventory:write", channel=channel)
    orders = []
    for of in ("b2b", channel, "b2b"):
        placed = api.post("/orders", json=order_body((sku, 1), channel=of))
        assert placed.status_code == 201, placed.text
        orders.append(run_to_allocated(api, placed.json()["id"]))

    refused = [api.put(f"/inventory/{sku}/{network['west']}", key=key, json={"on_hand": n}) for n in (0, 2)]
    counted = api.put(f"/inventory/{sku}/{network['west']}", key=key, json={"on_hand": 3})

    for answer in refused:
        assert_error(answer, 409, "insufficient_stock", "on_hand")
    assert counted.status_code == 200, counted.text
    assert {k: counted.json()[k] for k in ("on_hand", "reserved", "available")} == {
        "on_hand": 3, "reserved": 3, "available": 0,
    }  # fmt: skip
    for order in orders:
        shown = api.get(f"/orders/{order['id']}").json()
        parcels = [(s["id"], s["location_id"], s["status"]) for s in shown["shipments"]]
        assert (shown["status"], parcels) == (
            "allocated",
            [(s["id"], network["west"], "pending") for s in order["shipments"]],
        )
    # A key of every channel still counts fewer, sending the newest order elsewhere.
    assert api.put(f"/inventory/{sku}/{network['west']}", json={"on_hand": 2}).status_code == 200


def test_a_channels_key_sending_the_count_a_short_stock_take_recorded_is_answered_the_level_not_refused(
    api: InProcessApi, monkeypatch: pytest.MonkeyPatch
):
    # West counted at 1 under the 4 reserved, its reject not landed yet (the function died): the
    # warehouse's channel-bound key sends the same count (its own tool's copy of the stock take).
    # The count stands, as a count sent again does: answered the level, recording nothing and
    # sending no order elsewhere; a different count below the reserved units is still refused.
    network, sku, order = counted_short_with_its_reject_dead(api, monkeypatch)
    key = issue(api, "inventory:write", channel=order["channel"])
    version = api.get(f"/orders/{order['id']}").json()["version"]

    same = api.put(f"/inventory/{sku}/{network['west']}", key=key, json={"on_hand": 1})
    other = api.put(f"/inventory/{sku}/{network['west']}", key=key, json={"on_hand": 2})

    assert same.status_code == 200, same.text
    assert {k: same.json()[k] for k in ("on_hand", "reserved", "available")} == {
        "on_hand": 1, "reserved": 4, "available": 0,
    }  # fmt: skip
    assert_error(other, 409, "insufficient_stock", "on_hand")
    assert stock_at(api, sku, network["west"]) == {"on_hand": 1, "reserved": 4, "available": 0}
    assert api.get(f"/orders/{order['id']}").json()["version"] == version


def counted_with_its_answer_lost(
    api: InProcessApi, path: str, on_hand: int, idempotency_key: str, key: Any = ADMIN
) -> None:
    """A count of `on_hand` under `idempotency_key` written (with the API key `key`), the API
    function timing out before its answer and the key's idempotency record were saved (a timeout
    leaves the record in progress until it expires: gone here)."""
    from core.services import InventoryService
    from tests.integration.test_order_idempotency_api import forget_idempotency_records

    written = InventoryService.count

    def dies_after_the_write(*args: Any, **kwargs: Any) -> Any:
        written(*args, **kwargs)
        raise TimeoutError("the API function timed out after the count's write")

    with pytest.MonkeyPatch.context() as patches:
        patches.setattr(InventoryService, "count", dies_after_the_write)
        lost = api.put(path, key=key, json={"on_hand": on_hand}, headers={"Idempotency-Key": idempotency_key})
    assert lost.status_code == 500, lost.text
    forget_idempotency_records()


@pytest.mark.parametrize("channel", [None, "b2b"], ids=["key_of_every_channel", "key_bound_to_a_channel"])
def test_a_keyed_count_whose_answer_was_lost_sent_again_once_more_is_reserved_answers_the_stock_as_stored(
    api: InProcessApi, channel: str | None
):
    # West counted at 2 under its key, the answer lost; 3 units received and an order reserving 4
    # there since (not allocated yet: no reject may send it elsewhere, nor may a key bound to a
    # channel). The count sent again under its key was refused 409 insufficient_stock before its
    # key was looked up, though it was recorded: answered the stock as stored, nothing written.
    network = put_network(api)
    catalog = Catalog(api)
    sku = catalog.product("10.00")
    catalog.stock(sku, network["west"], 4)
    key, idempotency_key = issue(api, "inventory:write", channel=channel), unique("count")
    path = f"/inventory/{sku}/{network['west']}"
    counted_with_its_answer_lost(api, path, 2, idempotency_key, key)
    assert api.post(f"{path}/adjustments", json={"delta": 3, "reason": "delivery"}).status_code == 200
    placed = api.post("/orders", json=order_body((sku, 4)))
    assert placed.status_code == 201, placed.text
    from functions.bootstrap import Config, bootstrap

    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(placed.json()["id"], attempt=0)
    steps.reserve_stock(placed.json()["id"])
    before = api.get(f"/orders/{placed.json()['id']}").json()

    again = api.put(path, key=key, json={"on_hand": 2}, headers={"Idempotency-Key": idempotency_key})

    assert again.status_code == 200, again.text
    stored = {"on_hand": 5, "reserved": 4, "available": 1}
    assert {name: again.json()[name] for name in stored} == stored
    assert stock_at(api, sku, network["west"]) == stored
    assert api.get(f"/orders/{placed.json()['id']}").json() == before

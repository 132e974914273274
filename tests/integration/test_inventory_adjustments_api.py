"""POST /inventory/{sku}/{location_id}/adjustments through the in-process API on moto: an
adjustment retried with its Idempotency-Key is counted once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.client import Catalog, assert_error, location_body, order_body, put_network, unique
from tests.integration.in_process import InProcessApi, in_process_api
from tests.integration.test_order_idempotency_api import forget_idempotency_records


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def on_hand(api: InProcessApi, sku: str) -> int:
    return api.get(f"/inventory/{sku}").json()["locations"][0]["on_hand"]


def test_an_adjustment_retried_with_its_idempotency_key_counts_once(api: InProcessApi):
    # A warehouse tool whose request timed out sends it again: the delivery of 10 units must not
    # become 20 on hand (nor a damaged unit written off twice).
    location_id = put_network(api)["east"]
    sku = Catalog(api).product("9.00")
    path = f"/inventory/{sku}/{location_id}/adjustments"
    received, damaged = {"Idempotency-Key": unique("adj")}, {"Idempotency-Key": unique("adj")}

    first = api.post(path, json={"delta": 10, "reason": "delivery 4711"}, headers=received)
    again = api.post(path, json={"delta": 10, "reason": "delivery 4711"}, headers=received)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert again.json() == first.json() and on_hand(api, sku) == 10

    written_off = [api.post(path, json={"delta": -1, "reason": "damaged"}, headers=damaged) for _ in range(2)]
    assert [r.status_code for r in written_off] == [200, 200] and on_hand(api, sku) == 9

    reused = api.post(path, json={"delta": 3, "reason": "delivery 4712"}, headers=received)
    assert_error(reused, 409, "idempotency_key_reused")
    assert on_hand(api, sku) == 9
    assert api.post(path, json={"delta": 3, "reason": "no key"}).status_code == 200
    assert on_hand(api, sku) == 12


def test_an_adjustment_retried_after_its_idempotency_record_was_lost_counts_once(api: InProcessApi):
    # The first attempt counted the delivery and died before its idempotency record was saved (or the
    # tool sends it again after the record's 24 h): the 10 units must not become 20 on hand.
    location_id = put_network(api)["east"]
    sku = Catalog(api).product("9.00")
    path = f"/inventory/{sku}/{location_id}/adjustments"
    key = {"Idempotency-Key": unique("adj")}
    assert api.post(path, json={"delta": 10, "reason": "delivery 4713"}, headers=key).status_code == 200
    forget_idempotency_records()

    again = api.post(path, json={"delta": 10, "reason": "delivery 4713"}, headers=key)

    assert again.status_code == 200, again.text
    assert on_hand(api, sku) == 10


def test_an_adjustment_never_takes_on_hand_past_what_a_stock_take_may_count(api: InProcessApi):
    # A stock take counts at most 1,000,000,000 units; two adjustments of +1,000,000,000 took
    # on_hand to twice that, after which no true count could be recorded. The units on hand refuse
    # the second (409, as one below reserved is), in the write's own condition, with or without a key.
    location_id = put_network(api)["east"]
    sku = Catalog(api).product("9.00")
    path = f"/inventory/{sku}/{location_id}/adjustments"

    assert api.post(path, json={"delta": 1_000_000_000, "reason": "delivery"}).status_code == 200
    too_many = api.post(path, json={"delta": 1, "reason": "delivery"})
    assert_error(too_many, 409, "stock_limit_reached", "delta")
    keyed = api.post(
        path, json={"delta": 1_000_000_000, "reason": "delivery"}, headers={"Idempotency-Key": unique("a")}
    )
    assert_error(keyed, 409, "stock_limit_reached", "delta")
    assert on_hand(api, sku) == 1_000_000_000

    assert api.post(path, json={"delta": -5, "reason": "damaged"}).status_code == 200
    assert api.post(path, json={"delta": 5, "reason": "found"}).json()["on_hand"] == 1_000_000_000  # up to it
    assert api.put(f"/inventory/{sku}/{location_id}", json={"on_hand": 1_000_000_000}).status_code == 200


def test_one_key_on_two_stock_records_whose_ids_hold_a_slash_adjusts_each(api: InProcessApi):
    # Ids may hold "/" (written %2F in a path): the key's record named the route as
    # "POST /inventory/{sku}/{location_id}/adjustments" filled in, the same text for sku S/B at
    # location L as for sku S at location B/L, so the second adjustment replayed the first's answer
    # (the other record's stock) and counted nothing.
    catalog = Catalog(api)
    sku = catalog.product("9.00")
    location_id = catalog.location()
    assert (
        api.put(
            f"/products/{sku}%2FB", json={"name": "Slashed", "price": {"amount": "1.00", "currency": "USD"}}
        ).status_code
        == 201
    )
    assert api.put(f"/locations/B%2F{location_id}", json=location_body()).status_code == 201
    key = {"Idempotency-Key": unique("adj")}
    body = {"delta": 10, "reason": "delivery 4713"}

    first = api.post(f"/inventory/{sku}%2FB/{location_id}/adjustments", json=body, headers=key)
    second = api.post(f"/inventory/{sku}/B%2F{location_id}/adjustments", json=body, headers=key)

    assert first.status_code == second.status_code == 200, (first.text, second.text)
    assert (first.json()["sku"], first.json()["location_id"]) == (f"{sku}/B", location_id)
    assert (second.json()["sku"], second.json()["location_id"]) == (sku, f"B/{location_id}")
    assert on_hand(api, sku) == 10


def reserved_since(api: InProcessApi, sku: str, location_id: str) -> None:
    """An order placed, authorized and reserving the 3 units left there."""
    from functions.bootstrap import Config, bootstrap

    placed = api.post("/orders", json=order_body((sku, 3)))
    assert placed.status_code == 201, placed.text
    steps = bootstrap(Config.from_env()).workflow
    steps.authorize_payment(placed.json()["id"], attempt=0)
    steps.reserve_stock(placed.json()["id"])


def counted_up_to_the_limit(api: InProcessApi, sku: str, location_id: str) -> None:
    """A stock take of 999,999,998 there: 2 units short of the most on hand."""
    assert api.put(f"/inventory/{sku}/{location_id}", json={"on_hand": 999_999_998}).status_code == 200


@pytest.mark.parametrize(
    ("delta", "since", "stored"),
    [(-2, reserved_since, (3, 3, 0)), (5, counted_up_to_the_limit, (999_999_998, 0, 999_999_998))],
    ids=["removal_once_the_rest_is_reserved", "receipt_once_the_shelf_is_near_the_limit"],
)
def test_an_adjustment_whose_answer_was_lost_sent_again_once_it_no_longer_fits_answers_the_stock_as_stored(
    api: InProcessApi, delta: int, since: Callable[[InProcessApi, str, str], None], stored: tuple[int, int, int]
):
    # Counted under its key, its answer and idempotency record lost; the stock changed since, so
    # that the same delta would now be refused (409 insufficient_stock or stock_limit_reached): the
    # key recorded with the first answers the retry, the stock as stored, nothing counted twice.
    location_id = put_network(api)["east"]
    sku = Catalog(api).product("9.00")
    Catalog(api).stock(sku, location_id, 5)
    path, key = f"/inventory/{sku}/{location_id}/adjustments", {"Idempotency-Key": unique("adj")}
    assert api.post(path, json={"delta": delta, "reason": "correction"}, headers=key).status_code == 200
    forget_idempotency_records()
    since(api, sku, location_id)

    again = api.post(path, json={"delta": delta, "reason": "correction"}, headers=key)

    assert again.status_code == 200, again.text
    shown = {name: again.json()[name] for name in ("on_hand", "reserved", "available")}
    assert shown == dict(zip(("on_hand", "reserved", "available"), stored, strict=True))
    assert on_hand(api, sku) == stored[0]

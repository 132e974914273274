"""`make run` with OMS_SEED=0 starts an empty store, and its banner sends the reader to the README's
Quick start to put a product, a location and stock before the first order: those commands, run as
printed (in-process), let the Quick start's first order be placed and allocated."""

from __future__ import annotations

from tests.e2e.client import assert_error
from tests.integration.in_process import in_process_api_with_labels, run_to_allocated
from tests.readme_code import curl_requests, section


def test_the_quick_starts_commands_for_an_empty_store_let_its_first_order_be_placed_and_allocated():
    requests = curl_requests(section("## Quick start"))
    puts = [request for request in requests if request.method == "PUT"]
    first = next(request for request in requests if (request.method, request.path) == ("POST", "/orders"))
    # The banner: "put the product TSHIRT-BLK-M, a location and its stock first, as README's Quick start does".
    assert sorted(request.path.split("/")[1] for request in puts) == ["inventory", "locations", "products"]

    with in_process_api_with_labels() as api:
        assert_error(api.post("/orders", json=first.body), 422, "unknown_sku")  # the empty store
        for request in puts:
            answer = api.request(request.method, request.path, json=request.body)
            assert answer.status_code in (200, 201), (request.path, answer.text)
        placed = api.post("/orders", json=first.body, headers=first.headers)

        assert placed.status_code == 201, placed.text
        assert run_to_allocated(api, placed.json()["id"])["allocations"][0]["quantity"] == 2

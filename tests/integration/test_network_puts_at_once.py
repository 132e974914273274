"""PUT /locations sent at once, in-process on moto (moto serialized, each request atomic as on AWS),
on a fresh account: the network is one item, made by the first location's PUT, so two first PUTs
race to make it. Exactly one PUT of a new location answers 201, and no location put at the same
time as another is lost from the network."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.client import location_body
from tests.integration.conftest import at_once
from tests.integration.in_process import InProcessApi, in_process_api


@pytest.fixture
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:  # no location yet: the network's item does not exist
        yield started


def listed(api: InProcessApi) -> list[str]:
    return [location["location_id"] for location in api.get("/locations").json()["items"]]


def test_the_first_location_put_three_times_at_once_is_created_once(api: InProcessApi):
    # Three names: each PUT writes (one that changes nothing would be answered 200 unwritten).
    bodies = [location_body(name=f"East warehouse {n}") for n in range(3)]

    answers = at_once(*[lambda body=body: api.put("/locations/wh-east", json=body) for body in bodies])

    assert sorted(a.status_code for a in answers) == [200, 200, 201], [a.text for a in answers]
    assert listed(api) == ["wh-east"]
    assert api.get("/locations").json()["items"][0]["name"] in {body["name"] for body in bodies}


def test_two_first_locations_put_at_once_are_both_created_and_listed(api: InProcessApi):
    east, west = location_body(), location_body(name="West warehouse")

    answers = at_once(
        lambda: api.put("/locations/wh-east", json=east), lambda: api.put("/locations/wh-west", json=west)
    )

    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    assert listed(api) == ["wh-east", "wh-west"]
    assert api.put("/locations/wh-west", json=east).status_code == 200  # replaced now, not created

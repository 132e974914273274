"""The in-process API's harness: a template parameter given to in_process_api reaches the functions
the way the template passes it to them (an environment variable set to `!Ref Parameter`), as on a
stack, instead of being silently dropped while the functions read the suite's defaults."""

import os

from infra.local.template import Template
from tests.builders import location_body, order_body, product_body
from tests.integration.in_process import in_process_api


def test_a_parameter_a_function_variable_refs_reaches_the_functions_environment():
    pairs = {(name, parameter) for name, parameter in Template.load().parameter_variables()}
    assert ("OMS_REVIEW_THRESHOLD", "ReviewThreshold") in pairs
    with in_process_api(ReviewThreshold="USD:123.45"):
        assert os.environ["OMS_REVIEW_THRESHOLD"] == "USD:123.45"
    assert os.environ.get("OMS_REVIEW_THRESHOLD") != "USD:123.45"  # the run's own, put back


def test_an_order_past_the_review_threshold_given_as_a_parameter_waits_for_review():
    with in_process_api(ReviewThreshold="USD:10.00") as api:
        assert api.put("/products/HARNESS-CUP", json=product_body("8.00")).status_code == 201
        assert api.put("/locations/harness-wh", json=location_body()).status_code == 201
        assert api.put("/inventory/HARNESS-CUP/harness-wh", json={"on_hand": 10}).status_code == 200
        placed = api.post("/orders", json=order_body(lines=[{"sku": "HARNESS-CUP", "quantity": 2}]))
        assert placed.status_code == 201, placed.text
        order = api.get(f"/orders/{placed.json()['id']}").json()
        assert (order["status"], order["hold"]["reason"]) == ("on_hold", "fraud_review"), order

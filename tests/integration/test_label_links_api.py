"""Label links as GET answers hand them out, through the real handlers in-process on moto: a link is
signed only for a label of the order's own in the labels bucket, and never for a label the OMS gave
up with its carrier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from core import hookimpl
from core.workflow_types import CarrierShipment
from tests.integration import test_cancel_units_api
from tests.integration.in_process import InProcessApi
from tests.integration.test_cancel_units_api import allocated, authorized, ship
from tests.integration.test_plugin_failures_api import installed

api = test_cancel_units_api.api  # its catalog (MUG in the west, CAP in the east), in this module's account


class HostingCarrier:
    """A carrier whose API hosts its labels (as EasyPost's and Shippo's do) at `label_url`."""

    def __init__(self, label_url: str) -> None:
        self.label_url = label_url

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self, booking_key):
        return CarrierShipment(
            carrier="acme", service="ground", tracking_number=f"ACME-{booking_key[-12:]}", label_url=self.label_url
        )


def booked_by_the_workflow_task(api: InProcessApi, *lines: tuple[str, int]) -> dict[str, Any]:
    """Placed, authorized and reserved, then allocated by the CreateShipments task's own handler
    (whose container has the plugins `installed` registers)."""
    from functions.workflow import create_shipments
    from tests.integration.test_handlers import Context

    order_id, workflow = authorized(api, *lines)
    workflow.reserve_stock(order_id)
    create_shipments.lambda_handler({"order_id": order_id}, Context())
    order = api.get(f"/orders/{order_id}").json()
    assert order["status"] == "allocated", order
    return order


def test_a_carrier_hosted_label_whose_path_names_an_order_of_the_oms_is_shown_as_the_carrier_gave_it(
    api: InProcessApi,
):
    # The carrier's link merely has the shape of a label key of the labels bucket (a carrier that
    # files its labels under the reference the OMS books with, "ord_…/shp_…", or one that names
    # another order's label): it was signed as a link to the labels bucket's object of that key,
    # so the warehouse's link opened another order's label, with another customer's name and
    # address, or none (the OMS stores no bytes for a hosted label).
    other = allocated(api, ("MUG", 1))
    other_key = f"labels/{other['id']}/{other['shipments'][0]['id']}.pdf"
    hosted = f"https://labels.acme.test/{other_key}"

    with installed(HostingCarrier(hosted)):
        order = booked_by_the_workflow_task(api, ("CAP", 1))

    assert [s["label_url"] for s in order["shipments"]] == [hosted]
    assert [s["label_url"] for s in api.get(f"/orders/{order['id']}").json()["shipments"]] == [hosted]


def test_a_return_label_given_up_when_its_return_expired_is_no_longer_handed_out(api: InProcessApi):
    # An expired return's label is cancelled with its carrier (the reconciler's pass): a link to it
    # would have the customer print a void label and post the parcel with it, as a cancelled
    # shipment's would, which shows none.
    from functions.bootstrap import Config, bootstrap

    order = ship(api, allocated(api, ("MUG", 2)), "wh-west")
    made = api.post(f"/orders/{order['id']}/returns", json={"lines": [{"line_id": "L1", "quantity": 1, "reason": "x"}]})
    assert made.status_code == 201 and made.json()["label_url"], made.text
    returns = bootstrap(Config.from_env()).returns
    # What the jeopardy scan does to a return left unreceived past OMS_RETURN_EXPIRY_DAYS.
    assert returns.expire(made.json()["id"], datetime.now(UTC) + timedelta(days=400), actor="jeopardy_scan") is True

    shown = api.get(f"/returns/{made.json()['id']}").json()
    listed = api.get(f"/orders/{order['id']}/returns").json()["items"]

    assert shown["status"] == "cancelled" and shown["label_url"] is None
    assert [(r["id"], r["label_url"]) for r in listed] == [(shown["id"], None)]


def test_a_label_of_the_labels_bucket_is_still_signed_at_each_read(api: InProcessApi):
    order = allocated(api, ("MUG", 1))

    link = urlsplit(order["shipments"][0]["label_url"])

    assert link.path.endswith(f"/labels/{order['id']}/{order['shipments'][0]['id']}.pdf")
    assert parse_qs(link.query)["X-Amz-Expires"] == ["900"]

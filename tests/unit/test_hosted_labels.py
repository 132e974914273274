"""Labels a carrier hosts: a carrier plugin may answer with the carrier's link to the label
(`label_url`, as EasyPost and Shippo do) instead of the document; the OMS then keeps the link,
stores no bytes, and shows the link as it is when the order is read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core import hookimpl
from core.workflow_types import CarrierShipment, stored_label
from plugins.testing import a_location, a_product, an_order, plugin_host, sourced_from
from plugins.testing.memory import InMemoryLabels

HOSTED = "https://easypost-files.s3.us-west-2.amazonaws.com/files/postage_label/20261201/e8a1b2c3.pdf"


class HostingCarrier:
    """A carrier whose API hosts its labels, as EasyPost's `postage_label.label_url` does."""

    @hookimpl(tryfirst=True)
    def oms_carrier_create_shipment(self, shipment_id: str) -> CarrierShipment:
        return CarrierShipment(carrier="EasyPost", service="Ground", tracking_number="EZ1000000001",
                               label_url=f"{HOSTED}?shipment={shipment_id}")  # fmt: skip

    @hookimpl(tryfirst=True)
    def oms_carrier_return_label(self, return_id: str) -> CarrierShipment:
        return CarrierShipment(carrier="EasyPost", service="Returns", tracking_number="EZ2000000002",
                               label_url=f"{HOSTED}?return={return_id}")  # fmt: skip


def test_a_hosted_label_is_kept_as_the_carriers_link_and_no_document_is_stored():
    host = plugin_host(HostingCarrier())
    order = sourced_from(an_order(("MUG-1", 1)), "wh-east")

    booked = host.book_shipments(order, [a_location("wh-east")], [a_product("MUG-1", weight_grams=350)])

    (shipment,) = booked.shipments
    assert shipment.label_url == f"{HOSTED}?shipment={shipment.id}"
    assert host.labels.labels == {}
    # What a read of the order shows: the carrier's link, not one of the label store's.
    assert host.labels.link(shipment.label_url) == shipment.label_url and host.labels.links_made == 0


def test_a_label_document_is_still_stored_and_kept_by_its_key():
    labels = InMemoryLabels()
    booked = CarrierShipment(carrier="Acme", service="Next day", tracking_number="ACME1", label=b"%PDF-1.4")

    assert stored_label(labels, booked, "ord_1", "shp_1") == "labels/ord_1/shp_1"
    assert labels.labels == {"shp_1": b"%PDF-1.4"}


@pytest.mark.parametrize(
    "label",
    [
        {},  # neither
        {"label": b"%PDF-1.4", "label_url": HOSTED},  # both
        {"label_url": "http://carrier.example/label.pdf"},  # not over TLS
        {"label_url": "https:///label.pdf"},  # no host
        {"label_url": "https://carrier.example/label 1.pdf"},  # white space
        # Before: a bidi override, an invisible character or a terminal escape in the carrier's link
        # was kept and shown as it is (the order's label_url, the customer's notification).
        {"label_url": "https://carrier.example/\u202efdp.exe"},
        {"label_url": "https://carrier.example/label\u200b.pdf"},
        {"label_url": "https://carrier.example/label.pdf\x1b[2J"},
    ],
)
def test_a_booking_gives_the_document_or_an_https_link_to_it_one_of_them(label):
    with pytest.raises(ValidationError):
        CarrierShipment(carrier="Acme", service="Next day", tracking_number="ACME1", **label)

"""acme_courier: quoted and booked only for its own shipping method, tracked through its webhooks."""

import hashlib
import hmac
import json

import pytest
from oms_acme import courier

from core.errors import InvalidRequest
from core.ids import booking_key
from core.tracking import shipment_reference
from plugins.testing import (
    a_location,
    a_place_order,
    a_product,
    a_stock_level,
    an_address,
    an_order,
    money,
    sourced_from,
)

GB = an_address("GB", None, city="Leeds", postal_code="LS1 4AP")
LEEDS = a_location("wh-leeds", address=an_address("GB", None, name="Leeds DC", city="Leeds", postal_code="LS11 5PS"),
                   latitude=53.77, longitude=-1.57)  # fmt: skip
KETTLE = a_product("KETTLE", "30.00", "GBP", weight_grams=3200)


def gb_order(shipping_method=None):
    return a_place_order(("KETTLE", 1), currency="GBP", shipping_address=GB, shipping_method=shipping_method)


# --- Quote ------------------------------------------------------------------------------------------


def test_next_day_is_quoted_by_weight_for_great_britain(oms_host):
    priced = oms_host.price(gb_order("acme_next_day"), [KETTLE])

    assert (priced.shipping_method, priced.totals.shipping) == ("acme_next_day", money("9.95", "GBP"))  # 3.2 kg


def test_the_default_method_is_still_standard(oms_host):
    assert oms_host.price(gb_order(), [KETTLE]).shipping_method == "standard"


def test_orders_elsewhere_are_not_offered_acme(oms_host):
    with pytest.raises(InvalidRequest) as refused:
        oms_host.price(a_place_order(("MUG-1", 1), shipping_method="acme_next_day"), [a_product("MUG-1")])

    assert refused.value.code == "unknown_shipping_method"


# --- Book -------------------------------------------------------------------------------------------


def gb_stored_order(shipping_method):
    return an_order(("KETTLE", 1), unit_price="30.00", currency="GBP", shipping_address=GB,
                    shipping_method=shipping_method)  # fmt: skip


def test_acme_books_its_own_method_from_the_origin_sourcing_chose(oms_host):
    sourced = oms_host.source(gb_stored_order("acme_next_day"), [LEEDS], [a_stock_level("KETTLE", "wh-leeds", 4)])

    booked = oms_host.book_shipments(sourced, [LEEDS], [KETTLE])

    (shipment,) = booked.shipments
    assert (shipment.carrier, shipment.service, shipment.location_id) == ("Acme Courier", "Next day", "wh-leeds")
    assert shipment.tracking_number == courier.tracking_number(shipment.id)
    label = oms_host.labels.labels[shipment.id]
    assert b"From: Warehouse wh-leeds, Leeds" in label
    assert f"Ref: {shipment_reference(booked.id, shipment.id)}".encode() in label
    assert f"Booking: {shipment.id}".encode() in label


def test_an_edited_orders_parcel_is_booked_under_its_new_booking_key(oms_host):
    edited = gb_stored_order("acme_next_day").model_copy(update={"rebookings": 1})
    sourced = oms_host.source(edited, [LEEDS], [a_stock_level("KETTLE", "wh-leeds", 4)])

    booked = oms_host.book_shipments(sourced, [LEEDS], [KETTLE])

    (shipment,) = booked.shipments
    key = booking_key(shipment.id, 1)
    assert key != shipment.id
    assert f"Booking: {key}".encode() in oms_host.labels.labels[key]
    assert shipment.tracking_number == courier.tracking_number(shipment.id)  # what its webhooks are checked by


def test_any_other_method_is_booked_by_the_next_carrier(oms_host):
    booked = oms_host.book_shipments(sourced_from(gb_stored_order("standard"), "wh-leeds"), [LEEDS], [KETTLE])

    assert [s.carrier for s in booked.shipments] == ["OMS Flat Rate"]


# --- Track ------------------------------------------------------------------------------------------


def webhook(event="DELIVERED", shipment_id="shp_1", **parcel):
    return {
        "parcel": {
            "tracking_number": courier.tracking_number(shipment_id),
            "customer_reference": shipment_reference("ord_1", shipment_id),
            **parcel,
        },
        "event": event,
        "occurred_at": "2026-01-16T10:02:00Z",
        "note": "Left in porch",
        "driver": {"id": 7},  # Acme sends more than the OMS needs
    }


@pytest.mark.parametrize(("event", "status"), [("DELIVERED", "delivered"), ("OUT_FOR_DELIVERY", "in_transit")])
def test_a_webhook_reads_as_an_update_of_the_shipment_it_references(oms_host, event, status):
    (update,) = oms_host.tracking_updates("acme-courier", webhook(event))

    assert (update.order_id, update.shipment_id, update.status, update.description) == (
        "ord_1", "shp_1", status, "Left in porch",
    )  # fmt: skip


def test_an_event_that_says_nothing_about_the_parcels_whereabouts_is_skipped(oms_host):
    assert oms_host.tracking_updates("acme-courier", webhook("LABEL_CREATED")) == []


def test_a_parcel_acme_did_not_book_for_the_oms_is_refused(oms_host):
    with pytest.raises(InvalidRequest, match="not one Acme Courier booked"):
        oms_host.tracking_updates("acme-courier", webhook(tracking_number="ACME0000000000"))


def test_with_a_secret_set_only_a_signed_webhook_is_read(oms_host, monkeypatch):
    monkeypatch.setenv(courier.WEBHOOK_SECRET_ENV, "s3cret")
    body = json.dumps(webhook())
    signature = "sha256=" + hmac.new(b"s3cret", body.encode(), hashlib.sha256).hexdigest()

    (update,) = oms_host.tracking_updates("acme-courier", webhook(), {"Acme-Signature": signature}, body)
    assert update.status == "delivered"
    for headers in ({}, {"Acme-Signature": "sha256=" + "0" * 64}):
        with pytest.raises(InvalidRequest) as refused:
            oms_host.tracking_updates("acme-courier", webhook(), headers, body)
        assert refused.value.code == "invalid_signature"


def test_other_carriers_webhooks_are_left_to_their_plugins():
    assert courier.oms_carrier_tracking_update(carrier="oms-flat-rate", payload={}, headers={}, body="") is None

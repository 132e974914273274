"""A pickup parcel's pick slip: the OMS makes it, no carrier plugin books or cancels it (core/pick_slips.py),
while a pickup parcel a carrier booked before keeps its booking and is cancelled with its carrier."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from core.errors import PluginError
from core.ids import shipment_reference
from core.models import PICK_SLIP_CARRIER, LineInput, Order, OrderEdit
from core.notifications import notifications
from core.pdf_pages import gs1_check_digit, pdf_text
from core.pick_slips import pick_slip, pickup_code
from core.status import OrderStatus
from tests.builders import address_body
from tests.unit.test_carrier_bookings import Carrier
from tests.unit.test_plugins_flat_rate_carrier import printed, xref_offsets
from tests.unit.world import Clock, World, build_world

S = OrderStatus
PICKUP = {"fulfillment": {"type": "pickup", "location_id": "store-sf"}}


@pytest.fixture
def carrier() -> Carrier:
    return Carrier()  # answers first, for every parcel it is asked to book


@pytest.fixture
def world(carrier: Carrier, clock: Clock) -> World:
    return build_world([("MUG", "store-sf", 10), ("MUG", "wh-west", 10)], carrier, clock=clock)


def carrier_entries(world: World, order_id: str) -> list[str]:
    return [entry.type for entry in world.history(order_id) if entry.type.startswith("carrier_booking")]


def test_a_pickup_parcel_gets_the_oms_pick_slip_and_no_carrier_is_asked(world, carrier):
    order = world.allocated(("MUG", 2), **PICKUP)

    (parcel,) = order.shipments
    assert carrier.booked == {}
    assert (parcel.carrier, parcel.service, parcel.tracking_number) == ("OMS", "Store pickup", pickup_code(parcel.id))
    assert world.labels.labels[parcel.id].startswith(b"%PDF-1.4")  # the slip, stored under its booking key
    assert order.bookings_to_cancel == [] and order.unrecorded_bookings == []


def test_a_parcel_that_travels_is_still_booked_with_the_carrier(world, carrier):
    order = world.allocated(("MUG", 2))

    (parcel,) = order.shipments
    assert parcel.carrier == Carrier.NAME and carrier.booked == {parcel.id: parcel.tracking_number}


def test_cancelling_a_pickup_order_owes_no_carrier_a_cancel(world, carrier):
    order = world.allocated(("MUG", 2), **PICKUP)

    done = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert done.status is S.CANCELLED and done.bookings_to_cancel == [] and not done.owes_carrier_work()
    assert carrier.cancels_asked == 0 and carrier_entries(world, order.id) == []


def test_a_cancel_of_some_units_of_a_pickup_prints_a_new_slip_with_no_carrier(world, carrier):
    order = world.allocated(("MUG", 3), **PICKUP)
    (parcel,) = order.shipments
    first_slip = world.labels.labels[parcel.id]

    done = world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})

    (shrunk,) = done.shipments
    assert [(line.line_id, line.quantity) for line in shrunk.lines] == [("L1", 1)]
    assert shrunk.carrier == PICK_SLIP_CARRIER and done.labels_due == []
    assert world.labels.labels[done.booking_key_of(parcel.id)] != first_slip  # the slip shows one unit now
    assert carrier.booked == {} and carrier.cancels_asked == 0 and not done.owes_carrier_work()
    assert carrier_entries(world, order.id) == []


def test_a_pickups_new_slip_that_loses_to_another_cancel_leaves_no_carrier_a_cancel_to_answer(
    world, carrier, monkeypatch
):
    # Two cancels of a pickup's mugs at once: the first's new slip (two mugs) comes after the
    # second cancel's write, and the parcel keeps the second's slip (one mug). The slip that lost
    # was printed by the OMS, booked with no carrier: nothing is owed a carrier's cancel for it.
    from tests.unit.world import before_the_next_write

    order = world.allocated(("MUG", 4), **PICKUP)
    before_the_next_write(  # after the first cancel's write, before its new slip's
        world, monkeypatch, lambda: world.actions.cancel(order.id, "one more", actor="key_web", lines={"L1": 1}),
        skip=1,
    )  # fmt: skip

    world.actions.cancel(order.id, "fewer mugs", actor="key_web", lines={"L1": 2})

    done = world.order(order.id)
    assert [(line.line_id, line.quantity) for line in done.shipments[0].lines] == [("L1", 1)]
    assert done.shipments[0].carrier == PICK_SLIP_CARRIER and done.labels_due == []
    assert done.bookings_to_cancel == [] and not done.owes_carrier_work()
    assert carrier.booked == {} and carrier.cancels_asked == 0 and carrier_entries(world, order.id) == []


def test_a_parked_pickup_order_keeps_no_booking_maybe_made_and_its_cancel_asks_no_carrier(world, carrier):
    order_id = world.place(("MUG", 1), **PICKUP)
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)
    # CreateShipments killed mid-step (a time-out), then parked: for a parcel that travels, the
    # carrier may have booked under its key, and a cancel asks every carrier about it.
    assert world.workflow.park_after_failure(order_id, "States.Timeout", "CreateShipments timed out")

    done = world.actions.cancel(order_id, "gave up waiting", actor="key_web")

    assert done.status is S.CANCELLED and done.bookings_to_cancel == [] and not done.owes_carrier_work()
    assert carrier_entries(world, order_id) == []


def test_a_pickup_parcel_a_carrier_booked_before_is_still_cancelled_with_it(world, carrier):
    order = world.allocated(("MUG", 1), **PICKUP)
    (parcel,) = order.shipments
    # As stored before the OMS made its slips: booked with the carrier plugin that answered first.
    booked = parcel.model_copy(update={"carrier": Carrier.NAME, "tracking_number": f"ACME-{parcel.id}"})
    world.orders.orders[order.id] = order.model_copy(update={"shipments": [booked]})

    done = world.actions.cancel(order.id, "changed my mind", actor="key_web")

    assert done.status is S.CANCELLED
    assert carrier.cancelled == [(f"ACME-{parcel.id}", parcel.id, order.id)]
    assert carrier_entries(world, order.id) == ["carrier_booking_cancelled"]


def test_the_pickup_code_is_the_parcels_own_with_a_check_digit():
    code = pickup_code("shp_aaaaaaaaaaaaaaaaaaaaaaaa")

    assert re.fullmatch(r"PU\d{13}", code) and gs1_check_digit(code[2:14]) == code[14]
    assert pickup_code("shp_aaaaaaaaaaaaaaaaaaaaaaaa") == code != pickup_code("shp_bbbbbbbbbbbbbbbbbbbbbbbb")
    with pytest.raises(ValueError, match="shipment id"):
        pickup_code("")


def test_the_slip_shows_the_store_the_customer_the_code_the_reference_and_the_contents(world):
    order: Order = world.allocated(("MUG", 2), **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None

    slip = pick_slip(order, parcel.id, store, parcel.lines, 700)

    text = slip.document.decode("latin-1")
    assert slip.code == pickup_code(parcel.id) and slip.document.startswith(b"%PDF-1.4")
    for shown in ("STORE PICKUP", "SF store", f"PICKUP CODE: {slip.code}", shipment_reference(order.id, parcel.id),
                  "Contents (2 units):", "L1  MUG  x2", "0.70 kg"):  # fmt: skip
        assert pdf_text(shown) in text, shown  # as the page writes it: parentheses escaped
    assert text.rstrip().endswith("%%EOF")


def test_a_slip_prints_the_customer_s_accented_name_as_the_store_will_be_told_it(world):
    # "Zoë Müller" was printed "Zo? M?ller": the store finds the parcel by the name the customer says.
    customer = {"id": "cus_zoe", "email": "zoe@example.com", "name": "Zoë Müller"}
    order: Order = world.allocated(("MUG", 1), customer=customer, **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None

    slip = pick_slip(order, parcel.id, store, parcel.lines, 350).document

    assert b"Zo\xeb M\xfcller" in printed(slip)  # ë and ü in the fonts' WinAnsiEncoding
    assert slip[15:].isascii()


def test_a_slip_of_one_unit_says_one_unit(world):
    order: Order = world.allocated(("MUG", 1), **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None

    text = pick_slip(order, parcel.id, store, parcel.lines, 350).document.decode("latin-1")

    assert pdf_text("Contents (1 unit):") in text, text


def test_a_slip_names_the_order_by_the_number_the_customer_was_told_it_is_ready_under(world):
    # At the counter the customer names the order their ready notice named: the storefront's number
    # (its external_id) when it has one. The slip printed only the OMS's id, which that customer was
    # never told, so the store could not find the parcel by it.
    order: Order = world.allocated(("MUG", 1), **PICKUP)
    (parcel,) = order.shipments
    ready = world.actions.ready(order.id, parcel.id, actor="key_store")
    (notice,) = notifications(order.model_dump(mode="json"), ready.model_dump(mode="json"))
    store = world.catalog.get_location("store-sf")
    assert store is not None and order.external_id is not None

    text = pick_slip(ready, parcel.id, store, parcel.lines, 350).document.decode("latin-1")

    assert notice.subject == f"Your order {order.external_id} is ready for pickup"
    assert pdf_text(f"Order: {order.external_id}") in text, text
    assert pdf_text(shipment_reference(order.id, parcel.id)) in text  # the OMS's own ids stay on the slip


@pytest.mark.parametrize(
    "number",
    ["marketplace-emea/" + "0123456789" * 11, "marketplace-emea/" + "0123456789" * 9 + "7"],
    ids=["over three lines", "its last character on a line of its own"],
)
def test_a_slip_shows_a_long_storefront_number_whole_for_the_counter_to_match(world, number: str):
    # An external_id may be 128 characters: cut to the label's width ("...") the store could not
    # match the number the customer reads out; it runs on over as many lines as it needs, the last
    # character too when "Order: " and the number fill two lines of 57 characters and one more.
    order: Order = world.allocated(("MUG", 1), external_id=number, **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None

    text = pick_slip(order, parcel.id, store, parcel.lines, 350).document.decode("latin-1")

    shown = "".join(re.findall(r"\(([^()]*)\) Tj", text))
    assert f"Order: {number}" in shown and "..." not in shown, shown


def test_a_slip_of_an_order_placed_without_a_storefront_number_names_it_by_the_oms_id(world):
    order: Order = world.allocated(("MUG", 1), external_id=None, **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None

    text = pick_slip(order, parcel.id, store, parcel.lines, 350).document.decode("latin-1")

    assert pdf_text(f"Order: {order.id}") in text, text


class NamedLikeTheSlips(Carrier):
    NAME = PICK_SLIP_CARRIER


def test_a_carrier_plugin_may_not_name_itself_as_the_oms_pick_slips_do(clock):
    # A booking of carrier "OMS" reads as a pick slip, which no carrier is asked to cancel: a plugin
    # answering that name would have its bookings kept (and billed) when their parcels are given up.
    world = build_world([("MUG", "wh-west", 10)], NamedLikeTheSlips(), clock=clock)
    order_id = world.place(("MUG", 1))
    world.workflow.authorize_payment(order_id, attempt=0)
    world.workflow.reserve_stock(order_id)

    with pytest.raises(PluginError, match=r"'OMS'.*pick slips"):
        world.workflow.create_shipments(order_id)


def test_the_slip_names_the_store_street_the_order_the_customer_gives_and_the_customer_not_the_address(world):
    # At the counter the customer names their order (the number its ready_for_pickup notice named) and
    # themselves; a shipping address sent with a pickup order may name someone else (a front desk).
    order: Order = world.allocated(
        ("MUG", 1), **PICKUP, customer={"id": "cus_2", "email": "grace@example.com", "name": "Grace Hopper"},
        shipping_address=address_body(name="Front desk, Acme"),
    )  # fmt: skip
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None

    text = pick_slip(order, parcel.id, store, parcel.lines, 350).document.decode("latin-1")

    for shown in (f"Order: {order.external_id}", "Grace Hopper", store.address.line1, "grace@example.com"):
        assert pdf_text(shown) in text, shown
    assert pdf_text("Front desk, Acme") not in text


def test_a_ready_pickup_a_carrier_booked_before_has_its_booking_cancelled_when_an_edit_sources_it_again(world, carrier):
    # The parcel leaves the store's shelf for a new one sourced anew: the old carrier label is no
    # parcel's, and the carrier would bill it.
    order = world.allocated(("MUG", 1), **PICKUP)
    (parcel,) = order.shipments
    booked = parcel.model_copy(update={"carrier": Carrier.NAME, "tracking_number": f"ACME-{parcel.id}"})
    world.orders.orders[order.id] = order.model_copy(update={"shipments": [booked]})
    ready = world.actions.ready(order.id, parcel.id, actor="key_store")

    edited = world.actions.edit(order.id, ready.version, OrderEdit(lines=[LineInput(sku="MUG", quantity=2)]),
                                actor="key_web")  # fmt: skip

    assert edited.status is S.AUTHORIZED
    assert carrier.cancelled == [(f"ACME-{parcel.id}", parcel.id, order.id)]
    assert carrier_entries(world, order.id) == ["carrier_booking_cancelled"]


def test_a_wholesale_pickup_slip_lists_every_line_over_as_many_pages_as_it_needs(clock):
    # A shop collecting a 100-line order at the showroom: the slip is what the store picks from, and
    # it listed 11 lines then "... and 89 more lines", so the picker could not tell what to put on
    # the shelf. Every line is printed now, the slip running on over pages that each name the code.
    world = build_world([(sku, "store-sf", 500) for sku in ("MUG", "CAP", "PEN", "TSHIRT")], clock=clock)
    skus = ["MUG", "CAP", "PEN", "TSHIRT"]
    order: Order = world.allocated(*[(skus[n % 4], n % 7 + 1) for n in range(100)], **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None and len(parcel.lines) == 100

    slip = pick_slip(order, parcel.id, store, parcel.lines, 350)

    shown = [text.decode("latin-1") for text in printed(slip.document)]
    assert [text for text in shown if text.startswith("L")] == [
        f"L{n + 1}  {skus[n % 4]}  x{n % 7 + 1}" for n in range(100)
    ]
    assert not any("more lines" in text for text in shown)
    pages = slip.document.count(b"/Type /Page ")
    assert 1 < pages <= 4 and f"/Count {pages} ".encode() in slip.document  # 30-odd rows a page
    footers = [text for text in shown if " page " in text]
    assert footers == [f"Pick slip {slip.code} page {n} of {pages}" for n in range(1, pages + 1)]
    assert read_as_a_reader_walks_it(slip.document) == shown  # page by page, each once, in order


def read_as_a_reader_walks_it(pdf: bytes) -> list[str]:
    """The rows each page the page tree links prints, in order, each page checked on the way: a
    page whose content stream puts every row above the page number at its foot, in fonts that exist."""
    offsets = xref_offsets(pdf)

    def body(reference: bytes) -> bytes:
        number = int(reference.split()[0])
        start = offsets[number]
        assert pdf[start:].startswith(b"%d 0 obj" % number), number
        return pdf[start : pdf.index(b"endobj", start)]

    kids = re.findall(rb"\d+ 0 R", re.search(rb"/Kids \[([^\]]*)\]", pdf).group(1))
    shown: list[str] = []
    for kid in kids:
        page = body(kid)
        assert b"/Type /Page " in page
        for font in re.findall(rb"/F\d (\d+ 0 R)", page):
            assert b"/Type /Font" in body(font)
        stream = body(re.search(rb"/Contents (\d+ 0 R)", page).group(1))
        rows = [(int(size), int(y)) for size, y in re.findall(rb"/F\d (\d+) Tf \d+ (-?\d+) Td", stream)]
        *above, (_, foot) = rows
        assert foot == 18 and all(y >= foot + size for size, y in above), rows  # nothing under the foot
        shown += [text.decode("latin-1") for text in printed(stream)]
    return shown


def test_a_slip_that_fits_one_page_is_one_page_with_no_page_numbers(world):
    order: Order = world.allocated(("MUG", 2), **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None

    slip = pick_slip(order, parcel.id, store, parcel.lines, 700).document

    assert slip.count(b"/Type /Page ") == 1 and b" page 1 of" not in slip


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed")
def test_a_real_pdf_reader_reads_every_line_of_a_long_slip_page_by_page(tmp_path, clock):
    world = build_world([("PEN", "store-sf", 100)], clock=clock)
    order: Order = world.allocated(*[("PEN", 1)] * 40, **PICKUP)
    (parcel,) = order.shipments
    store = world.catalog.get_location("store-sf")
    assert store is not None
    path = tmp_path / "slip.pdf"
    path.write_bytes(pick_slip(order, parcel.id, store, parcel.lines, 400).document)

    result = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True)

    pages = result.stdout.split("\f")[:-1]  # a form feed ends each page
    assert len(pages) == 2 and result.stderr == ""
    assert re.findall(r"^\f?L(\d+) +PEN +x1$", result.stdout, re.M) == [str(n) for n in range(1, 41)]
    assert [page.strip().splitlines()[-1] for page in pages] == [
        f"Pick slip {parcel.tracking_number} page {n} of 2" for n in (1, 2)
    ]

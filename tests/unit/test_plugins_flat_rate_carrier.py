"""The flat_rate_carrier plugin: service names, tracking numbers with a check digit, and a valid 4x6 PDF label."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import entry_points

import pytest

from core import hookimpl
from core.errors import InvalidRequest
from core.models import Address, Fulfillment, Location, Order, ShipmentLine
from core.pdf_pages import gs1_check_digit, pdf_document, pdf_text
from core.plugin_manager import build_plugin_manager
from core.status import OrderStatus
from core.workflow_types import CarrierShipment, RefusedTrackingEvent, TrackingUpdate
from plugins import flat_rate_carrier
from plugins.flat_rate_carrier import is_valid_tracking_number, oms_carrier_create_shipment, tracking_number
from tests.unit.conftest import UPDATED_AT, a_stored_order

TRACKING = re.compile(r"^OMS\d{13}$")


def an_address(**overrides) -> Address:
    fields = {
        "name": "Grace Hopper",
        "line1": "1 Market St",
        "line2": "Suite 400",
        "city": "San Francisco",
        "region": "CA",
        "postal_code": "94105",
        "country": "US",
    }
    return Address(**{**fields, **overrides})


def an_origin() -> Location:
    return Location(
        location_id="wh-east",
        name="East Coast Warehouse",
        type="warehouse",
        address=Address(
            name="OMS East", line1="200 Dock Rd", city="Newark", region="NJ", postal_code="07114", country="US"
        ),
        latitude=40.7357,
        longitude=-74.1724,
        updated_at=UPDATED_AT,
    )


def an_order(
    *lines: tuple[str, int],
    shipping_method: str | None = "standard",
    address: Address | None = None,
    fulfillment: Fulfillment | None = None,
) -> Order:
    return a_stored_order(
        *(lines or [("MUG-1", 2), ("TEE-2", 1)]),
        id="ord_01HZX",
        status=OrderStatus.ALLOCATED,
        shipping_address=address or an_address(),
        fulfillment=fulfillment or Fulfillment(),
        shipping_method=shipping_method,
        version=3,
    )


def ship(order: Order | None = None, shipment_id: str = "shp_01HZX7", lines=None, weight_grams: int = 1250):
    order = order or an_order()
    lines = (
        lines
        if lines is not None
        else [ShipmentLine(line_id=line.line_id, quantity=line.quantity) for line in order.lines]
    )
    return oms_carrier_create_shipment(
        order=order, shipment_id=shipment_id, origin=an_origin(), lines=lines, weight_grams=weight_grams
    )


def xref_offsets(pdf: bytes) -> dict[int, int]:
    """Object number -> byte offset, read from the file's startxref and cross-reference table."""
    start = int(re.search(rb"startxref\s+(\d+)\s+%%EOF\s*$", pdf).group(1))
    assert pdf[start:].startswith(b"xref")
    lines = pdf[start:].split(b"\n")
    first, count = map(int, lines[1].split())
    entries = lines[2 : 2 + count]
    assert all(len(entry) == 19 for entry in entries)  # 20 bytes with the "\n"
    assert entries[0] == b"0000000000 65535 f "
    offsets = {}
    for number, entry in enumerate(entries[1:], start=first + 1):
        offset, generation, kind = entry.split()
        assert (generation, kind) == (b"00000", b"n")
        offsets[number] = int(offset)
    assert re.search(rb"trailer\s*<< /Size %d " % count, pdf)
    return offsets


# --- Registration -----------------------------------------------------------------------------


@pytest.mark.skipif(
    "flat_rate_carrier" not in entry_points(group="oms").names,
    reason="the `flat_rate_carrier` entry point is not in pyproject.toml yet",
)
def test_is_registered_through_the_oms_entry_point(plugins):
    assert plugins.get_plugin("flat_rate_carrier") is flat_rate_carrier


def test_books_a_shipment_through_the_plugin_manager():
    pm = build_plugin_manager(flat_rate_carrier)
    order = an_order()

    shipment = pm.hook.oms_carrier_create_shipment(
        order=order,
        shipment_id="shp_1",
        booking_key="shp_1",
        origin=an_origin(),
        lines=[ShipmentLine(line_id="L1", quantity=2)],
        weight_grams=900,
    )

    assert isinstance(shipment, CarrierShipment)
    assert shipment.carrier == "OMS Flat Rate"
    assert shipment.label_content_type == "application/pdf"


def test_runs_last_so_a_real_carrier_plugin_answers_first():
    booked = CarrierShipment(carrier="Acme", service="Next day", tracking_number="ACME1", label=b"%PDF-")

    class Acme:
        @hookimpl
        def oms_carrier_create_shipment(self, shipment_id):
            return booked

    # Registered first: without trylast the built-in, registered later, would be called first.
    pm = build_plugin_manager(Acme(), flat_rate_carrier)

    shipment = pm.hook.oms_carrier_create_shipment(
        order=an_order(), shipment_id="shp_1", booking_key="shp_1", origin=an_origin(), lines=[], weight_grams=0
    )

    assert shipment is booked


# --- Service ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "service"),
    [
        ("standard", "Ground"),
        ("ground", "Ground"),
        ("express", "Express"),
        ("two_day", "Two Day"),
        ("overnight", "Overnight"),
        (None, "Ground"),
    ],
)
def test_service_follows_the_shipping_method(method, service):
    assert ship(an_order(shipping_method=method)).service == service


# --- Tracking number --------------------------------------------------------------------------


def test_tracking_number_is_oms_twelve_digits_and_a_check_digit():
    number = ship().tracking_number

    assert TRACKING.fullmatch(number)
    assert gs1_check_digit(number[3:15]) == number[15]
    assert is_valid_tracking_number(number)


def test_tracking_number_is_derived_from_the_shipment_id_so_a_retry_gets_the_same():
    assert ship(shipment_id="shp_A").tracking_number == ship(shipment_id="shp_A").tracking_number
    assert ship(shipment_id="shp_A").tracking_number == tracking_number("shp_A")
    assert len({tracking_number(f"shp_{n}") for n in range(1000)}) == 1000


def test_check_digit_is_the_gs1_mod_10_digit():
    assert gs1_check_digit("400638133393") == "1"  # the EAN-13 4006381333931
    assert gs1_check_digit("000000000000") == "0"


def test_check_digit_catches_every_single_digit_error():
    number = tracking_number("shp_check")
    for position in range(3, len(number)):
        for digit in "0123456789":
            if digit != number[position]:
                assert not is_valid_tracking_number(number[:position] + digit + number[position + 1 :])


@pytest.mark.parametrize("value", ["", "OMS", "OMS123", "XYZ" + "0" * 13, "OMS" + "0" * 14, "OMS00000000000a0"])
def test_malformed_tracking_numbers_are_not_valid(value):
    assert not is_valid_tracking_number(value)


def test_an_empty_shipment_id_is_refused():
    with pytest.raises(ValueError):
        tracking_number("")


# --- Label ------------------------------------------------------------------------------------


def test_label_is_a_single_page_pdf_1_4_that_ends_with_eof():
    label = ship().label

    assert label.startswith(b"%PDF-1.4\n")
    assert label.rstrip().endswith(b"%%EOF")
    assert label.count(b"/Type /Page ") == 1
    assert b"/MediaBox [0 0 288 432]" in label  # 4 x 6 inches
    assert b"/BaseFont /Helvetica" in label


def test_label_xref_offsets_point_at_their_objects():
    label = ship().label

    offsets = xref_offsets(label)

    assert len(offsets) >= 6
    for number, offset in offsets.items():
        assert label[offset:].startswith(b"%d 0 obj" % number), number


def test_label_content_stream_length_is_exact():
    label = ship().label

    match = re.search(rb"<< /Length (\d+) >>\nstream\n", label)
    start = match.end()
    length = int(match.group(1))

    assert label[start + length : start + length + len(b"\nendstream")] == b"\nendstream"


def test_label_shows_both_addresses_tracking_service_ids_weight_and_lines():
    shipment = ship(weight_grams=1250)
    label = shipment.label

    for text in [
        shipment.tracking_number,
        "San Francisco CA 94105",
        "Grace Hopper",
        "Suite 400",
        "East Coast Warehouse",
        "200 Dock Rd",
        "Newark NJ 07114",
        "SERVICE: GROUND",
        "shp_01HZX7",
        "ord_01HZX",
        "1.25 kg",
        "MUG-1  x2",
        "TEE-2  x1",
    ]:
        assert text.encode() in label, text


def test_a_label_counts_its_units_in_words_a_packer_reads_one_unit_and_several():
    one = ship(an_order(("MUG-1", 1))).label
    several = ship().label
    returned = flat_rate_carrier.oms_carrier_return_label(
        order=an_order(("MUG-1", 1)), return_id="rma_01HZX", destination=an_origin(),
        lines=[ShipmentLine(line_id="L1", quantity=1)], weight_grams=350,
    ).label  # fmt: skip

    assert b"(Contents \\(1 unit\\):)" in one and b"(Contents \\(1 unit\\):)" in returned
    assert b"(Contents \\(3 units\\):)" in several


def test_label_is_deterministic():
    assert ship().label == ship().label


def printed(pdf: bytes) -> list[bytes]:
    """The codes each text-showing operator of a page prints: its literal string, unescaped. The
    page's fonts declare /WinAnsiEncoding, so é is 0xE9 and ë 0xEB (Windows-1252's codes)."""
    strings = re.findall(rb"\(((?:\\.|[^\\)])*)\) Tj", pdf)
    escape = re.compile(rb"\\([0-7]{3}|[\\()])")
    return [escape.sub(lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3 else m[1], each) for each in strings]


def test_a_label_prints_accented_names_in_its_font_s_encoding_escaped_and_ascii():
    # A carrier's scanner and a driver read these: "Zoë" printed "Zo?" and "Zürich" "Z?rich".
    address = an_address(
        name="Zoë (Müller) \\ Co", line2="Café Société", city="Zürich", country="CH", region=None, postal_code="8001"
    )

    label = ship(an_order(address=address)).label

    assert b"(Zo\\353 \\(M\\374ller\\) \\\\ Co) Tj" in label
    assert {"Zoë (Müller) \\ Co".encode("cp1252"), b"Caf\xe9 Soci\xe9t\xe9", b"Z\xfcrich 8001"} <= set(printed(label))
    assert label[15:].isascii()  # all but the header's binary marker comment
    xref_offsets(label)


def test_pdf_text_escapes_the_string_delimiters_and_writes_what_the_font_shows_as_its_code():
    assert pdf_text("a(b)c\\d") == "a\\(b\\)c\\\\d"
    # A control character has no glyph; the euro sign is in WinAnsiEncoding (0x80), as é is (0xE9).
    assert pdf_text("tab\there\nnewline € é1") == "tab?here?newline \\200 \\3511"


def test_a_letter_the_font_cannot_show_prints_without_its_accent_and_anything_else_as_a_question_mark():
    # WinAnsiEncoding holds Western European letters only: ř, ź and Ō print as r, z and O (their
    # letters without the accent, by NFKD), Ł, which has none, as "?", and so do CJK and emoji.
    assert pdf_text("Dvořák, Łódź, Ōsaka") == "Dvor\\341k, ?\\363dz, Osaka"
    assert pdf_text("東京 📦 ｆｉﬁ") == "?? ? fifi"
    # What a letter stands for is written as any text is: Ǣ is Æ (0xC6), ﹙ a parenthesis, escaped.
    assert pdf_text("Ǣsa ﹙1﹚") == "\\306sa \\(1\\)"


def test_a_label_s_title_is_shown_by_a_reader_as_it_is_written():
    # The document's title is a text string (outside the page): UTF-16 when it is not ASCII.
    document = pdf_document(b"", title="Étiquette 東京")

    assert b"/Title <FEFF00C900740069007100750065007400740065002067714EAC>" in document
    assert pdf_document(b"", title="Shipping label OMS1").count(b"/Title (Shipping label OMS1)") == 1


def test_a_long_parcel_lists_the_first_lines_and_counts_the_rest():
    order = an_order(*[(f"SKU-{n}", 1) for n in range(40)])

    label = ship(order).label

    assert b"SKU-0  x1" in label
    assert b"... and 29 more lines" in label
    assert b"SKU-39" not in label
    positions = [int(y) for y in re.findall(rb"Tf \d+ (-?\d+) Td", label)]
    assert min(positions) > 0  # nothing falls off the page


def test_long_text_is_cut_to_the_label_width():
    label = ship(an_order(address=an_address(line1="9" * 150))).label

    assert b"9" * 150 not in label
    assert re.search(rb"\(9+\.\.\.\)", label)


def test_a_negative_weight_is_refused():
    with pytest.raises(ValueError):
        ship(weight_grams=-1)


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed")
def test_label_text_renders_in_a_real_pdf_reader(tmp_path):
    shipment = ship()
    path = tmp_path / "label.pdf"
    path.write_bytes(shipment.label)

    result = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True)

    assert shipment.tracking_number in result.stdout
    assert "San Francisco CA 94105" in result.stdout
    assert "SERVICE: GROUND" in result.stdout
    assert "Syntax Error" not in result.stderr


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed")
@pytest.mark.parametrize("document", ["label", "return label"])
def test_a_real_pdf_reader_reads_an_accented_name_off_a_label_as_it_was_written(tmp_path, document: str):
    address = an_address(name="Zoë Müller", line1="Rua São Bento 12", line2="Dvořák Łódź", city="São Paulo",
                         country="BR", region="SP", postal_code="01010-000")  # fmt: skip
    order = an_order(("MUG-1", 1), address=address)
    if document == "label":
        pdf = ship(order).label
    else:
        pdf = flat_rate_carrier.oms_carrier_return_label(
            order=order, return_id="rma_01HZX", destination=an_origin(),
            lines=[ShipmentLine(line_id="L1", quantity=1)], weight_grams=350,
        ).label  # fmt: skip
    path = tmp_path / "label.pdf"
    path.write_bytes(pdf)

    result = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True)

    for shown in ("Zoë Müller", "Rua São Bento 12", "Dvorák ?ódz", "São Paulo SP 01010-000"):
        assert shown in result.stdout, result.stdout
    assert result.stderr == ""


# --- Tracking webhooks --------------------------------------------------------------------------------


def flat_rate_event(shipment_id: str = "shp_01HZX7", **overrides) -> dict:
    return {
        "reference": f"ord_01HZX/{shipment_id}",
        "tracking_number": tracking_number(shipment_id),
        "status": "delivered",
        "at": "2026-11-23T09:30:00+01:00",
        **overrides,
    }


def test_the_label_carries_the_reference_a_tracking_event_echoes():
    assert b"Ref: ord_01HZX/shp_01HZX7" in ship(shipment_id="shp_01HZX7").label


def test_a_tracking_webhook_reads_as_updates_of_the_shipments_it_references():
    pm = build_plugin_manager(flat_rate_carrier)
    payload = {"events": [flat_rate_event(status="in_transit", description="At the hub"), flat_rate_event()]}

    updates = pm.hook.oms_carrier_tracking_update(carrier="oms-flat-rate", payload=payload, headers={}, body="")

    assert [(u.order_id, u.shipment_id, u.status, u.description) for u in updates] == [
        ("ord_01HZX", "shp_01HZX7", "in_transit", "At the hub"),
        ("ord_01HZX", "shp_01HZX7", "delivered", ""),
    ]
    # The carrier's 09:30 at +01:00, the same moment kept in UTC as every time the API answers.
    assert updates[1].at.isoformat() == "2026-11-23T08:30:00+00:00"


def test_another_carriers_webhook_is_left_to_its_plugin():
    pm = build_plugin_manager(flat_rate_carrier)

    assert pm.hook.oms_carrier_tracking_update(carrier="ups", payload={}, headers={}, body="") is None


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (flat_rate_event(tracking_number=tracking_number("shp_other")), "events[1].tracking_number"),
        (flat_rate_event(reference="shp_01HZX7"), "events[1].reference"),
        (flat_rate_event(at="2026-11-23T09:30:00"), "events[1].at"),
        (flat_rate_event(status="lost"), "events[1].status"),
        (flat_rate_event(signed_by="A. Neighbour"), "events[1].signed_by"),
        ({"status": "delivered"}, "events[1].reference"),
        ("delivered", "events[1]"),
    ],
    ids=["wrong-tracking-number", "bad-reference", "naive-time", "unknown-status", "unknown-field", "missing",
         "not-an-object"],
)  # fmt: skip
def test_an_event_this_carrier_would_not_send_is_refused_in_its_place_naming_the_field(event, field):
    """One bad event refuses no other: the carrier would send the good ones again for ever."""
    good = flat_rate_event()

    read = flat_rate_carrier.tracking_updates({"events": [good, event, good]})

    assert [type(item) for item in read] == [TrackingUpdate, RefusedTrackingEvent, TrackingUpdate]
    assert field in [detail.field for detail in read[1].details]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"parcels": []}, "events"),
        ([flat_rate_event()], "body"),
        ({"events": flat_rate_event()}, "events"),
        ({"events": [flat_rate_event()] * 101}, "events"),
    ],
    ids=["not-this-carriers-shape", "an-array", "events-not-a-list", "too-many-events"],
)  # fmt: skip
def test_a_webhook_this_carrier_would_not_send_is_refused_whole_naming_the_field(payload, field):
    with pytest.raises(InvalidRequest) as refused:
        flat_rate_carrier.tracking_updates(payload)

    assert field in [detail["field"] for detail in refused.value.details]

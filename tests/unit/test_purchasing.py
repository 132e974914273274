"""Purchase orders as pure domain: their one transition table, receipts that never exceed what was
ordered, the units they bring while open, and the requests the API accepts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from core.errors import Conflict, InvalidRequest, InvalidTransition
from core.money import Money
from core.purchasing import (
    INCOMING,
    MAX_RECEIPT_BYTES,
    NewPurchaseOrder,
    PurchaseOrder,
    PurchaseOrderLine,
    PurchaseOrderReceipt,
    Receipt,
    ReceivedLine,
    RecordedReceipt,
    counted_again,
    receipts_listed,
    record_of,
)
from core.status import PURCHASE_ORDER_TRANSITIONS, PurchaseOrderStatus, check_purchase_order_step
from tests.builders import NOW

PO = PurchaseOrderStatus


def a_po(status: PO = PO.OPEN, **received: int) -> PurchaseOrder:
    cost = Money.of("4.00", "USD")
    return PurchaseOrder(
        id="po_" + "a" * 24,
        vendor_id="acme",
        location_id="wh-east",
        status=status,
        lines=[
            PurchaseOrderLine(sku="MUG", quantity=5, received_quantity=received.get("MUG", 0), unit_cost=cost),
            PurchaseOrderLine(sku="CUP", quantity=2, received_quantity=received.get("CUP", 0), unit_cost=cost),
        ],
        expected_at=NOW + timedelta(days=7),
        created_at=NOW,
        version=3,
    )


def test_the_contract_values_and_every_status_has_a_row():
    assert [s.value for s in PO] == ["draft", "open", "partially_received", "received", "cancelled"]
    assert set(PURCHASE_ORDER_TRANSITIONS) == set(PO)
    assert {PO.OPEN, PO.PARTIALLY_RECEIVED} == INCOMING


@pytest.mark.parametrize(("current", "target"), [(a, b) for a in PO for b in PO])
def test_a_step_follows_the_table(current, target):
    if target in PURCHASE_ORDER_TRANSITIONS[current]:
        check_purchase_order_step(current, target)
    else:
        with pytest.raises(InvalidTransition):
            check_purchase_order_step(current, target)


def test_submit_opens_a_draft_once_and_each_change_is_the_next_version():
    later = NOW + timedelta(hours=1)
    opened = a_po(PO.DRAFT).submit(at=NOW)
    assert (opened.status, opened.version, opened.submitted_at) == (PO.OPEN, 4, NOW)
    # Sent again (its answer lost), a submit finds the PO submitted: it is answered as it is.
    assert opened.submit(at=later) is opened and opened.submit({"MUG": Money.of("4.00", "USD")}, at=later) is opened
    partly = opened.receive(receipt(("MUG", 1)), at=NOW)
    assert partly.submit(at=later) is partly
    # One that would price it otherwise, or that finds it cancelled, is refused.
    with pytest.raises(InvalidTransition):
        opened.submit({"MUG": Money.of("5.00", "USD")}, at=later)
    with pytest.raises(InvalidTransition):
        opened.submit({"PLATE": Money.of("4.00", "USD")}, at=later)
    with pytest.raises(InvalidTransition):
        opened.cancel(at=NOW).submit(at=later)


def test_a_refused_submit_or_receipt_says_why_in_a_buyers_words():
    """Before: "a purchase order cannot go from open to open", "... from draft to received": the
    transition table's words, naming a step the buyer never asked for (seen on make run)."""
    opened = a_po(PO.DRAFT).submit(at=NOW)
    with pytest.raises(InvalidTransition, match=r"^purchase order po_a+ was submitted already, with other costs: "):
        opened.submit({"MUG": Money.of("5.00", "USD")}, at=NOW)
    with pytest.raises(InvalidTransition, match=r"^purchase order po_a+ was created open, not as a draft: "):
        a_po(PO.OPEN).submit(at=NOW)
    with pytest.raises(InvalidTransition, match=r"^purchase order po_a+ is cancelled$"):
        opened.cancel(at=NOW).submit(at=NOW)
    with pytest.raises(InvalidTransition, match=r"^purchase order po_a+ is a draft: submit it to its vendor first$"):
        a_po(PO.DRAFT).receive(receipt(("MUG", 1)), at=NOW)
    with pytest.raises(InvalidTransition, match=r"^purchase order po_a+ is cancelled$"):
        opened.cancel(at=NOW).receive(receipt(("MUG", 1)), at=NOW)


@pytest.mark.parametrize("status", [PO.OPEN, PO.PARTIALLY_RECEIVED, PO.RECEIVED])
def test_a_po_created_open_was_never_a_draft_and_no_submit_of_it_is_a_retry(status):
    """Submit is draft -> open: a PO created open (no `submitted_at`) has no submit to repeat, so
    the transition table answers it, as for any status a submit cannot leave from."""
    created = a_po(status)
    assert created.submitted_at is None and not created.submitted_as(None)

    with pytest.raises(InvalidTransition):
        created.submit(at=NOW)
    with pytest.raises(InvalidTransition):
        created.submit({"MUG": Money.of("4.00", "USD")}, at=NOW)


def test_each_new_version_is_validated_so_a_wrong_count_cost_or_time_is_refused_not_stored():
    """model_copy does not validate: each change (submit, grow, receive) goes through _next, which
    validates the PO and its lines as a new one, so no value a change got wrong is stored."""
    draft = a_po(PO.DRAFT)
    with pytest.raises(ValidationError, match="unit_cost must not be negative"):
        draft.submit({"MUG": Money.of("-4.00", "USD")}, at=NOW)
    with pytest.raises(ValidationError, match="submitted_at"):
        draft.submit(at="when the vendor answers")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        draft.grow("MUG", -5, None, at=NOW)  # its line of 5 would order 0
    over = a_po().lines[1].model_copy(update={"received_quantity": 3})  # receive() refuses it first
    with pytest.raises(ValidationError, match="3 received of 2 ordered"):
        a_po()._next(PO.PARTIALLY_RECEIVED, at=NOW, lines=[a_po().lines[0], over])
    grown = draft.grow("MUG", 3, None, at=NOW)
    assert (grown.lines[0].quantity, grown.version, grown.status) == (8, 4, PO.DRAFT)


def test_a_cancel_sent_again_answers_the_cancelled_po_as_it_is():
    cancelled = a_po(PO.PARTIALLY_RECEIVED, MUG=1).cancel(at=NOW)
    assert cancelled.cancel(at=NOW) is cancelled


def receipt(*lines: tuple[str, int]) -> Receipt:
    return Receipt.model_validate({"lines": [{"sku": sku, "quantity": quantity} for sku, quantity in lines]})


def test_receipts_move_the_po_to_partially_received_then_received():
    partly = a_po().receive(receipt(("MUG", 3)), at=NOW)
    assert partly.status is PO.PARTIALLY_RECEIVED and partly.outstanding() == {"MUG": 2, "CUP": 2}
    done = partly.receive(receipt(("MUG", 2), ("CUP", 2)), at=NOW)
    assert done.status is PO.RECEIVED and done.outstanding() == {"MUG": 0, "CUP": 0} and done.version == 5


# a_po(MUG=1): 5 ordered, 1 received; the units are the receipt's, its lines of the sku added up.
MUG_OVER = "{} MUG in this receipt, 4 outstanding (5 ordered, 1 received already)"


@pytest.mark.parametrize(
    ("lines", "details"),
    [
        ([("MUG", 6)], [{"field": "lines[0].quantity", "message": MUG_OVER.format(6)}]),
        (
            [("CUP", 1), ("MUG", 5), ("PLATE", 1)],
            [{"field": "lines[1].quantity", "message": MUG_OVER.format(5)},
             {"field": "lines[2].sku", "message": "PLATE is not on purchase order po_" + "a" * 24}],
        ),
        # Lines of one sku add up: the line whose units pass what is outstanding is named.
        (
            [("MUG", 3), ("MUG", 1), ("MUG", 1)],
            [{"field": "lines[2].quantity", "message": MUG_OVER.format(5)}],
        ),
        # Only that line: the one after it is no second mistake to correct.
        (
            [("MUG", 5), ("MUG", 2)],
            [{"field": "lines[0].quantity", "message": MUG_OVER.format(7)}],
        ),
    ],
)  # fmt: skip
def test_more_than_outstanding_or_a_sku_not_ordered_is_refused_whole_naming_the_receipt_line(lines, details):
    po = a_po(MUG=1)
    with pytest.raises(InvalidRequest) as refused:
        po.receive(receipt(*lines), at=NOW)
    assert refused.value.code == "over_receipt" and refused.value.details == details


@pytest.mark.parametrize("status", [PO.DRAFT, PO.RECEIVED, PO.CANCELLED])
def test_only_an_open_po_is_received(status):
    with pytest.raises(InvalidTransition):
        a_po(status).receive(receipt(("MUG", 1)), at=NOW)


def test_a_partly_received_po_may_be_cancelled_but_a_received_one_not():
    assert a_po(PO.PARTIALLY_RECEIVED, MUG=1).cancel(at=NOW).status is PO.CANCELLED
    with pytest.raises(InvalidTransition):
        a_po(PO.RECEIVED, MUG=5, CUP=2).cancel(at=NOW)


def receipts_counted(po: PurchaseOrder, *receipts: tuple[str, Receipt]) -> tuple[PurchaseOrder, dict, list]:
    """`po` after each receipt in turn, the receipts it keeps by key, and each one's answer."""
    kept: dict[str, RecordedReceipt] = {}
    answers = []
    for key, each in receipts:
        received = po.receive(each, at=NOW)
        kept[key] = record_of(each, received, key, kept)
        po = received
        answers.append(po)
    return po, kept, answers


def test_a_receipt_sent_again_answers_the_po_as_it_left_it_whatever_came_after():
    first, second = receipt(("MUG", 2)), receipt(("MUG", 3), ("CUP", 2))
    po, kept, answers = receipts_counted(a_po(), ("k1", first), ("k2", second))
    cancelled = a_po(PO.CANCELLED, MUG=4, CUP=1).model_copy(update={"version": 9})  # and more since

    assert counted_again(po, kept, "k1", first) == answers[0]
    assert counted_again(cancelled, kept, "k1", first) == answers[0]
    assert counted_again(po, kept, "k2", second) == answers[1] == po
    assert answers[1].status is PO.RECEIVED and answers[0].status is PO.PARTIALLY_RECEIVED


def test_a_key_sent_again_with_another_body_is_409_however_late():
    first = receipt(("MUG", 2))
    po, kept, _ = receipts_counted(a_po(), ("k1", first))

    for other in (receipt(("MUG", 3)), receipt(("CUP", 2)), receipt(("MUG", 1), ("MUG", 1))):
        with pytest.raises(Conflict) as reused:
            counted_again(po, kept, "k1", other)
        assert reused.value.code == "idempotency_key_reused"


def test_a_key_kept_before_receipts_kept_their_bodies_answers_the_po_as_it_is():
    # Counted once all the same: only the answer cannot be rebuilt.
    po, kept, _ = receipts_counted(a_po(), ("k1", receipt(("MUG", 2))))
    kept["old"] = RecordedReceipt()

    assert counted_again(po, kept, "old", receipt(("CUP", 1))) == po
    assert counted_again(po, kept, "k1", receipt(("MUG", 2))) == po


def test_the_receipts_a_po_keeps_are_bounded_and_one_past_the_bound_is_409(monkeypatch):
    # Unbounded, a PO received a carton at a time outgrew DynamoDB's 400 KB item and every later
    # receipt or cancel of it failed.
    po, kept, _ = receipts_counted(a_po(), ("k1", receipt(("MUG", 1))), ("k2", receipt(("MUG", 1))))
    one = receipt(("CUP", 1))
    fits = record_of(one, po.receive(one, at=NOW), "k3", kept)
    monkeypatch.setattr("core.purchasing.MAX_RECEIPT_BYTES", sum(r.size(k) for k, r in kept.items()) + fits.size("k3"))

    assert record_of(one, po.receive(one, at=NOW), "k3", kept) == fits
    with pytest.raises(Conflict) as full:
        record_of(one, po.receive(one, at=NOW), "k30", kept)
    assert full.value.code == "too_many_receipts"


def test_the_longest_po_and_the_receipts_it_keeps_fit_one_dynamodb_item():
    cost = Money.of("999999999999.99", "USD")
    lines = [PurchaseOrderLine(sku=f"{n:02d}" + "S" * 126, quantity=10**9, received_quantity=10**9, unit_cost=cost)
             for n in range(99)]  # fmt: skip
    po = a_po().model_copy(update={"lines": lines, "vendor_id": "V" * 128, "location_id": "L" * 128})

    assert len(po.model_dump_json()) + MAX_RECEIPT_BYTES < 350_000  # 400 KB less the keys and attributes' names


def test_a_receipt_adds_up_lines_of_the_same_sku():
    receipt = Receipt.model_validate({"lines": [{"sku": "MUG", "quantity": 1}, {"sku": "MUG", "quantity": 2}]})
    assert receipt.units() == {"MUG": 3}


@pytest.mark.parametrize(
    "change",
    [
        {"lines": []},
        {"lines": [{"sku": "MUG", "quantity": 0, "unit_cost": {"amount": "1.00", "currency": "USD"}}]},
        {"lines": [{"sku": "MUG", "quantity": 1, "unit_cost": {"amount": "1.00", "currency": "USD"}}] * 2},
        {"expected_at": "2026-12-01T10:00:00"},
    ],
)
def test_a_new_po_needs_lines_of_distinct_skus_positive_quantities_and_a_zoned_date(change):
    body = {
        "vendor_id": "acme",
        "location_id": "wh-east",
        "lines": [{"sku": "MUG", "quantity": 1, "unit_cost": {"amount": "1.00", "currency": "USD"}}],
    }
    NewPurchaseOrder.model_validate(body)
    with pytest.raises(ValidationError):
        NewPurchaseOrder.model_validate({**body, **change})


def test_a_due_date_sent_with_an_offset_is_kept_and_shown_in_utc():
    # API.md: times are RFC 3339 in UTC, whatever zone a client wrote one in.
    body = {
        "vendor_id": "v1",
        "location_id": "wh1",
        "lines": [{"sku": "MUG", "quantity": 5, "unit_cost": {"amount": "1.00", "currency": "USD"}}],
        "expected_at": "2027-01-01T05:30:00+05:30",
    }

    request = NewPurchaseOrder.model_validate(body)

    assert request.model_dump(mode="json")["expected_at"] == "2027-01-01T00:00:00Z"


@pytest.mark.parametrize("sent", [1_900_000_000, 1_900_000_000.5, "1900000000", "1900000000000", "2030"])
def test_a_due_date_that_is_not_an_rfc_3339_time_is_refused_naming_it(sent):
    # Unix seconds or milliseconds, as a number or a string, would be taken for a moment nobody wrote.
    body = {
        "vendor_id": "v1",
        "location_id": "wh1",
        "lines": [{"sku": "MUG", "quantity": 5, "unit_cost": {"amount": "1.00", "currency": "USD"}}],
        "expected_at": sent,
    }

    with pytest.raises(ValidationError) as refused:
        NewPurchaseOrder.model_validate(body)

    assert [error["loc"] for error in refused.value.errors()] == [("expected_at",)]


NEGATIVE = {"amount": "-4.00", "currency": "USD"}


def test_a_unit_cost_below_zero_is_refused_wherever_a_cost_is_given():
    # A cost is what the vendor is paid per unit: below zero it would book the vendor paying us.
    from core.purchasing import Submission
    from core.reorder import ReorderRequest

    line = {"sku": "MUG", "quantity": 1, "unit_cost": NEGATIVE}
    with pytest.raises(ValidationError) as refused:
        NewPurchaseOrder.model_validate({"vendor_id": "acme", "location_id": "wh-east", "lines": [line]})
    assert refused.value.errors()[0]["loc"] == ("lines", 0, "unit_cost")
    with pytest.raises(ValidationError):
        Submission.model_validate({"lines": [{"sku": "MUG", "unit_cost": NEGATIVE}]})
    with pytest.raises(ValidationError):
        ReorderRequest.model_validate(
            {"reorder_point": 5, "reorder_quantity": 20, "vendor_id": "acme", "unit_cost": NEGATIVE}
        )
    free = {"sku": "MUG", "quantity": 1, "unit_cost": {"amount": "0.00", "currency": "USD"}}
    NewPurchaseOrder.model_validate({"vendor_id": "acme", "location_id": "wh-east", "lines": [free]})  # a free sample


def test_a_purchase_order_is_priced_in_one_currency():
    # One order to one vendor: its lines in two currencies could be neither totalled nor invoiced.
    from core.purchasing import Submission

    usd = {"sku": "MUG", "quantity": 1, "unit_cost": {"amount": "4.00", "currency": "USD"}}
    jpy = {"sku": "CUP", "quantity": 1, "unit_cost": {"amount": "400", "currency": "JPY"}}
    with pytest.raises(ValidationError) as refused:
        NewPurchaseOrder.model_validate({"vendor_id": "acme", "location_id": "wh-east", "lines": [usd, jpy]})
    assert refused.value.errors()[0]["loc"] == ("lines", 1, "unit_cost")

    draft = a_po(PO.DRAFT)  # both lines in USD
    with pytest.raises(InvalidRequest) as mixed:
        draft.submit(
            Submission.model_validate({"lines": [{"sku": "CUP", "unit_cost": jpy["unit_cost"]}]}).prices(), at=NOW
        )
    assert mixed.value.code == "mixed_currencies"
    assert draft.submit({"CUP": Money.of("3.00", "USD")}, at=NOW).status is PO.OPEN


def test_a_price_for_a_sku_not_on_the_draft_names_its_line_of_the_submission():
    # API.md's error shape names the offending field: the details said `lines` for every unknown
    # sku, so a client with many priced lines could not tell which one to fix.
    from core.purchasing import Submission

    cost = {"amount": "1.00", "currency": "USD"}
    skus = ["MUG", "PLATE", "CUP", "BOWL"]
    submission = Submission.model_validate({"lines": [{"sku": sku, "unit_cost": cost} for sku in skus]})

    with pytest.raises(InvalidRequest) as refused:
        a_po(PO.DRAFT).submit(submission.prices(), at=NOW)

    assert refused.value.details == [
        {"field": "lines[1].sku", "message": "PLATE is not on purchase order po_" + "a" * 24},
        {"field": "lines[3].sku", "message": "BOWL is not on purchase order po_" + "a" * 24},
    ]


# --- Receipts listed on the PO: what arrived, and when (an ERP books a goods-received note of each) --


def test_each_receipt_is_listed_on_the_po_with_its_time_and_units_per_sku_and_the_po_says_when_it_changed():
    later = NOW + timedelta(days=1)
    first = a_po().receive(receipt(("MUG", 2), ("CUP", 1), ("MUG", 1)), at=NOW)
    second = first.receive(receipt(("CUP", 1)), at=later)

    assert second.receipts == [
        PurchaseOrderReceipt(
            received_at=NOW, lines=[ReceivedLine(sku="MUG", quantity=3), ReceivedLine(sku="CUP", quantity=1)]
        ),
        PurchaseOrderReceipt(received_at=later, lines=[ReceivedLine(sku="CUP", quantity=1)]),
    ]
    assert (first.updated_at, second.updated_at) == (NOW, later)
    assert a_po().updated_at is None  # one last written before the OMS kept the time


def test_a_submit_a_cancel_and_a_draft_grown_each_say_when_the_po_changed():
    later = NOW + timedelta(hours=2)
    assert a_po(PO.DRAFT).submit(at=later).updated_at == later
    assert a_po(PO.DRAFT).grow("MUG", 1, None, at=later).updated_at == later
    assert a_po().cancel(at=later).updated_at == later
    cancelled = a_po().cancel(at=NOW)
    assert cancelled.cancel(at=later).updated_at == NOW  # a cancel sent again changes nothing


def test_the_receipts_kept_are_listed_oldest_first_and_one_kept_without_its_units_is_not():
    """Receipts are kept by key (a map: no order), each with the version of the PO it made: that
    orders them. One kept before receipts kept their time shows none (null); one kept before they
    kept their units cannot say what arrived, and is left out."""
    later = NOW + timedelta(days=3)
    kept = {
        "b": RecordedReceipt(digest="d2", version=7, units={"CUP": 2}, received_at=later),
        "old": RecordedReceipt(),
        "a": RecordedReceipt(digest="d1", version=5, units={"MUG": 1, "CUP": 1}),
    }

    assert receipts_listed(kept) == [
        PurchaseOrderReceipt(
            received_at=None, lines=[ReceivedLine(sku="MUG", quantity=1), ReceivedLine(sku="CUP", quantity=1)]
        ),
        PurchaseOrderReceipt(received_at=later, lines=[ReceivedLine(sku="CUP", quantity=2)]),
    ]


def test_a_receipt_keeps_the_time_it_was_counted_and_the_bound_counts_that_time(monkeypatch):
    po, kept, _ = receipts_counted(a_po(), ("k1", receipt(("MUG", 1))))
    one = receipt(("CUP", 1))
    received = po.receive(one, at=NOW + timedelta(days=1))
    record = record_of(one, received, "k2", kept)
    assert record.received_at == received.updated_at == NOW + timedelta(days=1)
    # Room for the receipt's digest, version and units but not its time: refused, nothing counted.
    untimed = record.model_copy(update={"received_at": None}).size("k2")
    monkeypatch.setattr("core.purchasing.MAX_RECEIPT_BYTES", sum(r.size(k) for k, r in kept.items()) + untimed)

    with pytest.raises(Conflict) as full:
        record_of(one, received, "k2", kept)
    assert full.value.code == "too_many_receipts"


def test_a_receipt_sent_again_answers_with_the_receipts_listed_up_to_it_and_its_time():
    later = NOW + timedelta(days=1)
    first = receipt(("MUG", 2))
    po = a_po().receive(first, at=NOW)
    kept = {"k1": record_of(first, po, "k1", {})}
    after = po.receive(receipt(("CUP", 1)), at=later)
    kept["k2"] = record_of(receipt(("CUP", 1)), after, "k2", kept)

    again = counted_again(after, kept, "k1", first)

    assert again == po and again.receipts == [
        PurchaseOrderReceipt(received_at=NOW, lines=[ReceivedLine(sku="MUG", quantity=2)])
    ]
    assert again.updated_at == NOW

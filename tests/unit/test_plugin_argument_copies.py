"""The plugin manager's copy of a hook's arguments is a deep copy: what the originals share the
copies share, and nothing done to a copy reaches the original."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from pydantic import BaseModel, PrivateAttr

from core.models import Product
from core.money import Money
from core.plugin_manager import _copied
from core.pricing_types import DraftLine, PricingDraft
from tests.builders import place_order


def _draft() -> tuple[PricingDraft, Product]:
    product = Product(
        sku="TSHIRT", name="Black T-shirt", price=Money.of("19.99", "USD"), updated_at=datetime.now(UTC),
        attributes={"acme.tax_class": "apparel"},
    )  # fmt: skip
    command = place_order(lines=[{"sku": "TSHIRT", "quantity": 2}])
    lines = [
        DraftLine(line_id=f"L{i}", product=product, quantity=1, unit_price=product.price, subtotal=product.price)
        for i in (1, 2)
    ]
    draft = PricingDraft(
        channel=command.channel, currency="USD", customer=command.customer, lines=lines,
        shipping_address=command.shipping_address, fulfillment=command.fulfillment, shipping_method=None,
        promo_codes=["SAVE10"],
    )  # fmt: skip
    return draft, product


def test_a_copy_equals_its_original_and_shares_no_mutable_part_with_it():
    draft, product = _draft()

    copied = _copied(draft, {})

    assert copied == draft == copy.deepcopy(draft)
    assert copied is not draft
    assert copied.lines is not draft.lines
    assert copied.lines[0].product is not product
    assert copied.lines[0].product.attributes is not product.attributes
    assert copied.customer is not draft.customer and copied.shipping_address is not draft.shipping_address
    assert copied.model_fields_set == draft.model_fields_set


def test_copies_share_what_the_originals_shared_within_one_call():
    draft, product = _draft()
    memo: dict[int, object] = {}

    copied_draft, copied_product = _copied(draft, memo), _copied(product, memo)

    assert copied_draft.lines[0].product is copied_draft.lines[1].product is copied_product


def test_editing_a_copy_leaves_the_original_alone():
    draft, product = _draft()

    copied = _copied(draft, {})
    copied.lines[0].product.name = "renamed"
    copied.lines[0].product.attributes["acme.tax_class"] = "zero"
    copied.lines.clear()
    copied.promo_codes.append("FREE")

    assert product.name == "Black T-shirt" and product.attributes == {"acme.tax_class": "apparel"}
    assert len(draft.lines) == 2 and draft.promo_codes == ["SAVE10"]


def test_a_model_with_private_state_is_copied_as_copy_deepcopy_copies_it():
    class Tracked(BaseModel):
        sku: str
        _seen: list[str] = PrivateAttr(default_factory=list)

    original = Tracked(sku="MUG")
    original._seen.append("first")

    copied = _copied(original, {})
    copied._seen.append("second")

    assert copied.sku == "MUG" and original._seen == ["first"] and copied._seen == ["first", "second"]


def test_a_list_or_a_dict_the_originals_share_is_one_in_the_copies():
    shared_list, shared_dict = ["SAVE10"], {"acme.tax_class": "apparel"}
    memo: dict[int, object] = {}

    first = _copied({"codes": shared_list, "attributes": shared_dict}, memo)
    second = _copied([shared_list, shared_dict], memo)

    assert first["codes"] is second[0] and first["attributes"] is second[1]
    assert first["codes"] is not shared_list and first["attributes"] is not shared_dict


def test_setting_a_field_on_a_copy_leaves_the_originals_set_fields_alone():
    # What was set is what model_dump(exclude_unset=True) writes: a plugin's assignment on its
    # copy added the field to the original's set.
    draft, product = _draft()
    assert "tax_code" not in product.model_fields_set

    copied = _copied(draft, {})
    copied.lines[0].product.tax_code = "zero"

    assert "tax_code" not in product.model_fields_set
    assert "tax_code" in copied.lines[0].product.model_fields_set

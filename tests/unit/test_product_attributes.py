"""Products carry free string attributes for plugins, bounded so a product stays small."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.errors import field_path
from core.models import MAX_ATTRIBUTES, Product, ProductInput
from tests.builders import product_body


def test_attributes_default_to_empty_and_keep_what_was_sent():
    assert ProductInput.model_validate(product_body()).attributes == {}
    attributes = {"acme.tax_class": "books", "country-of-origin": "PT", "hs_code": "4901.99", "gift_note": ""}
    assert ProductInput.model_validate(product_body(attributes=attributes)).attributes == attributes


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({"pages": 320}, "attributes.pages"),
        ({"in_stock": True}, "attributes.in_stock"),
        ({"sizes": ["S", "M"]}, "attributes.sizes"),
        ({"note": None}, "attributes.note"),
        ({"Colour": "black"}, "attributes.Colour"),
        ({"_private": "x"}, "attributes._private"),
        ({"with space": "x"}, "attributes.with space"),
        ({"k" * 65: "x"}, "attributes." + "k" * 65),
        ({"blurb": "x" * 501}, "attributes.blurb"),
        ({f"key{i}": "x" for i in range(MAX_ATTRIBUTES + 1)}, "attributes"),
        (["colour", "black"], "attributes"),
        ({"colour": "red\u202e\u0000"}, "attributes.colour"),
        ({"colour": "red\x1b[0m"}, "attributes.colour"),
        ({"colour": "red\t"}, "attributes.colour"),
        ({"colour": "\ufeffred"}, "attributes.colour"),
    ],
    ids=[
        "number",
        "bool",
        "list",
        "null",
        "upper-case-key",
        "underscore-first",
        "space-in-key",
        "key-too-long",
        "value-too-long",
        "too-many-keys",
        "not-a-map",
        "bidi-override-and-nul",
        "escape",
        "trailing-tab",
        "byte-order-mark",
    ],
)
def test_an_attribute_that_is_not_a_bounded_clean_string_is_refused_naming_it(attributes, field):
    with pytest.raises(ValidationError) as refused:
        ProductInput.model_validate(product_body(attributes=attributes))

    fields = [field_path(error["loc"]) for error in refused.value.errors()]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


def test_the_limits_themselves_are_accepted():
    attributes = {f"key{i}": "x" * 500 for i in range(MAX_ATTRIBUTES)} | {"k" * 64: ""}
    attributes.pop("key0")

    assert ProductInput.model_validate(product_body(attributes=attributes)).attributes == attributes


def test_a_stored_value_with_what_is_now_refused_reads_with_each_shown_as_a_replacement_character():
    # Stored before values were held to the rule on names: the product still loads (an order for it
    # is priced, a plugin reads it), with nothing the rule refuses left in what it reads.
    stored = {"sku": "MUG", "updated_at": "2026-01-01T00:00:00Z", **product_body()}
    attributes = {"colour": "red\u202e\u0000", "finish": "matt\u200b\u2028\x85", "name": "Noe\u0308l\u200d"}

    product = Product.model_validate(stored | {"attributes": attributes})

    assert product.attributes == {
        "colour": "red\ufffd\ufffd",
        "finish": "matt\ufffd\ufffd\ufffd",
        "name": "No\u00ebl\u200d",
    }
    with pytest.raises(ValidationError):
        Product.model_validate(stored | {"attributes": {"blurb": "x" * 501}})

"""The suite parses and translates each template once per process (tests/conftest.py): every caller
gets its own copy, so a test that edits what it got never changes what the next one reads."""

from __future__ import annotations

from infra.check_template import translate
from infra.local.template import load_template


def test_a_loaded_template_edited_by_one_caller_is_whole_for_the_next():
    first = load_template()
    resources = first["Resources"]
    name, resource = next(iter(resources.items()))
    resource["Properties"] = {"edited": ["by", {"one": "caller"}]}
    del resources[next(iter(list(resources)[1:]))]
    first["Added"] = [1]

    second = load_template()

    assert "Added" not in second and len(second["Resources"]) == len(resources) + 1
    assert second["Resources"][name].get("Properties") != {"edited": ["by", {"one": "caller"}]}
    assert second is not first and second["Resources"] is not first["Resources"]


def test_a_translated_template_edited_by_one_caller_is_whole_for_the_next():
    template = load_template()
    first = translate(template)
    name = next(iter(first["Resources"]))
    first["Resources"][name]["Type"] = "Edited::By::A::Test"

    assert translate(template)["Resources"][name]["Type"] != "Edited::By::A::Test"

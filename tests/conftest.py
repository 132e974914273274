"""Settings shared by the whole suite."""

import copy
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import settings

import infra.local.template as template_module

# No per-example deadline: on a loaded 2-core machine a 200 ms example is a scheduling accident, not
# a bug. Properties still fail on what they assert; `make bench` is where time is measured.
settings.register_profile("oms", deadline=None)
settings.load_profile("oms")


_parse_template = template_module.load_template
_parsed: dict[bytes, dict[str, Any]] = {}


def _load_template_parsed_once(path: str | Path | None = None) -> dict[str, Any]:
    """infra.local.template.load_template, parsing the repository's template.yaml once per test
    process: the suite read it some 40 times per worker (each stack, in-process API and module that
    looks at it), 0.2 s of pure-Python YAML each. Each caller gets its own deep copy of the same
    document; any other path, or a template.yaml that changed on disk, is parsed as before."""
    source = Path(path or template_module.DEFAULT_TEMPLATE)
    if source.resolve() != template_module.DEFAULT_TEMPLATE.resolve():
        return _parse_template(path)
    text = source.read_bytes()
    if text not in _parsed:
        _parsed.clear()
        _parsed[text] = _parse_template(path)
    return copy.deepcopy(_parsed[text])


# Installed before any test module imports it (this conftest is imported first), so Template.load
# and `from infra.local.template import load_template` both see it.
template_module.load_template = _load_template_parsed_once


def forget_business_metrics() -> None:
    """Drop the business metric points recorded on this thread and not printed yet: a test that
    calls services directly records them (MeteredOrders) outside any handler, and the next handler
    that prints its own (emits_business_metrics) would print those too."""
    from functions.business_metrics import flush

    with mock.patch.dict(os.environ, {"POWERTOOLS_METRICS_DISABLED": "true"}):
        flush()


@pytest.fixture(autouse=True)
def no_business_metrics_from_an_earlier_test() -> None:
    forget_business_metrics()


@pytest.fixture(autouse=True)
def no_authorizations_from_an_earlier_test() -> None:
    """The `test` gateway remembers the keys it approved in this process (for
    oms_payment_find_authorization); tests place orders with the same ids again."""
    from plugins import test_payments

    test_payments.forget()

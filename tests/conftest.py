"""Settings shared by the whole suite."""

import os
from unittest import mock

import pytest
from hypothesis import settings

# No per-example deadline: on a loaded 2-core machine a 200 ms example is a scheduling accident, not
# a bug. Properties still fail on what they assert; `make bench` is where time is measured.
settings.register_profile("oms", deadline=None)
settings.load_profile("oms")


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

"""A late order whose only capture request standing is a parcel's its carrier reported delivered,
under moto and the scheduled jeopardy handler. Before: the capture sweep refunded that capture and
held the order for a person to confirm whether a parcel its carrier had seen delivered left. Now the
request is the parcel's ship's to finish (the reconciler's kept-back pass, under its key): the scan
marks the order late, naming the parcel, and the late-order index lists it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from core.fulfillment import OrderActions
from core.jeopardy import REPORTED_REASON
from core.models import Order, utc_now
from core.ports import OrderFilter
from core.status import OrderStatus
from tests.integration.test_reconciler import only_granted_calls, refund_index, stack  # noqa: F401 (fixtures)
from tests.integration.test_unrecorded_captures import a_ship_that_died, scan  # noqa: F401 (a fixture)


def marked_and_left(aws, monkeypatch: pytest.MonkeyPatch, external_id: str = "web-died") -> tuple[Any, Order]:
    """The services of this moto account, and an allocated order whose ship died after the gateway
    captured, then whose carrier's report died once it had marked the parcel: the order as stored."""
    from functions.bootstrap import Config, bootstrap

    order = a_ship_that_died(aws, monkeypatch, external_id)
    (shipment,) = order.shipments
    services = bootstrap(Config.from_env())
    with monkeypatch.context() as patched:
        patched.setattr(OrderActions, "ship", lambda *_, **__: (_ for _ in ()).throw(RuntimeError("died")))
        with pytest.raises(RuntimeError):
            services.actions.deliver(order.id, shipment.id, actor="key_carrier")
    marked = services.order_repository.get(order.id)
    assert marked.parcels_reported() == [shipment.id] and marked.unfinished_ships() == [shipment.id]
    return services, marked


def test_a_late_order_whose_marked_parcels_request_stands_is_marked_late_not_held_nor_refunded(
    aws,
    scan,  # noqa: F811 (the fixture)
    monkeypatch,
):
    services, marked = marked_and_left(aws, monkeypatch)
    order, (shipment,) = marked, marked.shipments

    answer = scan(utc_now() + timedelta(hours=48, minutes=5))  # past allocated=48h

    assert (answer["marked"], answer["captures_settled"], answer["ships_held"]) == ([order.id], [], [])
    late = services.order_repository.get(order.id)
    assert (late.status, late.captures_requested, late.payment) == (
        OrderStatus.ALLOCATED, marked.captures_requested, marked.payment,
    )  # fmt: skip
    assert late.jeopardy.reason.endswith(f"{REPORTED_REASON} ({shipment.id})")
    listed, _ = services.order_repository.list(OrderFilter(jeopardy=True), 10, None)
    assert [o.id for o in listed] == [order.id]
    assert refund_index(aws, order.id)["refund_key"] == "kept_back"  # the pass finishes it
    assert scan(utc_now() + timedelta(hours=49))["marked"] == []  # no candidate again
    assert services.order_repository.get(order.id).version == late.version

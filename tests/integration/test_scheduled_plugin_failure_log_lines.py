"""One plugin failure in a scheduled pass is one ERROR line with one traceback, naming the order:
`plugin raised` (core.hook_calls: the plugin's words and traceback), which carries the `order_id`
of the candidate the pass was working on (core.hook_calls.calls_about), since no key of the
reconciler's or the jeopardy scan's invocation names it; the pass's own line about that order
names the plugin and hook at WARNING without the traceback again (functions/failure_logs.py).
Through the real handlers, in-process on moto, each pass kind whose work calls a plugin (pending
and kept-back refunds, voids and settlement captures, pickup and hold expiry, carrier work,
notification retries) with a plugin that raises on two of its candidates (one for the carrier work,
which asks a carrier that failed no more that pass): the second's line names the second order, not
the first's again. Before, the passes whose own line reported the failure wrote two ERROR lines
with the plugin's traceback, and the others one `plugin raised` naming no order."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import pytest

from core import hookimpl
from core.models import utc_now
from tests.fakes import FakeLabels
from tests.integration import test_logging_hygiene
from tests.integration.test_logging_hygiene import Captured
from tests.integration.test_payment_plugin_failures_api import AnswersThenRaises
from tests.integration.test_reconciler import (  # noqa: F401 (fixtures)
    DUE_AT_ONCE,
    allocated_tshirt,
    deferred_shipped_notification,
    only_granted_calls,
    ready_pickup,
    reconcile,
    stack,
    two_parcels,
)

logs = test_logging_hygiene.logs  # what every handler wrote

TRACEBACK = "Traceback (most recent call last)"
LATER = timedelta(minutes=16)  # past the reconciler's 15 minutes: every candidate is due


class Pass(NamedTuple):
    """A pass's candidates on which the plugin raises, the run of the function that finds them (its
    exception, when the run fails for them: its line about each is then failure_logged's, naming
    the plugin and hook), and the message of the pass's own line about each (None: the pass writes
    none, the failure being recorded on the order)."""

    orders: list[str]
    run: Callable[[], Any]
    raises: type[Exception] | None
    line: str | None


def log_lines(logs: Captured) -> list[dict[str, Any]]:
    """Every log line (JSON, with a `level`) the functions' handler wrote so far, oldest first."""
    lines = []
    for text in logs.written().splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if "level" in line:
                lines.append(line)
    return lines


def the_services(*, at: datetime | None = None, plugin: object = None) -> Any:
    """Services on this moto account, at `at` (now without it), `plugin` registered with them."""
    from functions.bootstrap import Config, bootstrap

    services = bootstrap(Config.from_env(), label_store=FakeLabels(), **({"clock": lambda: at} if at else {}))
    if plugin is not None:
        services.plugins.register(plugin)
    return services


@contextmanager
def registered(services: Any, plugin: object) -> Iterator[None]:
    services.plugins.register(plugin)
    try:
        yield
    finally:
        services.plugins.unregister(plugin)


def shipped(services: Any, external_id: str) -> Any:
    """A TSHIRT placed, allocated and shipped (its payment captured)."""
    order = allocated_tshirt(services, external_id)
    (shipment,) = order.shipments
    return services.actions.ship(order.id, shipment.id, None, actor="key_wh")


def reconciler_later(plugin: object) -> Callable[[], Any]:
    """A run of the reconciler LATER, with `plugin` among its plugins."""
    from functions.reconciler import app

    services = the_services(at=utc_now() + LATER, plugin=plugin)

    def run() -> Any:
        with app.container.override(services):
            return reconcile()

    return run


class Raises:
    """A plugin that raises in `hook` (a bug of its own, not a refusal nor an outage), first of all."""

    def __init__(self, hook: str):
        def raising(**_: Any) -> Any:
            raise ValueError(f"the plugin's own bug in {hook}")

        setattr(self, hook, hookimpl(tryfirst=True)(raising))


def pending_refunds(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # h563 measured it: `plugin raised` without the order, then `pending refund not finished` at
    # ERROR with the chained traceback.
    from core.errors import PaymentPluginFailed
    from core.money import Money
    from core.refund_service import SweepIncomplete

    services = the_services()
    orders = []
    with registered(services, AnswersThenRaises("refund")):
        for external_id in ("web-a", "web-b"):
            order = shipped(services, external_id)
            with pytest.raises(PaymentPluginFailed):  # its refund left pending
                services.refunds.issue_refund(order.id, Money.of("5.00", "USD"), "late", f"k-{order.id}", "key_cs")
            orders.append(order.id)
    return Pass(orders, reconciler_later(AnswersThenRaises("refund")), SweepIncomplete, "pending refund not finished")


def own_voids(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # The void of a cancelled order's own authorization a payment plugin failed in stays owed: the
    # authorization pass asks it every pass.
    from core.authorization_sweep import SettleIncomplete

    services = the_services()
    orders = []
    with registered(services, AnswersThenRaises("void")):
        for external_id in ("web-a", "web-b"):
            order = allocated_tshirt(services, external_id)
            services.actions.cancel(order.id, "changed my mind", "key_web")
            orders.append(order.id)
    return Pass(
        orders,
        reconciler_later(AnswersThenRaises("void")),
        SettleIncomplete,
        "authorization left by an edit not settled",
    )


def pickups(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # The expiry cancels the order, then voids its authorization: the void the plugin fails in is
    # recorded on the order (payment_void_failed), the pass writes no line of its own about it.
    orders = [ready_pickup(made["aws"], days=DUE_AT_ONCE, external_id=e).id for e in ("web-a", "web-b")]
    return Pass(orders, reconciler_later(AnswersThenRaises("void")), None, None)


def carrier_bookings(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # A booking a cancel gave up while its carrier was down: the pass asks the carrier again. Its
    # carrier failing, the pass asks it no more this pass: one order.
    from core import carrier_bookings

    services = the_services()
    order = allocated_tshirt(services, "web-booked")

    def down(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("carrier API unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(carrier_bookings, "call_hook", down)
        services.actions.cancel(order.id, "changed my mind", actor="key_web")
    return Pass(
        [order.id], reconciler_later(Raises("oms_carrier_cancel_shipment")), None,
        "carrier work still owed: the carrier failed again, the next pass retries",
    )  # fmt: skip


def notifications(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # A notification the notifier failed to send, due again: it raises again.
    from functions.adapters.notifications import DynamoNotifications

    aws = made["aws"]
    store = DynamoNotifications(aws.dynamodb, aws.tables["CatalogTable"])
    failed_ago = timedelta(minutes=6)
    orders = [deferred_shipped_notification(store, letter, failed_ago, "ValueError").order_id for letter in "ab"]
    return Pass(
        orders, reconciler_later(Raises("oms_notify")), None,
        "customer notification deferred again: the notifier failed, a later pass retries it",
    )  # fmt: skip


def kept_back(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # An order that lost a unit whose last ship's void of the rest the plugin failed in: the void
    # stays owed, for the kept-back pass.
    from core.refund_service import KeptBackNotRefunded

    services = the_services()
    orders = []
    for external_id in ("web-a", "web-b"):
        order = two_parcels(services, external_id)
        services.actions.cancel(order.id, "one fewer", actor="key_web", lines={"L2": 1})
        for shipment in order.shipments:
            with registered(services, AnswersThenRaises("void")):
                services.actions.ship(order.id, shipment.id, None, actor="key_wh")
        assert services.order_repository.get(order.id).settlement_owed
        orders.append(order.id)
    return Pass(
        orders, reconciler_later(AnswersThenRaises("void")), KeptBackNotRefunded,
        "what a cancel of units or a last parcel owed back not settled",
    )  # fmt: skip


def settlement_captures(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # A cancel of the parcel that carries the shipping, the other shipped: the total left is above
    # what was captured, and the capture of the rest the plugin failed in stands, for the pass.
    from core.capture_sweep import CapturesNotSettled

    services = the_services()
    orders = []
    for external_id in ("web-a", "web-b"):
        order = two_parcels(services, external_id)
        services.actions.ship(order.id, order.shipments[1].id, None, actor="key_wh")
        with registered(services, AnswersThenRaises("capture")):
            services.actions.cancel(order.id, "changed my mind", actor="key_web")
        assert [r.shipment_id for r in services.order_repository.get(order.id).captures_requested] == [None]
        orders.append(order.id)
    return Pass(
        orders, reconciler_later(AnswersThenRaises("capture")), CapturesNotSettled,
        "capture left by a ship or a settlement not settled",
    )  # fmt: skip


def hold_expiry(made: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Pass:
    # The jeopardy scan cancels an order held too long, then voids its authorization: the void the
    # plugin fails in is recorded on the order (payment_void_failed).
    from core.holds import HoldRequest
    from functions.jeopardy import app
    from tests.integration.import_support import context

    monkeypatch.setenv("OMS_HOLD_EXPIRY_DAYS", "2")
    services = the_services()
    orders = []
    for external_id in ("web-a", "web-b"):
        order = allocated_tshirt(services, external_id)
        services.holds.hold(order.id, HoldRequest(reason="other"), "key_ops")
        orders.append(order.id)
    scanning = the_services(at=utc_now() + timedelta(days=3), plugin=AnswersThenRaises("void"))

    def run() -> Any:
        with app.container.override(scanning):
            return app.lambda_handler({"detail-type": "Scheduled Event"}, context("JeopardyScanFunction", 60))

    return Pass(orders, run, None, None)


PASSES = [
    pending_refunds,
    kept_back,
    own_voids,
    settlement_captures,
    pickups,
    carrier_bookings,
    notifications,
    hold_expiry,
]


@pytest.mark.parametrize("kind", PASSES, ids=[kind.__name__ for kind in PASSES])
def test_a_plugin_raising_on_a_candidate_of_a_scheduled_pass_is_one_error_line_naming_its_order(
    kind: Callable[..., Pass], stack, monkeypatch, logs  # noqa: F811 (fixtures)
):  # fmt: skip
    done = kind(stack, monkeypatch)
    before = len(log_lines(logs))

    if done.raises is None:
        done.run()
    else:
        with pytest.raises(done.raises):
            done.run()  # the errors alarm calls a person: the pass's own exception, no line

    lines = log_lines(logs)[before:]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert [line["message"] for line in errors] == ["plugin raised"] * len(done.orders), errors
    # Each names its own order: the second candidate's line not the first's, nor none.
    assert sorted(str(line.get("order_id")) for line in errors) == sorted(done.orders)
    assert [line for line in lines if TRACEBACK in json.dumps(line)] == errors
    assert all(TRACEBACK in line["exception"] and "the plugin's" in line["exception"] for line in errors)
    if done.line is not None:
        own = [line for line in lines if line["message"] == done.line]
        assert sorted((line["level"], line["order_id"]) for line in own) == [
            ("WARNING", o) for o in sorted(done.orders)
        ]
        for line in own:
            (raised,) = [error for error in errors if error["order_id"] == line["order_id"]]
            assert "exception" not in line
            named = {key: line[key] for key in ("plugin", "hook") if key in line}
            # The carrier's and the notifier's lines, WARNINGs before, name neither.
            assert named == ({"plugin": raised["plugin"], "hook": raised["hook"]} if done.raises else {})

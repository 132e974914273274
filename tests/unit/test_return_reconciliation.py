"""The return reconciler: a receipt whose returns workflow never started (the function died between
the receipt's write and the start) is found and its workflow started again, once the receipt's own
execution would have ended; one received recently, one refunded, and one its workflow recorded stuck
for a person are left alone."""

from collections.abc import Callable
from datetime import timedelta

import pytest

from core import hookimpl
from core.errors import PaymentGatewayUnavailable, TransientError
from core.payments import Payments
from core.reconciliation import MAX_REFUSED_STARTS
from core.refund_service import RefundService
from core.return_models import ReceiveReturn, RequestReturn, Return
from core.return_reconciliation import ReturnReconciler
from core.returns import RefundNotDone, Returns
from core.status import ReturnStatus
from core.workflow_types import PaymentResult
from functions.plugin_loading import load_plugin_manager
from plugins.testing.memory import InMemoryReceivedReturns
from tests.fakes import InlineReturnWorkflow, run_return_workflow
from tests.unit.test_jeopardy import STOCK, one_mug_returned, returns_service
from tests.unit.world import Clock, World, build_world

R = ReturnStatus
RECEIPT = ReceiveReturn.model_validate(
    {"location_id": "wh-west", "lines": [{"line_id": "L1", "quantity": 1, "condition": "resellable"}]}
)


def reconciler(
    world: World, clock: Clock, workflow: InlineReturnWorkflow, limit: int = 100, max_reads: int = 1000,
    payment_methods: Callable[[], set[str]] | None = None,
) -> ReturnReconciler:  # fmt: skip
    return ReturnReconciler(
        InMemoryReceivedReturns(world.returns), world.returns, world.orders, workflow, clock,
        restart_after=timedelta(minutes=15), limit=limit, max_reads=max_reads, payment_methods=payment_methods,
        mark_refunded=lambda return_id: marked(workflow, return_id),
    )  # fmt: skip


def marked(workflow: InlineReturnWorkflow, return_id: str) -> Return:
    """The reconciler's mark of a stuck return refunded since (functions/bootstrap.py): its refund
    step's, then its Exchange step's (each leaves the other's return as it is)."""
    assert workflow.returns is not None
    workflow.returns.refund(return_id, "reconciler")
    return workflow.returns.exchange(return_id, "reconciler")


def stuck_on(returns: Returns, return_id: str, step: str, error: type[Exception], cause: str, tries: int = 1) -> None:
    """The workflow's `step` (refund, exchange) raising `error` on each of its `tries`, then its
    ReturnStuck state recording the return stuck (`cause`) on the order's history."""
    for _ in range(tries):
        with pytest.raises(error):
            getattr(returns, step)(return_id, "returns-workflow")
    returns.stuck(return_id, error.__name__, cause, actor="returns-workflow")


def test_a_receipt_whose_workflow_never_started_is_restarted_and_finished_once(world):
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    lost = one_mug_returned(world, returns)
    returns.receive(lost.id, RECEIPT, "key_wh")  # ...and the function died before starting the workflow
    clock.advance(minutes=10)
    fresh = one_mug_returned(world, returns)
    returns.receive(fresh.id, RECEIPT, "key_wh")
    assert reconciler(world, clock, workflow).run() == []  # ten minutes: its execution may be running

    clock.advance(minutes=6)
    assert reconciler(world, clock, workflow).run() == [lost.id]

    assert workflow.started == [lost.id]
    assert world.returns.get(lost.id).status is R.REFUNDED
    assert world.order(lost.order_id).payment.refunded == world.returns.get(lost.id).refund
    clock.advance(minutes=30)
    assert reconciler(world, clock, workflow).run() == [fresh.id]
    assert reconciler(world, clock, workflow).run() == []  # both refunded: nothing to start


def test_a_return_its_workflow_recorded_stuck_is_left_to_a_person(world):
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    item = one_mug_returned(world, returns)
    returns.receive(item.id, RECEIPT, "key_wh")
    clock.advance(minutes=3)
    returns.stuck(item.id, "RefundNotDone", "the gateway refused the refund", actor="returns-workflow")
    clock.advance(hours=1)

    assert reconciler(world, clock, workflow).run() == []

    assert workflow.started == [] and world.returns.get(item.id).status is R.RECEIVED


def test_the_threshold_leaves_the_receipts_own_execution_its_five_minutes(world):
    with pytest.raises(ValueError):
        ReturnReconciler(
            InMemoryReceivedReturns(world.returns), world.returns, world.orders, InlineReturnWorkflow(), Clock(),
            restart_after=timedelta(minutes=5),
        )  # fmt: skip


def test_a_start_step_functions_refuses_is_left_for_the_next_pass_and_the_rest_are_started(world):
    clock = Clock()
    returns = returns_service(world, clock)
    first, second = one_mug_returned(world, returns), one_mug_returned(world, returns)
    for item in (first, second):
        returns.receive(item.id, RECEIPT, "key_wh")
    clock.advance(minutes=16)

    class RefusesFirst(InlineReturnWorkflow):
        def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
            if return_id == first.id and not self.started:
                self.started.append("refused")
                raise TransientError("the returns workflow could not be started: ThrottlingException")
            super().start(return_id, channel, correlation_id)

    workflow = RefusesFirst(returns)

    assert reconciler(world, clock, workflow).run() == [second.id]
    assert reconciler(world, clock, workflow).run() == [first.id]
    assert {world.returns.get(item.id).status for item in (first, second)} == {R.REFUNDED}


def test_returns_left_to_a_person_cannot_hide_a_lost_receipt_received_after_them(world):
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    stuck = [one_mug_returned(world, returns) for _ in range(3)]
    lost = one_mug_returned(world, returns)  # requested after them: the index lists it last
    for item in stuck:
        returns.receive(item.id, RECEIPT, "key_wh")
        returns.stuck(item.id, "RefundNotDone", "the gateway refused the refund", actor="returns-workflow")
    clock.advance(hours=1)
    returns.receive(lost.id, RECEIPT, "key_wh")  # ...and the function died before starting the workflow
    clock.advance(minutes=16)

    assert reconciler(world, clock, workflow, limit=2).run() == [lost.id]

    assert workflow.started == [lost.id] and world.returns.get(lost.id).status is R.REFUNDED
    assert {world.returns.get(item.id).status for item in stuck} == {R.RECEIVED}


def test_returns_left_to_a_person_beyond_a_passs_read_budget_keep_no_lost_receipt_waiting(world):
    # Left to a person, a return stays `received`, at the oldest end of the index, for as long as
    # the person takes: once more of them than a pass reads (its 1,000), every pass spent its reads
    # on them and never reached a receipt lost behind them. The pass that finds one so sets it
    # aside: the next pass reads on to the lost receipt, and reads them no more.
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    stuck = [one_mug_returned(world, returns) for _ in range(4)]
    lost = one_mug_returned(world, returns)
    for item in stuck:
        returns.receive(item.id, RECEIPT, "key_wh")
        returns.stuck(item.id, "RefundNotDone", "the gateway refused the refund", actor="returns-workflow")
    returns.receive(lost.id, RECEIPT, "key_wh")
    clock.advance(minutes=16)
    index = InMemoryReceivedReturns(world.returns)

    assert reconciler(world, clock, workflow, max_reads=3).run() == []  # spent on three left to a person
    assert list(index.received_before(clock())) == [stuck[-1].id, lost.id]  # the three set aside
    assert reconciler(world, clock, workflow, max_reads=3).run() == [lost.id]  # the fourth, then the lost one

    assert workflow.started == [lost.id] and world.returns.get(lost.id).status is R.REFUNDED
    assert {world.returns.get(item.id).status for item in stuck} == {R.RECEIVED}  # still the person's
    method = world.order(lost.order_id).payment.method
    # No later pass reads them: set aside for the person, not as waiting for a payment plugin.
    assert list(index.received_before(clock())) == list(index.waiting_for_plugin(method, clock())) == []


def test_a_return_set_aside_is_listed_again_by_its_next_write(world):
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    item = one_mug_returned(world, returns)
    returns.receive(item.id, RECEIPT, "key_wh")
    returns.stuck(item.id, "RefundNotDone", "the gateway refused the refund", actor="returns-workflow")
    clock.advance(minutes=16)
    index = InMemoryReceivedReturns(world.returns)
    reconciler(world, clock, workflow).run()
    assert list(index.received_before(clock())) == []

    stored = world.returns.get(item.id)
    world.returns.update(stored.listed_again(), stored)  # any new version of it

    assert list(index.received_before(clock())) == [item.id]


def left_to_a_person(world: World, returns: Returns, clock: Clock, item: Return, execution: str) -> None:
    """`item` received, its workflow's `execution` recording it stuck, and a pass setting it aside."""
    returns.receive(item.id, RECEIPT, "key_wh")
    returns.stuck(item.id, "RefundNotDone", "the gateway refused the refund", "returns-workflow", execution)
    clock.advance(minutes=16)
    reconciler(world, clock, InlineReturnWorkflow(returns)).run()
    assert list(InMemoryReceivedReturns(world.returns).received_before(clock())) == []


def test_the_stuck_step_retried_after_it_succeeded_leaves_its_return_as_the_pass_left_it(world):
    # Step Functions runs ReturnStuck again when its answer is lost. Its first run listed the return
    # again; a pass has set it aside since. The retry wrote it again (a new version listing it
    # again), so the next pass judged it once more, and each retry undid the pass.
    clock = Clock()
    returns = returns_service(world, clock)
    item = one_mug_returned(world, returns)
    left_to_a_person(world, returns, clock, item, execution="ex-1")
    aside = world.returns.get(item.id)

    returns.stuck(item.id, "RefundNotDone", "the gateway refused the refund", "returns-workflow", "ex-1")

    assert world.returns.get(item.id) == aside
    assert list(InMemoryReceivedReturns(world.returns).received_before(clock())) == []


def test_the_stuck_step_retried_after_dying_before_it_listed_its_return_lists_it(world, monkeypatch):
    # Another execution stops: its entry written, the function died before the write listing the
    # return again for the pass. Its retry finds the entry and still lists the return.
    clock = Clock()
    returns = returns_service(world, clock)
    item = one_mug_returned(world, returns)
    left_to_a_person(world, returns, clock, item, execution="ex-1")
    with monkeypatch.context() as dying:
        dying.setattr(world.returns, "update", lambda new, expected: (_ for _ in ()).throw(TransientError("died")))
        with pytest.raises(TransientError):
            returns.stuck(item.id, "RefundNotDone", "the refund failed again", "returns-workflow", "ex-2")
    assert list(InMemoryReceivedReturns(world.returns).received_before(clock())) == []

    returns.stuck(item.id, "RefundNotDone", "the refund failed again", "returns-workflow", "ex-2")

    assert list(InMemoryReceivedReturns(world.returns).received_before(clock())) == [item.id]
    stuck = [e.detail["execution"] for e in world.history(item.order_id) if e.type.value == "return_stuck"]
    assert stuck == ["ex-1", "ex-2"]


class Uninstalled:
    """Once `gone`, the `test` payment plugin is out of the deployment: it lists no method and
    answers no refund, while the orders paid with it still use it.

    A removed gateway refunds nothing, so the `test` gateway must not even be asked (it would
    remember the refund and refuse it as beyond what was captured once back): while gone, this
    answers the refund first with a placeholder, which its own wrapper turns into no answer."""

    gone = False
    _unanswered = PaymentResult(outcome="declined", reference="uninstalled", message="the plugin is uninstalled")

    @hookimpl(wrapper=True)
    def oms_payment_methods(self):
        methods = yield
        return [[m for m in found if m != "test"] for found in methods] if self.gone else methods

    @hookimpl(specname="oms_payment_refund", tryfirst=True)
    def refund_before_the_gateway(self) -> PaymentResult | None:
        return self._unanswered if self.gone else None

    @hookimpl(specname="oms_payment_refund", wrapper=True)
    def refund_unanswered(self):
        result = yield
        return None if result is self._unanswered else result


def test_a_return_stuck_for_want_of_its_payment_plugin_is_resumed_once_the_plugin_is_back(world):
    """Nobody can act on it through the API (its refund needs the plugin); once the operator puts the
    plugin back, the next pass resumes it, and none before: a pass without the plugin would only
    record another failed refund."""
    clock = Clock()
    plugin = Uninstalled()
    returns = returns_service(world, clock, plugin)
    workflow = InlineReturnWorkflow(returns)
    item = one_mug_returned(world, returns)
    plugin.gone = True
    returns.receive(item.id, RECEIPT, "key_wh")
    # The workflow's Refund step and its retries, then its ReturnStuck state.
    stuck_on(returns, item.id, "refund", RefundNotDone, "the refund is failed; it is tried again", tries=3)
    clock.advance(hours=1)
    payments = Payments(load_plugin_manager(plugin, enable_test_payments=True))
    asked: list[set[str]] = []

    def methods() -> set[str]:
        asked.append(payments.methods())
        return asked[-1]

    # One reconciler, pass after pass, as a warm function runs the one it built: each pass asks
    # the plugins once which methods they take now.
    passes = reconciler(world, clock, workflow, payment_methods=methods)

    assert passes.run() == [] and len(asked) == 1
    plugin.gone = False
    assert passes.run() == [item.id] and len(asked) == 2

    done = world.returns.get(item.id)
    assert done.status is R.REFUNDED
    assert world.order(item.order_id).payment.refunded == done.refund


def test_a_return_stuck_on_a_refusal_after_its_plugin_came_back_is_left_to_a_person(world):
    clock = Clock()
    plugin = Uninstalled()
    returns = returns_service(world, clock, plugin, world.gateway)
    workflow = InlineReturnWorkflow(returns)
    item = one_mug_returned(world, returns)
    plugin.gone = True
    returns.receive(item.id, RECEIPT, "key_wh")
    stuck_on(returns, item.id, "refund", RefundNotDone, "the refund is failed; it is tried again")
    clock.advance(hours=1)
    plugin.gone = False
    world.gateway.script("refund", "refuse")
    stuck_on(returns, item.id, "refund", RefundNotDone, "the gateway refused the refund")
    clock.advance(hours=1)

    methods = Payments(load_plugin_manager(plugin, enable_test_payments=True)).methods
    assert reconciler(world, clock, workflow, payment_methods=methods).run() == []


def test_an_exchange_given_up_for_its_removed_payment_plugin_is_refunded_once_the_plugin_is_back():
    clock = Clock()
    plugin = Uninstalled()
    world = build_world(STOCK, plugin)
    returns = returns_service(world, clock, plugin)
    workflow = InlineReturnWorkflow(returns)
    order = world.allocated(("MUG", 1))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    swap = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "wrong colour"}],
            "exchange": {"lines": [{"sku": "MUG", "quantity": 1}]}}  # fmt: skip
    item = returns.request(order.id, RequestReturn.model_validate(swap), actor="key_cs")
    plugin.gone = True
    returns.receive(item.id, RECEIPT, "key_wh")
    stuck_on(returns, item.id, "exchange", RefundNotDone, "the refund is failed; it is tried again")
    clock.advance(hours=1)
    methods = Payments(load_plugin_manager(plugin, enable_test_payments=True)).methods
    assert reconciler(world, clock, workflow, payment_methods=methods).run() == []

    plugin.gone = False
    assert reconciler(world, clock, workflow, payment_methods=methods).run() == [item.id]

    done = world.returns.get(item.id)
    assert (done.status, done.exchange_not_placed, done.refund) == (
        R.REFUNDED,
        "unknown_payment_method",
        order.lines[0].total,
    )


def test_a_pass_stops_asking_step_functions_once_it_keeps_refusing(world):
    """Each refused start costs the reconciler's invocation the client's retries (seconds): while
    Step Functions throttles every start, a pass over many lost receipts would run out of time
    before the reconciler's other work. A pass asks a few times and leaves the rest to the next."""
    clock = Clock()
    returns = returns_service(world, clock)
    lost = [one_mug_returned(world, returns) for _ in range(MAX_REFUSED_STARTS + 2)]
    for item in lost:
        returns.receive(item.id, RECEIPT, "key_wh")
    clock.advance(minutes=16)

    class Throttled(InlineReturnWorkflow):
        def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
            self.started.append(return_id)
            raise TransientError("the returns workflow could not be started: ThrottlingException")

    workflow = Throttled()

    assert reconciler(world, clock, workflow).run() == []
    assert len(workflow.started) == MAX_REFUSED_STARTS


def test_a_return_set_aside_whose_next_workflow_waits_for_its_plugin_is_resumed_once_the_plugin_is_back(world):
    """Set aside as left to a person, the return is received again by the person (a receipt of a
    received return writes nothing) and its new workflow gets stuck for want of its payment plugin,
    removed meanwhile: that workflow's record of it stuck lists the return again, so the pass that
    finds the plugin back resumes it, as any return waiting for its plugin."""
    clock = Clock()
    plugin = Uninstalled()
    returns = returns_service(world, clock, plugin, world.gateway)
    workflow = InlineReturnWorkflow(returns)
    item = one_mug_returned(world, returns)
    returns.receive(item.id, RECEIPT, "key_wh")
    world.gateway.script("refund", "refuse")
    stuck_on(returns, item.id, "refund", RefundNotDone, "the gateway refused the refund")
    world.gateway.script("refund", "approve")
    clock.advance(hours=1)
    methods = Payments(load_plugin_manager(plugin, enable_test_payments=True)).methods
    index = InMemoryReceivedReturns(world.returns)
    assert reconciler(world, clock, workflow, payment_methods=methods).run() == []
    assert list(index.received_before(clock())) == []  # set aside: left to a person

    # The person receives it again; its new workflow finds the payment plugin removed.
    assert returns.receive(item.id, RECEIPT, "key_wh").version == world.returns.get(item.id).version
    plugin.gone = True
    stuck_on(returns, item.id, "refund", RefundNotDone, "the refund is failed; it is tried again")
    clock.advance(hours=1)
    assert reconciler(world, clock, workflow, payment_methods=methods).run() == []  # the plugin is not back
    plugin.gone = False

    assert reconciler(world, clock, workflow, payment_methods=methods).run() == [item.id]
    assert world.returns.get(item.id).status is R.REFUNDED


def test_returns_waiting_for_their_plugin_beyond_a_passs_read_budget_keep_no_lost_receipt_waiting(world):
    """A payment plugin removed leaves every return paid through it waiting, `received`, at the
    oldest end of the index, for as long as the plugin stays out: more of them than a pass reads
    would keep a receipt lost behind them from every pass. The pass that finds one waiting sets it
    aside under its method, which a pass reads only while a plugin takes that method again."""
    clock = Clock()
    plugin = Uninstalled()
    returns = returns_service(world, clock, plugin)
    workflow = InlineReturnWorkflow(returns)
    waiting = [one_mug_returned(world, returns) for _ in range(4)]
    lost = one_mug_returned(world, returns)
    plugin.gone = True
    for item in waiting:
        returns.receive(item.id, RECEIPT, "key_wh")
        stuck_on(returns, item.id, "refund", RefundNotDone, "the refund is failed; it is tried again")
    returns.receive(lost.id, RECEIPT, "key_wh")  # ...and the function died before starting the workflow
    clock.advance(hours=1)
    methods = Payments(load_plugin_manager(plugin, enable_test_payments=True)).methods
    index = InMemoryReceivedReturns(world.returns)

    assert reconciler(world, clock, workflow, max_reads=3, payment_methods=methods).run() == []  # three waiting
    assert list(index.received_before(clock())) == [waiting[-1].id, lost.id]  # the three set aside
    assert reconciler(world, clock, workflow, max_reads=3, payment_methods=methods).run() == [lost.id]
    assert workflow.started == [lost.id]

    plugin.gone = False  # the operator puts the plugin back: the next passes resume them all
    clock.advance(minutes=1)
    restarted = reconciler(world, clock, workflow, max_reads=3, payment_methods=methods).run()
    restarted += reconciler(world, clock, workflow, max_reads=3, payment_methods=methods).run()
    assert set(restarted) == {item.id for item in [*waiting, lost]}
    assert {world.returns.get(item.id).status for item in [*waiting, lost]} == {R.REFUNDED}


def test_a_return_waiting_for_its_plugin_while_a_plugin_failed_to_load_waits_and_keeps_no_lost_receipt_waiting(world):
    """While any plugin failed to load no hook is called (PluginUnavailable), so the pass cannot ask
    which methods a payment plugin takes: the return stuck for want of its plugin waits, set aside
    under its method, as the ones set aside before it do (the pass reads those only once the
    plugins load). Before: the pass stopped at it as at an outage, every run, so a receipt lost
    behind it was never started, and the errors alarm fired, until someone fixed the plugin."""
    from core.errors import PluginUnavailable

    clock = Clock()
    plugin = Uninstalled()
    returns = returns_service(world, clock, plugin)
    workflow = InlineReturnWorkflow(returns)
    waiting, lost = one_mug_returned(world, returns), one_mug_returned(world, returns)
    plugin.gone = True
    returns.receive(waiting.id, RECEIPT, "key_wh")
    stuck_on(returns, waiting.id, "refund", RefundNotDone, "the refund is failed; it is tried again", tries=3)
    returns.receive(lost.id, RECEIPT, "key_wh")  # ...and the function died before starting the workflow
    plugin.gone = False  # the payment plugin is back, but another plugin failed to load
    clock.advance(hours=1)
    loaded = Payments(load_plugin_manager(plugin, enable_test_payments=True)).methods
    broken = {"now": True}

    def methods() -> set[str]:
        if broken["now"]:
            raise PluginUnavailable("plugins failed to load: tax")
        return loaded()

    assert reconciler(world, clock, workflow, payment_methods=methods).run() == [lost.id]
    assert workflow.started == [lost.id]
    assert list(InMemoryReceivedReturns(world.returns).received_before(clock())) == []  # set aside, waiting

    broken["now"] = False  # the plugin loads: the next pass resumes it
    assert reconciler(world, clock, workflow, payment_methods=methods).run() == [waiting.id]
    assert world.returns.get(waiting.id).status is R.REFUNDED


def test_a_start_step_functions_denies_for_good_is_no_refusal_for_now_and_fails_the_pass(world):
    """The function's role lacks states:StartExecution on the returns workflow (or its credentials
    are refused): every start fails alike, for good. Before: the starter made every ClientError a
    TransientError, so the pass took it for a refusal for now, stopped quietly after three and
    returned nothing: no error, no alarm, and every lost receipt waited for good. Now the pass stops
    on it as on an outage and fails (ReconcilerErrorsAlarm); a throttle is still a refusal for now."""
    from botocore.exceptions import ClientError

    from core.return_reconciliation import ReturnsNotReconciled, dependency_down
    from functions.adapters import aws_errors
    from functions.adapters.workflow_starter import StepFunctionsReturnStarter

    clock = Clock()
    returns = returns_service(world, clock)
    lost = [one_mug_returned(world, returns) for _ in range(4)]
    for item in lost:
        returns.receive(item.id, RECEIPT, "key_wh")  # ...and the function died before starting the workflow
    clock.advance(hours=1)
    code = {"now": "AccessDeniedException"}
    asked: list[str] = []

    class StepFunctions:
        def start_execution(self, **request: str) -> None:
            asked.append(request["name"])
            raise ClientError({"Error": {"Code": code["now"], "Message": "no"}}, "StartExecution")

    def passes() -> ReturnReconciler:
        return ReturnReconciler(
            InMemoryReceivedReturns(world.returns), world.returns, world.orders,
            StepFunctionsReturnStarter(StepFunctions(), "arn:aws:states:us-east-1:1:stateMachine:r"), clock,
            restart_after=timedelta(minutes=15),
            outage=lambda error: dependency_down(error) or aws_errors.dependency_down(error),
        )  # fmt: skip

    with pytest.raises(ReturnsNotReconciled) as raised:
        passes().run()
    assert isinstance(raised.value.outage, ClientError) and len(asked) == 1

    code["now"] = "ThrottlingException"  # for now: refused, the pass stops quietly after three
    asked.clear()
    assert passes().run() == [] and len(asked) == MAX_REFUSED_STARTS


def stuck_on_an_outage(world: World) -> tuple[Clock, InlineReturnWorkflow, Return]:
    """A mug's return received whose Refund step found the gateway down through its retries (its
    refund left pending, the return recorded stuck): the clock, the returns workflow over its
    returns service and the return."""
    clock = Clock()
    returns = returns_service(world, clock, world.gateway)
    workflow = InlineReturnWorkflow(returns)
    item = one_mug_returned(world, returns)
    returns.receive(item.id, RECEIPT, "key_wh")
    world.gateway.script("refund", "transient")
    stuck_on(returns, item.id, "refund", PaymentGatewayUnavailable, "the gateway is down")
    return clock, workflow, item


def test_a_return_stuck_on_a_gateway_outage_is_marked_refunded_once_the_pending_refund_pass_made_its_refund(world):
    """Its refund left pending by the outage through the step's retries: the pass leaves it received
    while the refund pends (set aside under its method, read again after the received returns), and
    marks it refunded, once, after the pending-refund pass made the refund; the gateway is not asked
    again. Before: set aside for a person, it stayed `received` for good."""
    clock, workflow, item = stuck_on_an_outage(world)
    clock.advance(hours=1)
    methods = Payments(load_plugin_manager(world.gateway, enable_test_payments=True)).methods
    assert reconciler(world, clock, workflow, payment_methods=methods).run() == []
    assert world.returns.get(item.id).status is R.RECEIVED
    world.gateway.script("refund", "approve")
    refunds = RefundService(
        world.orders, Payments(load_plugin_manager(world.gateway, enable_test_payments=True)), clock
    )
    [made] = refunds.finish_pending(item.order_id, "reconciler", unshown=True)
    asked = len(world.gateway.keys("refund"))
    clock.advance(minutes=5)

    passes = [reconciler(world, clock, workflow, payment_methods=methods) for _ in range(2)]
    assert [(p.run(), p.marked_refunded) for p in passes] == [([], [item.id]), ([], [])]

    done = world.returns.get(item.id)
    assert (done.status, done.refund) == (R.REFUNDED, made.amount)
    assert world.order(item.order_id).payment.refunded == made.amount
    assert len(world.gateway.keys("refund")) == asked and workflow.started == []


def test_a_stuck_exchange_of_a_replacements_units_is_started_again_never_marked_asking_a_refusal_each_pass(
    monkeypatch,
):
    # B replaced A's T-shirt; B's T-shirt exchanged for a CAP: the rest of its credit is refunded on
    # B and drawn from A's credit for what B's captures cannot give. The step died at the draw's
    # write on A, its own refund on B made: stuck. Marked by the pass, the draw would be asked
    # outside any workflow, and a refusal asked again every pass; its workflow asks it once.
    from tests.builders import NOW
    from tests.unit.test_returns import STOCK as RETURNS_STOCK
    from tests.unit.test_returns import delivered, exchange_of, exchanged, receipt, returns_for

    world = build_world(RETURNS_STOCK)
    clock = Clock(NOW + timedelta(days=3))
    _, a, first = exchanged(world, clock, ("TSHIRT", 1), ("TSHIRT", 1))
    b = delivered(world, world.run(first.exchange_order_id or ""))
    returns, _ = returns_for(world, clock, world.gateway)
    item = returns.request(b.id, exchange_of("L1", 1, ("CAP", 1)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 1, "resellable")), "key_wh")
    real = world.orders.update

    def update(order, expected, entries, **conditions):
        if order.id == a.id and len(order.payment.refunds) > len(expected.payment.refunds):
            raise TransientError("the orders table stayed throttled")
        real(order, expected, entries, **conditions)

    with monkeypatch.context() as patched:
        patched.setattr(world.orders, "update", update)
        with pytest.raises(TransientError):
            run_return_workflow(returns, item.id, actor="returns-workflow")
    returns.stuck(item.id, "TransientError", "the orders table stayed throttled", actor="returns-workflow")
    assert [r.status for r in world.order(b.id).payment.refunds if r.return_id == item.id] == ["succeeded"]
    world.gateway.script("refund", "refuse")
    asked = len(world.gateway.keys("refund"))
    clock.advance(hours=1)
    workflow = InlineReturnWorkflow(returns)

    for _ in range(2):
        assert reconciler(world, clock, workflow).run() in ([item.id], [])
    # That execution's ReturnStuck records the refusal after the throttle: the person's now.
    returns.stuck(item.id, "RefundNotDone", "the draw on the credit was refused", actor="returns-workflow")
    clock.advance(hours=1)
    assert reconciler(world, clock, workflow).run() == []

    assert workflow.started == [item.id]
    assert len(world.gateway.keys("refund")) == asked + 1  # the workflow's draw, refused: then a person's
    assert world.returns.get(item.id).status is R.RECEIVED


def test_an_exchange_stuck_midway_is_started_again_only_once_its_stuck_record_is_as_old_as_a_lost_receipt(
    world, monkeypatch
):
    # Its Exchange step kept failing (the write deciding its replacement refused: a table throttled)
    # through an execution that ended long after the receipt. Started again at once, the throttle
    # that stopped it may still be on, spending a restart; it waits as a receipt's own execution is.
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    order = world.allocated(("MUG", 1))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    swap = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "wrong colour"}],
            "exchange": {"lines": [{"sku": "MUG", "quantity": 1}]}}  # fmt: skip
    item = returns.request(order.id, RequestReturn.model_validate(swap), actor="key_cs")
    returns.receive(item.id, RECEIPT, "key_wh")
    real = world.returns.update

    def update(new, expected):
        if new.exchange_placing and not expected.exchange_placing:
            raise TransientError("the returns table stayed throttled")
        real(new, expected)

    with monkeypatch.context() as patched:
        patched.setattr(world.returns, "update", update)
        clock.advance(minutes=20)
        stuck_on(returns, item.id, "exchange", TransientError, "the returns table stayed throttled", tries=3)
        clock.advance(minutes=5)
        assert reconciler(world, clock, workflow).run() == []  # stuck five minutes ago
        assert workflow.started == []
    clock.advance(minutes=11)

    assert reconciler(world, clock, workflow).run() == [item.id]

    assert workflow.started == [item.id]
    done = world.returns.get(item.id)
    assert done.status is R.REFUNDED and done.exchange_order_id is not None


def timed_out_midway(
    world: World, workflow_type: type[InlineReturnWorkflow]
) -> tuple[Clock, InlineReturnWorkflow, Return]:
    """A mug's return received, whose workflow's execution x1 recorded it stuck 20 minutes later (its
    Restock step timed out on every retry, States.Timeout): the clock, the returns workflow (a
    `workflow_type` over the returns service) and the return."""
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = workflow_type(returns)
    item = one_mug_returned(world, returns)
    returns.receive(item.id, RECEIPT, "key_wh")
    clock.advance(minutes=20)
    returns.stuck(item.id, "States.Timeout", "the task timed out", actor="returns-workflow", execution="x1")
    return clock, workflow, item


def test_a_plain_return_stuck_midway_is_started_again_once_its_stuck_record_is_as_old_as_a_lost_receipt(world):
    # Its Restock step timed out on every retry (States.Timeout) through an execution that ended
    # long after the receipt: nothing refunded, refused or pending. Before: left to a person, though
    # every step skips what is done. Started at once, what stopped it may still be on: it waits as a
    # receipt's own execution is, then its workflow is started and refunds it once.
    clock, workflow, item = timed_out_midway(world, InlineReturnWorkflow)
    clock.advance(minutes=5)
    assert reconciler(world, clock, workflow).run() == []  # stuck five minutes ago
    clock.advance(minutes=11)

    assert reconciler(world, clock, workflow).run() == [item.id]

    assert workflow.started == [item.id]
    done = world.returns.get(item.id)
    assert done.status is R.REFUNDED and done.refund.amount > 0
    paid = world.order(item.order_id).payment
    assert [refund.status for refund in paid.refunds] == ["succeeded"] and paid.refunded == done.refund
    assert reconciler(world, clock, workflow).run() == []


class StuckOnEachRun(InlineReturnWorkflow):
    """A workflow whose Restock step times out on every retry of every execution: each records the
    return stuck again (its compensation), under its own execution's name."""

    def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
        assert self.returns is not None
        self.started.append(return_id)
        execution = f"x{len(self.started) + 1}"
        self.returns.stuck(
            return_id, "States.Timeout", "the task timed out", actor="returns-workflow", execution=execution
        )


class StillRunning(InlineReturnWorkflow):
    """A workflow whose execution, once started, is still running: none of its steps has run yet."""

    def start(self, return_id: str, channel: str = "", correlation_id: str = "") -> None:
        self.started.append(return_id)


def test_a_return_stuck_midway_on_every_run_is_started_again_twice_then_left_to_a_person(world):
    # README: a return stuck midway with nothing refused, failed or pending is started again "twice
    # at most"; each stuck execution called a person already (ReturnWorkflowFailedAlarm).
    clock, workflow, item = timed_out_midway(world, StuckOnEachRun)

    for _ in range(5):
        clock.advance(minutes=16)
        reconciler(world, clock, workflow).run()

    assert workflow.started == [item.id, item.id]
    assert world.returns.get(item.id).status is R.RECEIVED


def test_a_return_its_restarted_workflow_left_stuck_again_waits_before_it_is_started_a_second_time(world):
    # Started again once its first stuck record was as old as a lost receipt, its workflow stopped
    # again at once: what stopped it this time gets as long to pass before the next start.
    clock, workflow, item = timed_out_midway(world, StuckOnEachRun)
    clock.advance(minutes=16)
    assert reconciler(world, clock, workflow).run() == [item.id]
    clock.advance(minutes=5)
    assert reconciler(world, clock, workflow).run() == []  # stuck again five minutes ago
    clock.advance(minutes=11)

    assert reconciler(world, clock, workflow).run() == [item.id]

    assert workflow.started == [item.id, item.id]


def test_a_pass_starts_at_most_its_limit_of_lost_receipts_and_the_next_pass_starts_the_rest(world):
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    lost = [one_mug_returned(world, returns) for _ in range(3)]
    for item in lost:
        returns.receive(item.id, RECEIPT, "key_wh")  # ...and each function died before starting the workflow
    clock.advance(minutes=16)

    first = reconciler(world, clock, workflow, limit=2).run()
    second = reconciler(world, clock, workflow, limit=2).run()

    assert (len(first), sorted(first + second)) == (2, sorted(item.id for item in lost))


def test_a_return_requested_long_ago_and_received_just_now_is_left_to_its_receipts_own_execution(world):
    # The index finds received returns by when they were requested: its receipt, minutes ago, may
    # still be running its workflow.
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    item = one_mug_returned(world, returns)
    clock.advance(days=3)
    returns.receive(item.id, RECEIPT, "key_wh")
    clock.advance(minutes=10)
    assert reconciler(world, clock, workflow).run() == []

    clock.advance(minutes=6)
    assert reconciler(world, clock, workflow).run() == [item.id]


def test_a_return_stuck_on_a_gateway_outage_whose_pending_refund_was_then_refused_is_left_to_a_person(world):
    """The outage left its refund pending; the pending-refund pass then had it refused. Nothing of
    it is pending and the stuck record names no refusal, but the refund failed: a person decides
    (another card, store credit). Started again, its workflow would ask the gateway again for a
    refund it refused."""
    clock, workflow, item = stuck_on_an_outage(world)
    world.gateway.script("refund", "refuse")
    refunds = RefundService(
        world.orders, Payments(load_plugin_manager(world.gateway, enable_test_payments=True)), clock
    )
    [refused] = refunds.finish_pending(item.order_id, "reconciler", unshown=True)
    assert refused.status == "failed"
    asked = len(world.gateway.keys("refund"))
    clock.advance(hours=1)
    methods = Payments(load_plugin_manager(world.gateway, enable_test_payments=True)).methods

    assert reconciler(world, clock, workflow, payment_methods=methods).run() == []

    assert workflow.started == [] and len(world.gateway.keys("refund")) == asked
    assert world.returns.get(item.id).status is R.RECEIVED


def test_a_lost_receipt_beside_a_return_of_its_order_left_to_a_person_is_started(world):
    # Two mugs of one order, returned apart: the first receipt's function died before starting its
    # workflow, the second's workflow was stuck on a refused refund. Only the second is the person's.
    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    order = world.allocated(("MUG", 2))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    one = RequestReturn.model_validate({"lines": [{"line_id": "L1", "quantity": 1, "reason": "changed my mind"}]})
    lost, refused = (returns.request(order.id, one, actor="key_cs") for _ in range(2))
    returns.receive(lost.id, RECEIPT, "key_wh")  # ...and the function died before starting the workflow
    returns.receive(refused.id, RECEIPT, "key_wh")
    returns.stuck(refused.id, "RefundNotDone", "the gateway refused the refund", actor="returns-workflow")
    clock.advance(minutes=16)

    assert reconciler(world, clock, workflow).run() == [lost.id]

    assert (world.returns.get(lost.id).status, world.returns.get(refused.id).status) == (R.REFUNDED, R.RECEIVED)


def test_an_exchange_stuck_three_times_that_got_further_on_its_last_run_is_started_again(world, monkeypatch):
    # Its Exchange step was throttled at the write deciding its replacement through two executions;
    # the third decided it, then was throttled at the write linking the replacement. Stuck three
    # times in all, but once since its last change: it is started again, not left to a person.
    clock = Clock()
    returns = returns_service(world, clock)
    order = world.allocated(("MUG", 1))
    for shipment in order.shipments:
        world.actions.ship(order.id, shipment.id, None, actor="key_wh")
    swap = {"lines": [{"line_id": "L1", "quantity": 1, "reason": "wrong colour"}],
            "exchange": {"lines": [{"sku": "MUG", "quantity": 1}]}}  # fmt: skip
    item = returns.request(order.id, RequestReturn.model_validate(swap), actor="key_cs")
    returns.receive(item.id, RECEIPT, "key_wh")
    real = world.returns.update
    throttled: list[Callable[[Return, Return], bool]] = []

    def update(new: Return, expected: Return) -> None:
        if throttled[-1](new, expected):
            raise TransientError("the returns table stayed throttled")
        real(new, expected)

    def deciding(new: Return, expected: Return) -> bool:
        return new.exchange_placing and not expected.exchange_placing

    def linking(new: Return, expected: Return) -> bool:
        return new.exchange_order_id is not None and expected.exchange_order_id is None

    monkeypatch.setattr(world.returns, "update", update)
    for write in (deciding, deciding, linking):
        throttled.append(write)
        clock.advance(minutes=20)
        stuck_on(returns, item.id, "exchange", TransientError, "the returns table stayed throttled", tries=3)
    monkeypatch.undo()
    assert world.returns.get(item.id).exchange_placing
    clock.advance(minutes=16)
    workflow = InlineReturnWorkflow(returns)

    assert reconciler(world, clock, workflow).run() == [item.id]

    done = world.returns.get(item.id)
    assert done.status is R.REFUNDED and done.exchange_order_id is not None


def test_an_index_whose_table_goes_down_mid_pass_fails_the_pass_with_what_it_restarted(world):
    # The index answered its first page, then its table stopped answering: the pass ends there and
    # fails on the outage (ReconcilerErrorsAlarm), reporting the return it started. Ended quietly,
    # every lost receipt behind that page would wait with no alarm for as long as the table is down.
    from core.return_reconciliation import ReturnsNotReconciled

    clock = Clock()
    returns = returns_service(world, clock)
    workflow = InlineReturnWorkflow(returns)
    lost = one_mug_returned(world, returns)
    returns.receive(lost.id, RECEIPT, "key_wh")  # ...and the function died before starting the workflow
    clock.advance(minutes=16)
    down = TransientError("the Returns table is not answering")

    class FirstPageOnly(InMemoryReceivedReturns):
        def received_before(self, before):
            yield from super().received_before(before)
            raise down

    passes = ReturnReconciler(
        FirstPageOnly(world.returns), world.returns, world.orders, workflow, clock,
        restart_after=timedelta(minutes=15),
    )  # fmt: skip
    with pytest.raises(ReturnsNotReconciled) as raised:
        passes.run()

    assert (raised.value.outage, raised.value.restarted) == (down, [lost.id])
    assert world.returns.get(lost.id).status is R.REFUNDED


def test_an_exchange_stuck_on_its_refused_rest_whose_replacement_was_cancelled_since_is_marked_refunded():
    # Three mugs for two caps: the gateway refused the rest of the credit through the step's
    # retries, stuck. The customer then cancelled the caps, and the whole credit went back to the
    # card: nothing is left to ask the gateway, so the pass marks the return refunded rather than
    # leave a settled return to a person (the mark asks the gateway nothing on an original that is
    # not itself a replacement).
    from tests.builders import NOW
    from tests.unit.test_returns import STOCK as RETURNS_STOCK
    from tests.unit.test_returns import exchange_of, receipt, returns_for, shipped

    world = build_world(RETURNS_STOCK)
    clock = Clock(NOW + timedelta(days=3))
    returns, _ = returns_for(world, clock, world.gateway)
    order = shipped(world, ("MUG", 3))
    item = returns.request(order.id, exchange_of("L1", 3, ("CAP", 2)), actor="key_cs")
    returns.receive(item.id, receipt("wh-west", ("L1", 3, "resellable")), "key_wh")
    returns.restock(item.id)
    returns.record_on_order(item.id, "key_wh")
    world.gateway.script("refund", "refuse")
    stuck_on(returns, item.id, "exchange", RefundNotDone, "the gateway refused the refund", tries=3)
    world.gateway.script("refund", "approve")
    world.actions.cancel(world.returns.get(item.id).exchange_order_id or "", "not wanted", actor="key_cs")
    [given_back] = [r for r in world.order(order.id).payment.refunds if r.status == "succeeded"]
    asked = len(world.gateway.keys("refund"))
    clock.advance(hours=1)
    workflow = InlineReturnWorkflow(returns)

    passes = [reconciler(world, clock, workflow) for _ in range(2)]
    assert [(p.run(), p.marked_refunded) for p in passes] == [([], [item.id]), ([], [])]

    assert world.returns.get(item.id).status is R.REFUNDED
    assert len(world.gateway.keys("refund")) == asked and workflow.started == []
    assert world.order(order.id).payment.refunded == given_back.amount

"""The local runtime's log lines: each names the function (and run) that wrote it, as on AWS, where
each function is its own process, although here every function shares one process, and so one
powertools formatter per service name."""

from __future__ import annotations

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import formatter, logger

from infra.local.lambdas import LOG_KEYS, WORKER_THREADS, LocalFunction, TimedOut
from infra.local.moto_patches import describe

STREAM = io.StringIO()
# Two handlers of one service, as the template's functions are: the second Logger finds the first's
# handler and formatter (powertools keeps them on the logging module's logger of that name).
first_logger = Logger(service="oms-local-logs-test", stream=STREAM, level="INFO")
second_logger = Logger(service="oms-local-logs-test")


@pytest.fixture
def functions_apart() -> Any:
    """As the local stack runs its functions (EmbeddedStack.start)."""
    with WORKER_THREADS.registered(), LOG_KEYS.registered():
        yield


@pytest.fixture
def lines() -> Any:
    STREAM.seek(0)
    STREAM.truncate()

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in STREAM.getvalue().splitlines()]

    return read


class Interleaved:
    """Function A logs, waits while B runs and logs, then logs again from its own thread, a thread
    it starts and a pool task it submits (the reports' partition readers, the webhook sender's
    lookup)."""

    def __init__(self) -> None:
        self.paused, self.resume = threading.Event(), threading.Event()

        @first_logger.inject_lambda_context(clear_state=True)
        def handler_a(event: dict[str, Any], context: Any) -> str:
            first_logger.append_keys(order_id=event["order_id"])
            first_logger.info("a before")
            if event.get("pause"):
                self.paused.set()
                assert self.resume.wait(10)
            first_logger.info("a after")
            worker = threading.Thread(target=first_logger.info, args=("a's thread",))
            worker.start()
            worker.join()
            with ThreadPoolExecutor(1) as pool:
                pool.submit(first_logger.info, "a's pool task").result()
            return context.aws_request_id

        @second_logger.inject_lambda_context(clear_state=True)
        def handler_b(event: dict[str, Any], context: Any) -> str:
            second_logger.info("b")
            return context.aws_request_id

        self.a = LocalFunction("oms-local-A", handler_a)
        self.b = LocalFunction("oms-local-B", handler_b)

    def run(self) -> dict[str, str]:
        """A's request id paused while B ran, B's, and A's next run's."""
        ran: dict[str, str] = {}

        def run_a() -> None:
            ran["a"] = self.a.invoke({"order_id": "ord_a", "pause": True})

        a = threading.Thread(target=run_a)
        a.start()
        assert self.paused.wait(10)
        ran["b"] = self.b.invoke({})
        self.resume.set()
        a.join(10)
        ran["a again"] = self.a.invoke({"order_id": "ord_a2"})
        return ran


@pytest.mark.usefixtures("functions_apart")
def test_each_line_names_the_function_and_run_that_wrote_it_while_another_ran_between(lines: Any) -> None:
    ran = Interleaved().run()

    found = [(line["message"], line["function_name"], line["function_request_id"]) for line in lines()]
    a, b, again = ran["a"], ran["b"], ran["a again"]
    assert found == [
        ("a before", "oms-local-A", a),
        ("b", "oms-local-B", b),
        ("a after", "oms-local-A", a),
        ("a's thread", "oms-local-A", a),
        ("a's pool task", "oms-local-A", a),
        ("a before", "oms-local-A", again),
        ("a after", "oms-local-A", again),
        ("a's thread", "oms-local-A", again),
        ("a's pool task", "oms-local-A", again),
    ]
    # The keys a handler appends are its own too: B's clear_state did not take A's order id.
    assert [line.get("order_id") for line in lines()] == ["ord_a", None, *["ord_a"] * 3, *["ord_a2"] * 4]


@pytest.mark.usefixtures("functions_apart")
def test_two_containers_of_one_function_running_at_once_log_each_its_own_run_and_start_cold(lines: Any) -> None:
    # An SQS mapping with a MaximumConcurrency runs a function's batches side by side, each in a
    # container of its own: the second's run set its keys while the first was paused in its own.
    apart = Interleaved()
    ran: dict[str, str] = {}
    paused = threading.Thread(target=lambda: ran.update(a=apart.a.invoke({"order_id": "ord_1", "pause": True})))
    paused.start()
    assert apart.paused.wait(10)
    ran["b"] = apart.a.invoke({"order_id": "ord_2"}, container=1)
    apart.resume.set()
    paused.join(10)

    found = [(line["message"], line["function_request_id"], line["order_id"], line["cold_start"]) for line in lines()]
    after = ["a after", "a's thread", "a's pool task"]
    assert found == [
        ("a before", ran["a"], "ord_1", True),
        *[(message, ran["b"], "ord_2", True) for message in ["a before", *after]],
        *[(message, ran["a"], "ord_1", True) for message in after],
    ]
    assert {line["function_name"] for line in lines()} == {"oms-local-A"}


@pytest.mark.usefixtures("functions_apart")
def test_each_function_s_first_run_is_its_cold_start(lines: Any) -> None:
    ran = Interleaved().run()

    cold = {(line["function_request_id"], line["cold_start"]) for line in lines()}
    assert cold == {(ran["a"], True), (ran["b"], True), (ran["a again"], False)}


@pytest.mark.usefixtures("functions_apart")
def test_a_run_after_a_timeout_starts_a_new_environment_cold_with_the_process_s_keys(lines: Any) -> None:
    @first_logger.inject_lambda_context  # not clear_state: what a run appended stays for the next
    def handler(event: dict[str, Any], context: Any) -> str:
        first_logger.info("kept", extra={"kept": first_logger.get_current_keys().get("order_id")})
        first_logger.append_keys(order_id=event["order_id"])
        return context.aws_request_id

    function = LocalFunction("oms-local-C", handler)
    first, warm = function.invoke({"order_id": "ord_1"}), function.invoke({"order_id": "ord_2"})
    function.timeout_seconds = 0  # any run is past it: Lambda replaces the environment
    with pytest.raises(TimedOut):
        function.invoke({"order_id": "ord_3"})
    function.timeout_seconds = 3
    fresh = function.invoke({"order_id": "ord_4"})

    found = [(line["function_request_id"], line["cold_start"], line.get("kept")) for line in lines()]
    assert found[:2] == [(first, True, None), (warm, False, "ord_1")]
    assert found[3] == (fresh, True, None)  # not ord_3, which the replaced environment kept


@pytest.mark.usefixtures("functions_apart")
def test_a_logger_built_in_a_run_has_the_process_s_keys_for_every_function() -> None:
    stream, built = io.StringIO(), []

    def handler(event: dict[str, Any], context: Any) -> None:
        if not built:  # built by the first run, as the authorizer builds its Logger
            built.append(Logger(service="oms-local-logs-lazy", stream=stream, level="INFO"))
        built[0].append_keys(function_name=context.function_name)
        built[0].info("a line")

    LocalFunction("oms-local-E", handler).invoke({})
    LocalFunction("oms-local-F", handler).invoke({})
    Logger(service="oms-local-logs-lazy").info("outside")

    found = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["service"], line.get("function_name")) for line in found] == [
        ("oms-local-logs-lazy", "oms-local-E"),
        ("oms-local-logs-lazy", "oms-local-F"),
        ("oms-local-logs-lazy", None),  # the process's keys took neither function's
    ]


@pytest.mark.parametrize("clear_state", [True, False])  # each run's keys made again, or the process's copied
def test_the_lines_keep_their_keys_in_powertools_order(lines: Any, clear_state: bool) -> None:
    @first_logger.inject_lambda_context(clear_state=clear_state)
    def handler(event: dict[str, Any], context: Any) -> None:
        first_logger.append_keys(order_id="ord_1")
        first_logger.info("one line")

    LocalFunction("oms-local-D", handler).invoke({})
    with WORKER_THREADS.registered(), LOG_KEYS.registered():
        LocalFunction("oms-local-D", handler).invoke({})

    before, after = (list(line) for line in lines())
    assert after == before


def test_the_patch_is_counted_and_the_last_undo_puts_powertools_back() -> None:
    owner = formatter.LambdaPowertoolsFormatter
    init, is_cold_start = owner.__dict__["__init__"], logger.__dict__["_is_cold_start"]
    LOG_KEYS.apply()
    LOG_KEYS.apply()
    LOG_KEYS.undo()
    assert "log_format" in owner.__dict__ and logger.__dict__["_is_cold_start"] is not is_cold_start
    LOG_KEYS.undo()
    assert "log_format" not in owner.__dict__ and owner.__dict__["__init__"] is init
    assert logger.__dict__["_is_cold_start"] is is_cold_start


def test_canary_what_the_patch_replaces_is_still_what_powertools_has() -> None:
    """If this fails after a powertools upgrade: read its logger.py and formatter.py again (where
    the keys live, how the cold start is decided), adapt LOG_KEYS, then update its `expects`."""
    found = {target: describe(original) for target, original in LOG_KEYS.targets().items()}
    assert found == LOG_KEYS.expects

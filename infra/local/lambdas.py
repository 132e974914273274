"""The template's functions as in-process handlers, and moto's Lambda Invoke answered by them."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from functions.warm import Warm
from infra.local.moto_patches import MotoPatch, lock
from infra.local.template import ACCOUNT_ID, REGION

logger = logging.getLogger("infra.local.lambdas")

Handler = Callable[[dict[str, Any], Any], Any]


class _Running(threading.local):
    """Which local function this thread is running (None outside one): its AWS calls are that
    function's (make bench counts them), and in which of its execution environments: its log lines
    carry that one's keys (LOG_KEYS). Class defaults, as they are read on every log line: a missing
    thread-local attribute raises (1.6 µs)."""

    function: str | None = None
    environment: _Environment | None = None


RUNNING = _Running()

_submit, _start = ThreadPoolExecutor.submit, threading.Thread.start


def _as(name: str | None, environment: _Environment | None, fn: Callable[..., Any]) -> Callable[..., Any]:
    def as_the_function(*args: Any, **kwargs: Any) -> Any:
        outer = RUNNING.function, RUNNING.environment
        RUNNING.function, RUNNING.environment = name, environment
        try:
            return fn(*args, **kwargs)
        finally:
            RUNNING.function, RUNNING.environment = outer

    return as_the_function


def _submit_as_the_function(executor: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    name = RUNNING.function
    return _submit(executor, fn if name is None else _as(name, RUNNING.environment, fn), *args, **kwargs)


def _start_as_the_function(thread: threading.Thread) -> None:
    name, frame = RUNNING.function, sys._getframe(1)
    while name is not None and frame is not None:  # not moto's own (an execution's), started in a call
        name, frame = None if frame.f_globals.get("__name__", "").startswith("moto.") else name, frame.f_back
    if name is not None:
        thread.run = _as(name, RUNNING.environment, thread.run)  # type: ignore[method-assign]
    _start(thread)


# Not moto's, but changed in the same counted way (moto_patches/__init__.py); not in its README list.
# A thread a running function starts (the webhook sender's DNS lookup) or a task it submits to a pool
# (functions/adapters/aggregates.py's partition readers) is part of its invocation, as on Lambda.
WORKER_THREADS = MotoPatch(
    "threads",
    changes="a thread a running function starts, and a task it submits to a pool, runs as that function",
    expects={},
    replacements=lambda: {
        (ThreadPoolExecutor, "submit"): _submit_as_the_function,
        (threading.Thread, "start"): _start_as_the_function,
    },
)


class _Environment:
    """What powertools keeps per process, kept for one execution environment of a function: on AWS
    each is its own process; here they all share this one, and so one formatter per service name
    (each module's Logger() finds the first's handler), one cold-start flag."""

    __slots__ = ("cold", "log_keys")

    def __init__(self) -> None:
        self.cold = True  # its first run is its cold start
        self.log_keys: dict[Any, dict[str, Any]] = {}  # formatter -> its log_format here


class _Container:
    """One execution environment of a function, as Lambda gives it one event at a time: its runs
    hold its lock, and its powertools state (_Environment) is its own from its first run (a cold
    start) until a run past its Timeout or an exit has the next one start fresh."""

    __slots__ = ("environment", "fresh_next", "lock")

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.environment: _Environment | None = None  # until its first run
        self.fresh_next = False  # the last run timed out or exited: Lambda replaced the environment


class _KeysOfTheRunningFunction:
    """LambdaPowertoolsFormatter.log_format, the keys every line carries (function_name,
    function_request_id, cold_start, correlation_id, what a handler appends), as the running
    function's environment has them: a run's lines, and its worker threads', carry its keys while
    another function's run sets its own. Outside a function, the formatter's own (what it was built
    with, as every function's module imports it); a function's copy is taken from them when it
    first reads them, as its own process would have built them."""

    def __get__(self, formatter: Any, owner: Any = None) -> Any:
        if formatter is None:
            return self
        if (environment := RUNNING.environment) is None:
            return formatter.__dict__["log_format"]
        keys = environment.log_keys.get(formatter)
        if keys is None:
            keys = environment.log_keys.setdefault(formatter, dict(formatter.__dict__["log_format"]))
        return keys

    def __set__(self, formatter: Any, keys: dict[str, Any]) -> None:
        if (environment := RUNNING.environment) is None:
            formatter.__dict__["log_format"] = keys
        else:  # clear_state(): the running function's keys start again
            environment.log_keys[formatter] = keys


def _cold_start_of_the_running_function(is_cold_start: Callable[[], bool]) -> Callable[[], bool]:
    def _is_cold_start() -> bool:
        if (environment := RUNNING.environment) is None:
            return is_cold_start()
        cold, environment.cold = environment.cold, False
        return cold

    return _is_cold_start


def _log_keys_replacements() -> dict[tuple[Any, str], Any]:
    from aws_lambda_powertools.logging import formatter, logger

    built = formatter.LambdaPowertoolsFormatter.__dict__["__init__"]
    return {
        (formatter.LambdaPowertoolsFormatter, "log_format"): _KeysOfTheRunningFunction(),
        # A formatter built in a run (a Logger made lazily) is built with the process's keys.
        (formatter.LambdaPowertoolsFormatter, "__init__"): functools.wraps(built)(_as(None, None, built)),
        (logger, "_is_cold_start"): _cold_start_of_the_running_function(logger.__dict__["_is_cold_start"]),
    }


# powertools', changed in the same counted way; checked against aws-lambda-powertools 3.37.0.
LOG_KEYS = MotoPatch(
    "log keys",
    changes="powertools' log keys (a formatter's, cold_start) are each function's, as each has its own process on AWS",
    expects={
        "aws_lambda_powertools.logging.formatter.LambdaPowertoolsFormatter.log_format": "missing",
        "aws_lambda_powertools.logging.formatter.LambdaPowertoolsFormatter.__init__": (
            "(self, json_serializer=None, json_deserializer=None, json_default=None, datefmt=None, "
            "use_datetime_directive=False, log_record_order=None, utc=False, use_rfc3339=False, "
            "serialize_stacktrace=True, **kwargs)"
        ),
        "aws_lambda_powertools.logging.logger._is_cold_start": "()",
    },
    replacements=_log_keys_replacements,
)


class RuntimeFailure(Exception):
    """A failure Lambda's runtime reports, not the handler: its errorType is the class's name (what a
    state's Retry/Catch, an OnFailure record match on), its errorMessage names the invocation's request
    id, and it has no stack trace."""

    def __init__(self, request_id: str, reason: str):
        super().__init__(f"RequestId: {request_id} Error: {reason}")


# A run past its Timeout (Lambda stopped it) or past what its caller waits; a SystemExit (the runtime exited).
TimedOut = type("Sandbox.Timedout", (RuntimeFailure,), {})
ExitError = type("Runtime.ExitError", (RuntimeFailure,), {})


def _exit_reason(code: Any) -> str:
    """As Lambda words a runtime's exit: sys.exit() and sys.exit(0) are status 0, sys.exit("text") 1."""
    status = 0 if code is None else code if isinstance(code, int) else 1
    return f"Runtime exited with error: exit status {status}" if status else "Runtime exited without providing a reason"


def _start_fresh(handler: Handler) -> None:
    """A new execution environment for `handler`: every Warm its package's modules hold
    (functions/warm.py) is built again by its next use; other packages keep theirs (the order
    workflow's steps share one package, so one container, here). Called as the next run starts,
    under the container's lock: what a thread the failed run left behind rebuilt is dropped too."""
    module_name = getattr(handler, "__module__", None) or ""
    package = module_name.rpartition(".")[0] or module_name
    for name, module in list(sys.modules.items()):
        if module is not None and (name == package or name.startswith(f"{package}.")):
            for value in list(vars(module).values()):
                if isinstance(value, Warm):
                    value.forget()


def end_invocation_metrics() -> None:
    """Clears the metric set as powertools' flush (print, then clear) leaves it when an invocation
    ends, where POWERTOOLS_METRICS_DISABLED (the local default) skips the flush: else the set every
    Metrics instance (and here every function) shares grows across invocations, printed at 100
    values and formatted whole by each add_metric. Metrics enabled, the flush has cleared it:
    nothing is done, so another function's run keeps what it has not printed yet."""
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled

    if is_metrics_disabled():
        _shared_metrics().clear_metrics()


@functools.cache
def _shared_metrics() -> Any:
    from aws_lambda_powertools import Metrics

    return Metrics()  # one of the instances sharing the class-level set


class RunClock:
    """A run's time as Lambda would count it: its thread's wall time less its waits for a CPU and
    for MOTO_LOCK, which a function on AWS (its own CPU, a DynamoDB that does not queue it behind
    another function's call) does not have (README: beside two CPU hogs, 59.4 s of wall time held
    37.2 s and 13.5 s of them). Started in the run's thread; read from any thread."""

    def __init__(self) -> None:
        self._thread, self._waited = threading.get_native_id(), lock.waited()
        self._started = time.monotonic()
        self._queued, self._locked = lock.queued_seconds(self._thread), self._waited.seconds

    def elapsed(self) -> float:
        queued = lock.queued_seconds(self._thread) - self._queued
        return self.at_most() - queued

    def at_most(self) -> float:
        """elapsed() with the wait for a CPU left in: never less, and read without /proc."""
        return time.monotonic() - self._started - (self._waited.seconds - self._locked)


@dataclass
class LambdaContext:
    """The attributes of the Lambda runtime's context object that handlers and powertools read (no
    others: function_version, log_group_name, identity, ... are read by nothing here)."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_seconds: float
    clock: RunClock = field(default_factory=RunClock, repr=False)  # the run's, as its Timeout is held to

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_seconds - self.clock.elapsed()) * 1000))


class LocalFunction:
    """One function of the template, run in this process like warm Lambda containers: imported on
    the first event (a cold start), one event at a time in each container (Lambda never gives a
    container two at once, and powertools' resolver keeps the current event on its module-level
    `app`). Every caller runs it in container 0, but an SQS mapping the template lets run batches
    side by side (ScalingConfig.MaximumConcurrency), which gives each batch a container of its own:
    its lock and powertools state (log keys, cold start). The containers share the one imported
    module, its Warm state too (functions/warm.py): a handler so run keeps what is each run's in
    the run (the webhook delivery's and import worker's BatchProcessor)."""

    def __init__(self, name: str, handler: str | Handler, *, memory_mb: int = 128, timeout_seconds: float = 3):
        self.name = name
        self.arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"
        self.memory_mb = memory_mb
        self.timeout_seconds = timeout_seconds
        self._handler = handler
        self._containers: dict[int, _Container] = {}  # by number, made as a run first asks for one
        # Read by Activity.wait_until_idle() and make bench: started invocations, and unfinished ones.
        self.invocations = 0
        self.in_flight = 0
        self._count_lock = threading.Lock()

    @classmethod
    def from_properties(
        cls, props: Mapping[str, Any], physical_name: str, handler: str | Handler | None = None
    ) -> LocalFunction:
        """From a function's Properties, Globals applied (Template.functions())."""
        memory_mb, timeout_seconds = int(props.get("MemorySize", 128)), int(props.get("Timeout", 3))
        return cls(physical_name, handler or props["Handler"], memory_mb=memory_mb, timeout_seconds=timeout_seconds)

    def new_context(self, request_id: str = "", clock: RunClock | None = None) -> LambdaContext:
        request_id = request_id or str(uuid.uuid4())
        return LambdaContext(self.name, self.memory_mb, self.arn, request_id, self.timeout_seconds, clock or RunClock())

    def invoke(self, event: Any, waits: float = math.inf, *, container: int = 0) -> Any:
        """Runs the handler in `container` (one of its execution environments); its exceptions
        propagate. A run past the Timeout, or past what the caller `waits` (API Gateway's 29 s), by
        its RunClock, is TimedOut, and SystemExit is ExitError, as Lambda reports them: a thread
        cannot be stopped, so the handler runs to its end (its writes stand) and its answer is
        dropped. After either, the container's next run starts fresh (_start_fresh)."""
        with self._count_lock:
            self.invocations += 1
            self.in_flight += 1
            running_in = self._containers.get(container) or self._containers.setdefault(container, _Container())
        outer, request_id = (RUNNING.function, RUNNING.environment), str(uuid.uuid4())
        try:
            with running_in.lock:  # held until the run has ended and marked the next one fresh
                handler = self._loaded(running_in)
                if running_in.environment is None:
                    running_in.environment = _Environment()
                RUNNING.function, RUNNING.environment = self.name, running_in.environment
                clock = RunClock()  # waiting for the container's lock is not run time
                try:
                    return handler(event, self.new_context(request_id, clock))
                except SystemExit as exit:
                    running_in.fresh_next = True
                    raise ExitError(request_id, _exit_reason(exit.code)) from None
                finally:
                    end_invocation_metrics()
                    limit = min(self.timeout_seconds, waits)
                    ran = clock.at_most()  # within the limit (the usual case), elapsed() is too
                    ran = clock.elapsed() if ran > limit else ran
                    # Past its own Timeout Lambda stopped the run and replaces its environment; past
                    # only what its caller waits (API Gateway's 29 s) the run ended on its own, warm.
                    running_in.fresh_next = running_in.fresh_next or ran > self.timeout_seconds
                    if ran > limit:  # what it raised too
                        raise TimedOut(request_id, f"Task timed out after {limit:.2f} seconds")
        finally:
            RUNNING.function, RUNNING.environment = outer
            with self._count_lock:
                self.in_flight -= 1

    def _loaded(self, container: _Container) -> Handler:
        """The handler, imported on the first event (a cold start); the module's warm state
        forgotten first if the container's last run timed out or exited (the containers share it:
        the others' next use builds it again too)."""
        if isinstance(self._handler, str):
            module, _, attribute = self._handler.rpartition(".")
            self._handler = getattr(importlib.import_module(module), attribute)
        if container.fresh_next:
            container.fresh_next, container.environment = False, None
            _start_fresh(self._handler)
        return self._handler

    def try_invoke(self, event: Any, *, container: int = 0) -> tuple[Any, Exception | None]:
        """invoke(), a failure returned and logged in one line (a Step Functions Catch may expect it),
        its traceback on DEBUG."""
        try:
            return self.invoke(event, container=container), None
        except Exception as error:
            logger.warning("%s raised %s: %s", self.name, type(error).__name__, error)
            logger.debug("%s traceback", self.name, exc_info=error)
            return None, error


class LambdaService:
    """The stack's functions as moto's Lambda Invoke sees them (moto_patches/lambda_invoke.py). A
    handler's exception becomes what the Lambda runtime reports (`X-Amz-Function-Error: Unhandled`,
    `errorType` its class name, for a state's Retry/Catch); handlers run with MOTO_LOCK released."""

    def __init__(self, functions: Mapping[str, LocalFunction]):
        self.functions = {function.name: function for function in functions.values()}
        # InvocationType Event, by function name: queued to the poller of the function's S3 event,
        # which invokes it as Lambda's async queue does (EventInvokeConfig, then OnFailure).
        self.asynchronous: dict[str, Callable[[Any], None]] = {}
        self._closed = False

    def lookup(self, name_or_arn: str) -> LocalFunction | None:
        """A name, a partial ARN (123:function:name) or a full ARN; versions and aliases are not emulated."""
        name, _, qualifier = name_or_arn.rpartition(":function:")[2].partition(":")
        return self.functions.get(name) if qualifier in ("", "$LATEST") else None

    def close(self, timeout: float = 5.0) -> None:
        """Refuses new invocations and waits up to `timeout` for running ones, so no handler outlives
        the mock it talks to."""
        self._closed = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(fn.in_flight for fn in self.functions.values()):
            time.sleep(0.02)

    def invoke(self, function: LocalFunction, body: Any, headers: Any, response_headers: dict[str, Any]) -> bytes:
        """RequestResponse (Step Functions' Lambda tasks), and Event for a function with an S3 event
        (the import splitter handing a file on to itself)."""
        if self._closed:
            return _error(response_headers, "Lambda.ServiceException", "the local stack is stopping")
        invocation_type = next((v for k, v in (headers or {}).items() if k.lower() == "x-amz-invocation-type"), None)
        if invocation_type == "Event" and function.name in self.asynchronous:
            self.asynchronous[function.name](json.loads(body) if body else {})
            response_headers["Content-Length"] = "0"
            return b""
        if invocation_type not in (None, "RequestResponse"):
            from moto.awslambda.exceptions import InvalidParameterValueException

            raise InvalidParameterValueException(f"InvocationType {invocation_type} is not emulated locally")
        with lock.released():
            result, error = function.try_invoke(json.loads(body) if body else {})
        if error is not None:
            return _error(response_headers, type(error).__name__, str(error))
        payload = json.dumps(result).encode("utf-8")
        response_headers["Content-Length"] = str(len(payload))
        return payload


def _error(response_headers: dict[str, Any], kind: str, message: str) -> bytes:
    payload = json.dumps({"errorMessage": message, "errorType": kind, "requestId": str(uuid.uuid4())}).encode()
    response_headers["x-amz-function-error"] = "Unhandled"
    response_headers["Content-Length"] = str(len(payload))
    return payload

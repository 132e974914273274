"""The template's functions as in-process handlers: imported on first use, invoked with a Lambda context."""

from __future__ import annotations

import importlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.local.template import ACCOUNT_ID, REGION, FunctionSpec

logger = logging.getLogger("infra.local.lambdas")

Handler = Callable[[dict[str, Any], Any], Any]


# Which local function this thread is running (None outside one), so AWS calls can be
# attributed to the function that made them (make bench counts requests per function).
RUNNING = threading.local()


@dataclass
class LambdaContext:
    """The attributes of the Lambda runtime's context object that handlers and powertools read."""

    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    timeout_seconds: float
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = "local"
    identity: Any = None
    client_context: Any = None

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_seconds
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def import_handler(reference: str) -> Handler:
    """`package.module.attribute` (a template's Handler) → the callable."""
    module_name, _, attribute = reference.rpartition(".")
    if not module_name:
        raise ValueError(f"handler {reference!r} is not module.attribute")
    return getattr(importlib.import_module(module_name), attribute)


class LocalFunction:
    """One function of the template, run in this process like one warm Lambda container.

    Invocations of one function are serialized by default: Lambda never gives a container two
    events at once, and handler modules rely on that (powertools' resolver keeps the current
    event on its module-level `app`).
    """

    def __init__(
        self,
        name: str,
        handler: str | Handler,
        *,
        memory_mb: int = 128,
        timeout_seconds: float = 3,
        serialize: bool = True,
    ):
        self.name = name
        self.arn = f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}"
        self.memory_mb = memory_mb
        self.timeout_seconds = timeout_seconds
        self._reference = handler if isinstance(handler, str) else None
        self._handler: Handler | None = None if isinstance(handler, str) else handler
        self._lock: threading.RLock | None = threading.RLock() if serialize else None
        self._import_lock = threading.Lock()
        # Counted for EmbeddedStack.wait_until_idle(): started invocations, and those not finished.
        self.invocations = 0
        self.in_flight = 0
        # What AWS would bill for: the handlers' run time, summed (make bench reads it).
        self.run_seconds = 0.0
        self._count_lock = threading.Lock()

    @classmethod
    def from_spec(
        cls,
        spec: FunctionSpec,
        physical_name: str,
        handler: str | Handler | None = None,
        **kwargs: Any,
    ) -> LocalFunction:
        return cls(
            physical_name,
            handler or spec.handler,
            memory_mb=spec.memory_mb,
            timeout_seconds=spec.timeout_seconds,
            **kwargs,
        )

    @property
    def handler(self) -> Handler:
        """Imported lazily: the first event pays for the import, as a cold start does."""
        if self._handler is None:
            with self._import_lock:
                if self._handler is None:
                    assert self._reference is not None
                    self._handler = import_handler(self._reference)
        return self._handler

    def new_context(self) -> LambdaContext:
        return LambdaContext(
            function_name=self.name,
            memory_limit_in_mb=self.memory_mb,
            invoked_function_arn=self.arn,
            aws_request_id=str(uuid.uuid4()),
            timeout_seconds=self.timeout_seconds,
        )

    def invoke(self, event: Any) -> Any:
        """Runs the handler; its exceptions propagate (the caller decides what a failure means)."""
        with self._count_lock:
            self.invocations += 1
            self.in_flight += 1
        outer = getattr(RUNNING, "function", None)
        started = time.monotonic()
        try:
            handler = self.handler
            context = self.new_context()
            if self._lock is None:
                RUNNING.function = self.name
                result = handler(event, context)
            else:
                with self._lock:
                    RUNNING.function = self.name
                    started = time.monotonic()  # waiting for the lock is not run time
                    result = handler(event, context)
        finally:
            RUNNING.function = outer
            elapsed = time.monotonic() - started
            with self._count_lock:
                self.in_flight -= 1
                self.run_seconds += elapsed
        if elapsed > self.timeout_seconds:
            # A thread cannot be killed; on AWS this invocation would have timed out.
            logger.warning("%s ran %.1f s, over its %s s timeout", self.name, elapsed, self.timeout_seconds)
        return result

"""What runs by itself once the stack is up: event source pollers and state machine executions."""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from contextlib import suppress

from infra.local.event_sources import RETRY_DELAY, EventSourceMapping, S3NotificationMapping, build_mapping
from infra.local.resources import Client, Resources

logger = logging.getLogger("infra.local.activity")


class Activity:
    """The mappings ("Function.EventName" -> poller) and the executions of the template's state
    machines: built from the template, started (paused or not), waited on until idle, stopped."""

    def __init__(
        self,
        resources: Resources,
        client: Client,
        *,
        retry_delay: float | None = None,
        batching_window_scale: float = 1.0,
    ):
        self.resources = resources
        self.client = client
        self.mappings: dict[str, EventSourceMapping] = {}
        self._options = {
            "retry_delay": RETRY_DELAY if retry_delay is None else retry_delay,
            "batching_window_scale": batching_window_scale,
        }

    def build(self) -> list[S3NotificationMapping]:
        """Every function event that is not Api. S3 events become their buckets' notification
        configurations: moto matches them, and the S3 mappings returned must be routed the
        notifications (infra/local/moto_patches/s3_notifications.py)."""
        resources = self.resources
        for logical_id, props in resources.template.functions().items():
            for name, event in (props.get("Events") or {}).items():
                if event["Type"] == "Api":
                    continue
                mapping = build_mapping(
                    logical_id,
                    name,
                    event,
                    resources.functions[logical_id],
                    invoke_config=props.get("EventInvokeConfig"),
                    resolve=resources.resolve,
                    queue_url_for_arn=lambda arn: resources.queue_url_for_arn(arn, self.client),
                    client=self.client,
                    **self._options,
                )
                self.mappings[mapping.name] = mapping
        s3_mappings = [m for m in self.mappings.values() if isinstance(m, S3NotificationMapping)]
        for bucket in sorted({m.bucket for m in s3_mappings}):
            lambdas = [m.notification for m in s3_mappings if m.bucket == bucket]
            self.client("s3").put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration={"LambdaFunctionConfigurations": lambdas}
            )
        return s3_mappings

    def start(self, *, paused: bool) -> None:
        for mapping in self.mappings.values():
            mapping.start(paused=paused)

    def pause(self) -> None:
        for mapping in self.mappings.values():
            mapping.pause()

    def resume(self) -> None:
        for mapping in self.mappings.values():
            mapping.resume()

    def stop(self) -> None:
        """Stops the pollers and what still runs, so no thread calls a handler after the stack."""
        for mapping in self.mappings.values():
            mapping.stop()
        with suppress(Exception):
            for arn in self.running_executions():
                with suppress(Exception):
                    self.client("stepfunctions").stop_execution(
                        executionArn=arn, error="LocalStackStopped", cause="the local stack stopped"
                    )

    def running_executions(self) -> list[str]:
        """ARNs of the executions still running, in every state machine of the template."""
        return [
            execution["executionArn"]
            for arn in self.resources.state_machine_arns.values()
            for execution in self.client("stepfunctions").list_executions(stateMachineArn=arn, statusFilter="RUNNING")[
                "executions"
            ]
        ]

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """True once every mapping is idle (EventSourceMapping.is_idle), no handler and no execution
        is running, and no invocation started while it looked; False after `timeout` seconds, with
        what was still busy and where every thread of the process stood logged (a WARNING): an
        execution left RUNNING with none of its tasks run showed nothing else of itself."""
        deadline = time.monotonic() + timeout
        while not self._quiet():
            if time.monotonic() >= deadline:
                logger.warning("not idle after %.1f s: %s\n%s", timeout, self._still_busy(), _thread_stacks())
                return False
            time.sleep(0.01)
        return True

    def _still_busy(self) -> str:
        functions = [f"{f.name} ({f.in_flight} running)" for f in self.resources.functions.values() if f.in_flight]
        mappings = [name for name, mapping in self.mappings.items() if not mapping.is_idle()]
        try:
            executions = self.running_executions()
        except Exception as error:  # what was asked for is the report: a failed look is part of it
            executions = [f"(not listed: {type(error).__name__}: {error})"]
        return f"functions {functions}, mappings {mappings}, executions RUNNING {executions}"

    def _quiet(self) -> bool:
        # The mappings are asked again after the handlers and executions: what one of those wrote
        # before it ended has woken its mappings by then.
        invocations = self._invocations()
        return self._drained() and not self._busy() and self._drained() and invocations == self._invocations()

    def _drained(self) -> bool:
        return all(mapping.is_idle() for mapping in self.mappings.values())

    def _invocations(self) -> int:
        return sum(function.invocations for function in self.resources.functions.values())

    def _busy(self) -> bool:
        functions = self.resources.functions.values()
        return any(function.in_flight for function in functions) or bool(self.running_executions())


def _thread_stacks() -> str:
    """Every thread of the process, by name, with the stack it stands in now."""
    frames = sys._current_frames()
    return "".join(
        f"--- thread {thread.name} (daemon={thread.daemon})\n" + "".join(traceback.format_stack(frames[thread.ident]))
        for thread in threading.enumerate()
        if thread.ident in frames
    )

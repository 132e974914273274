"""What runs by itself once the stack is up: event source pollers and state machine executions.

Built from the template, started (paused or not), paused and resumed, waited on until idle, and
stopped with the stack."""

from __future__ import annotations

import time
from contextlib import suppress
from typing import Any

from infra.local.event_sources import (
    EventSourceError,
    EventSourceMapping,
    MappingContext,
    S3NotificationMapping,
    build_mapping,
    s3_key_rules,
)
from infra.local.resources import Client, Resources


class Activity:
    """The mappings ("Function.EventName" -> poller) and the executions of the template's state
    machines. build() creates the mappings (and the buckets' notification configurations);
    start() starts their threads, paused or not."""

    def __init__(self, resources: Resources, client: Client, *, retry_delay: float | None = None):
        self.resources = resources
        self.client = client
        self.mappings: dict[str, EventSourceMapping] = {}
        self._retry_delay = retry_delay

    def build(self) -> list[S3NotificationMapping]:
        """Every function event that is not Api, and the buckets' notifications: Lambda ones become
        mappings (moto matches the event, the mapping delivers it: the S3 mappings returned must
        be routed, infra/local/moto_patches/s3_notifications.py), queue ones moto delivers."""
        resources = self.resources
        context = MappingContext(
            resolve=resources.resolve,
            queue_url_for_arn=lambda arn: resources.queue_url_for_arn(arn, self.client),
            client=self.client,
        )
        if self._retry_delay is not None:
            context.retry_delay = self._retry_delay
        for spec in resources.template.event_sources():
            mapping = build_mapping(spec, resources.functions[spec.function_logical_id], context)
            if mapping is not None:
                self.mappings[mapping.name] = mapping
        configurations: dict[str, dict[str, list[dict[str, Any]]]] = {}  # bucket -> notification configuration
        for bucket in resources.template.buckets():
            config = bucket.properties.get("NotificationConfiguration") or {}
            name = resources.bucket_names[bucket.logical_id]
            for index, entry in enumerate(config.get("LambdaConfigurations") or []):
                where = f"{bucket.logical_id}.NotificationConfiguration.LambdaConfigurations[{index}]"
                arn = str(context.resolve(entry.get("Function")))
                function_id = resources.function_id_of_arn(arn)
                if function_id is None:
                    raise EventSourceError(f"{where}: Function {arn} is not a function of this template")
                mapping = S3NotificationMapping(
                    name=f"{bucket.logical_id}.Lambda{index}",
                    function_logical_id=function_id,
                    function=resources.functions[function_id],
                    source_arn=f"arn:aws:s3:::{name}",
                    bucket=name,
                    events=[context.resolve(entry.get("Event"))],
                    key_filters=s3_key_rules(context.resolve(entry.get("Filter")), where),
                    client=self.client,
                    poll_interval=context.poll_interval,
                    retry_delay=context.retry_delay,
                )
                self.mappings[mapping.name] = mapping
            for index, entry in enumerate(config.get("QueueConfigurations") or []):
                where = f"{bucket.logical_id}.NotificationConfiguration.QueueConfigurations[{index}]"
                rules = s3_key_rules(context.resolve(entry.get("Filter")), where)
                queue_entry: dict[str, Any] = {
                    "QueueArn": str(context.resolve(entry.get("Queue"))),
                    "Events": [context.resolve(entry.get("Event"))],
                }
                if rules:
                    queue_entry["Filter"] = {"Key": {"FilterRules": rules}}
                configurations.setdefault(name, {}).setdefault("QueueConfigurations", []).append(queue_entry)
        s3_mappings = [m for m in self.mappings.values() if isinstance(m, S3NotificationMapping)]
        for mapping in s3_mappings:  # the functions' S3 events and the buckets' Lambda configurations
            lambdas = configurations.setdefault(mapping.bucket, {}).setdefault("LambdaFunctionConfigurations", [])
            lambdas.append(mapping.notification_configuration())
        for bucket_name in sorted(configurations):
            self.client("s3").put_bucket_notification_configuration(
                Bucket=bucket_name, NotificationConfiguration=configurations[bucket_name]
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
        if not self.resources.state_machine_arns:
            return
        with suppress(Exception):
            sfn = self.client("stepfunctions")
            for arn in self.running_executions():
                with suppress(Exception):
                    sfn.stop_execution(executionArn=arn, error="LocalStackStopped", cause="the local stack stopped")

    def running_executions(self) -> list[str]:
        """ARNs of the executions still running, in every state machine of the template."""
        running = []
        for arn in self.resources.state_machine_arns.values():
            answer = self.client("stepfunctions").list_executions(stateMachineArn=arn, statusFilter="RUNNING")
            running.extend(execution["executionArn"] for execution in answer["executions"])
        return running

    def wait_until_idle(self, timeout: float = 10.0) -> bool:
        """True once every mapping has drained its source, no handler is running and no execution
        is running, twice in a row with no invocation in between; False after `timeout` seconds.
        A paused mapping counts as idle (its records wait); an SQS queue whose messages are in
        flight (invisible after a failure, or held by another consumer) is not drained yet."""
        deadline = time.monotonic() + timeout
        quiet_rounds = 0
        while time.monotonic() < deadline:
            mark = time.monotonic()
            invocations = self._invocation_count()
            if self._busy():
                quiet_rounds = 0
                time.sleep(0.02)
                continue
            while not all(mapping.is_idle_since(mark) for mapping in self.mappings.values()):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
            if self._invocation_count() == invocations and not self._busy():
                quiet_rounds += 1
                if quiet_rounds >= 2:
                    return True
            else:
                quiet_rounds = 0
        return False

    def _invocation_count(self) -> int:
        return sum(function.invocations for function in self.resources.functions.values())

    def _busy(self) -> bool:
        functions = self.resources.functions.values()
        return any(function.in_flight for function in functions) or bool(self.running_executions())

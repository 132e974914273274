"""Provisioning: every resource of template.yaml created in moto, and what `!Ref`/`!GetAtt` answer.

Order matters only through references: tables, queues (a DLQ before the queue whose
RedrivePolicy names it), event buses, functions, buckets, state machines (a definition may
substitute another state machine's ARN).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from infra.local.asl import AslError, validate_asl
from infra.local.lambdas import Handler, LocalFunction
from infra.local.template import ACCOUNT_ID, REGION, Template

logger = logging.getLogger("infra.local.stack")

Client = Callable[[str], Any]  # service name -> a boto3 client of the running mock


class Resources:
    """The template's resources in moto, by logical id. create() fills every map."""

    def __init__(self, template: Template, stack_name: str, handlers: Mapping[str, str | Handler] | None = None):
        self.template = template
        self.stack_name = stack_name
        self._handler_overrides = dict(handlers or {})
        unknown = set(self._handler_overrides) - set(template.functions())
        if unknown:
            raise ValueError(f"handlers given for functions the template lacks: {sorted(unknown)}")
        self.refs: dict[str, str] = {}  # logical id -> what !Ref returns (table name, queue URL, ...)
        self.atts: dict[str, str] = {}  # "Logical.Attr" -> what !GetAtt returns
        self.table_names: dict[str, str] = {}
        self.queue_urls: dict[str, str] = {}
        self.bucket_names: dict[str, str] = {}
        self.event_bus_names: dict[str, str] = {}
        self.functions: dict[str, LocalFunction] = {}
        self.function_arns: dict[str, str] = {}
        self.state_machine_arns: dict[str, str] = {}
        self.function_environments: dict[str, dict[str, str]] = {}  # each function's own view (as on AWS)

    def physical_name(self, logical_id: str) -> str:
        return f"{self.stack_name}-{logical_id}"

    def resolve(self, value: Any) -> Any:
        return self.template.resolve(value, self.refs, self.atts)

    def create(self, client: Client) -> None:
        self._create_tables(client)
        self._create_queues(client)
        self._create_event_buses(client)
        self._create_functions()
        self._create_buckets(client)
        self._create_state_machines(client)

    def environment(self) -> dict[str, str]:
        """The union of Globals and every function's resolved Environment.Variables: one process
        runs every function and has one os.environ. A name given two values keeps the first, with
        a warning (`function_environments` keeps what each function would see on AWS)."""
        environment = self.template.global_environment(self.refs)
        for spec in self.template.functions().values():
            own = {name: _env_value(self.resolve(value)) for name, value in spec.environment.items()}
            self.function_environments[spec.logical_id] = own
            for name, resolved in own.items():
                if name in environment and environment[name] != resolved:
                    logger.warning(
                        "%s: %s=%r differs from %r; keeping the first",
                        spec.logical_id,
                        name,
                        resolved,
                        environment[name],
                    )
                    continue
                environment[name] = resolved
        return environment

    def queue_url_for_arn(self, arn: str, client: Client) -> str:
        for logical_id, url in self.queue_urls.items():
            if self.atts.get(f"{logical_id}.Arn") == arn:
                return url
        return client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]

    def function_id_of_arn(self, arn: str) -> str | None:
        return next((fid for fid, farn in self.function_arns.items() if farn == arn), None)

    # --- One resource type each -----------------------------------------------------------------
    def _create_tables(self, client: Client) -> None:
        for table in self.template.tables():
            dynamodb = client("dynamodb")
            name = table.table_name or self.physical_name(table.logical_id)
            description = dynamodb.create_table(**table.create_table_request(name))["TableDescription"]
            if table.ttl_attribute:
                dynamodb.update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": table.ttl_attribute}
                )
            self.table_names[table.logical_id] = name
            self.refs[table.logical_id] = name
            self.atts[f"{table.logical_id}.Arn"] = description["TableArn"]
            if "LatestStreamArn" in description:
                self.atts[f"{table.logical_id}.StreamArn"] = description["LatestStreamArn"]

    def _create_queues(self, client: Client) -> None:
        pending = self.template.queues()
        while pending:  # a queue's RedrivePolicy names its DLQ by !GetAtt
            progressed = False
            for queue in list(pending):
                try:
                    attributes = _queue_attributes(self.resolve(queue.properties))
                except KeyError:
                    continue
                name = attributes.pop("QueueName", None) or self.physical_name(queue.logical_id)
                if queue.fifo and not name.endswith(".fifo"):
                    name += ".fifo"
                url = client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
                self.queue_urls[queue.logical_id] = url
                self.refs[queue.logical_id] = url
                self.atts[f"{queue.logical_id}.QueueName"] = name
                self.atts[f"{queue.logical_id}.QueueUrl"] = url
                self.atts[f"{queue.logical_id}.Arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"
                pending.remove(queue)
                progressed = True
            if not progressed:
                raise ValueError(f"cannot resolve the properties of queues {[q.logical_id for q in pending]}")

    def _create_event_buses(self, client: Client) -> None:
        """What the functions publish to, and what a local rule (aws events put-rule
        --event-bus-name ...) can subscribe a queue to."""
        for logical_id, resource in self.template.resources_of_type("AWS::Events::EventBus").items():
            name = self.resolve((resource.get("Properties") or {}).get("Name")) or self.physical_name(logical_id)
            arn = client("events").create_event_bus(Name=name)["EventBusArn"]
            self.event_bus_names[logical_id] = name
            self.refs[logical_id] = name
            self.atts[f"{logical_id}.Arn"] = arn
            self.atts[f"{logical_id}.Name"] = name

    def _create_buckets(self, client: Client) -> None:
        for bucket in self.template.buckets():
            name = self.resolve(bucket.properties.get("BucketName")) or self.physical_name(bucket.logical_id).lower()
            client("s3").create_bucket(Bucket=name)
            self.bucket_names[bucket.logical_id] = name
            self.refs[bucket.logical_id] = name
            self.atts[f"{bucket.logical_id}.Arn"] = f"arn:aws:s3:::{name}"
            # NotificationConfiguration is the event sources' (infra/local/activity.py), not moto's alone.

    def _create_functions(self) -> None:
        """A LocalFunction per AWS::Serverless::Function (handlers imported on first use), with the
        ARN `!GetAtt X.Arn` answers; moto's Lambda Invoke reaches them through LambdaService."""
        from moto.sqs.models import DEFAULT_SENDER_ID as SQS_SENDER_ID

        for logical_id, spec in self.template.functions().items():
            props = self.template.resources[logical_id].get("Properties", {})
            name = self.resolve(props.get("FunctionName")) or self.physical_name(logical_id)
            function = LocalFunction.from_spec(
                spec, name, self._handler_overrides.get(logical_id), base_dir=self.template.base_dir
            )
            self.functions[logical_id] = function
            self.function_arns[logical_id] = function.arn
            self.refs[logical_id] = name
            self.atts[f"{logical_id}.Arn"] = function.arn
            # The role SAM makes for it. Every local call is signed with the same credentials, so
            # moto's SQS records one SenderId for every sender: that is each role's unique id here.
            self.atts[f"{logical_id}Role.RoleId"] = SQS_SENDER_ID
            self.atts[f"{logical_id}Role.Arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{name}-role"

    def _create_state_machines(self, client: Client) -> None:
        """Every state machine, its DefinitionSubstitutions resolved and its ASL validated first."""
        pending = self.template.state_machines()
        while pending:  # a definition may substitute another state machine's ARN
            progressed, unresolved = False, ""
            for spec in list(pending):
                try:
                    name = self.resolve(spec.name) or self.physical_name(spec.logical_id)
                    substitutions = {key: self.resolve(value) for key, value in spec.substitutions.items()}
                except KeyError as error:
                    unresolved = f"{spec.logical_id}: {error.args[0]}"
                    continue
                definition = spec.load_definition(self.template.base_dir, substitutions)
                problems = validate_asl(definition)
                if problems:
                    raise AslError(spec.logical_id, problems)
                arn = client("stepfunctions").create_state_machine(
                    name=name,
                    definition=json.dumps(definition),
                    roleArn=f"arn:aws:iam::{ACCOUNT_ID}:role/{name}-role",
                    type=spec.type,
                )["stateMachineArn"]
                self.state_machine_arns[spec.logical_id] = arn
                self.refs[spec.logical_id] = arn
                self.atts[f"{spec.logical_id}.Arn"] = arn
                self.atts[f"{spec.logical_id}.Name"] = name
                pending.remove(spec)
                progressed = True
            if not progressed:
                raise ValueError(f"state machine {unresolved} (in Name or DefinitionSubstitutions)")


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _queue_attributes(properties: Mapping[str, Any]) -> dict[str, str]:
    """CloudFormation's AWS::SQS::Queue properties as CreateQueue attributes (all strings)."""
    attributes: dict[str, str] = {}
    for key, value in properties.items():
        if key == "Tags":
            continue
        if key in ("RedrivePolicy", "RedriveAllowPolicy") and not isinstance(value, str):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        attributes[key] = str(value)
    return attributes

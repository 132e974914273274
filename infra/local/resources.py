"""Provisioning: every resource of template.yaml created in moto, and what `!Ref`/`!GetAtt` answer.

Order matters only through references: tables, queues (a DLQ before the queue whose
RedrivePolicy names it), event buses, functions, buckets, state machines (whose definitions
substitute the ARNs of functions).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from infra.asl import AslError, validate_asl
from infra.local.lambdas import Handler, LocalFunction
from infra.local.template import ACCOUNT_ID, REGION, Template, Unresolved, create_table_request, env_string

logger = logging.getLogger("infra.local.stack")

Client = Callable[[str], Any]  # service name -> a boto3 client of the running mock

# What the functions see locally only (the template never sets it): webhook receivers on
# http://127.0.0.1 accepted (on AWS only https to public addresses is).
LOCAL_ENVIRONMENT = {"WEBHOOK_ALLOW_LOCAL_HTTP": "true"}


def directory_bucket_client() -> Any:
    """An S3 client that reaches a directory bucket in moto, which has none: botocore sends a
    CreateBucket of such a name to s3express-control.<region>.amazonaws.com, whose host moto reads
    as the bucket's name; sent to S3's regional endpoint instead, it makes an ordinary bucket of
    that name, which serves the functions' requests. With no S3 Express session (its requests go
    to the bucket then): moto has no CreateSession, and functions.adapters.labels asks for none."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=f"https://s3.{REGION}.amazonaws.com",
        config=Config(s3={"disable_s3_express_session_auth": True}),
    )


class Resources:
    """The template's resources in moto, by logical id. create() fills every map."""

    def __init__(self, template: Template, handlers: Mapping[str, str | Handler] | None = None):
        self.template = template
        self._handler_overrides = dict(handlers or {})
        unknown = set(self._handler_overrides) - set(template.functions())
        if unknown:
            raise ValueError(f"handlers given for functions the template lacks: {sorted(unknown)}")
        self.refs: dict[str, str] = {}  # logical id -> what !Ref returns (table name, queue URL, ...)
        self.atts: dict[str, str] = {}  # "Logical.Attr" -> what !GetAtt returns
        self.table_names: dict[str, str] = {}
        self.queue_urls: dict[str, str] = {}
        self.bucket_names: dict[str, str] = {}
        self.directory_buckets: set[str] = set()  # logical ids of bucket_names' S3 Express ones
        self.event_bus_names: dict[str, str] = {}
        self.functions: dict[str, LocalFunction] = {}
        self.function_arns: dict[str, str] = {}
        self.state_machine_arns: dict[str, str] = {}
        self.function_environments: dict[str, dict[str, str]] = {}  # each function's own view (as on AWS)
        self.usage_plan_ids: dict[str, str] = {}  # logical id -> the usage plan's id in moto

    def physical_name(self, logical_id: str) -> str:
        return f"{self.template.stack_name}-{logical_id}"

    def resolve(self, value: Any) -> Any:
        return self.template.resolve(value, self.refs, self.atts)

    def create(self, client: Client) -> None:
        self._create_tables(client)
        self._create_queues(client)
        self._create_event_buses(client)
        self._create_functions()
        self._create_buckets(client)
        self._create_state_machines(client)
        self.create_usage_plans(client)

    def environment(self) -> dict[str, str]:
        """The union of Globals and every function's resolved Environment.Variables: one process
        runs every function and has one os.environ. A name given two values keeps the first, with
        a warning (`function_environments` keeps what each function would see on AWS)."""
        environment = self.template.global_environment(self.refs, self.atts)
        for logical_id, props in self.template.functions().items():
            own = {
                name: env_string(
                    self.template.resolve_at(f"{logical_id}.Environment.Variables.{name}", value, self.refs, self.atts)
                )
                for name, value in props["Environment"]["Variables"].items()
            }
            self.function_environments[logical_id] = own
            for name, resolved in own.items():
                if name in environment and environment[name] != resolved:
                    logger.warning(
                        "%s: %s=%r differs from %r; keeping the first", logical_id, name, resolved, environment[name]
                    )
                environment.setdefault(name, resolved)
        environment.update(LOCAL_ENVIRONMENT)
        return environment

    def queue_url_for_arn(self, arn: str, client: Client) -> str:
        return client("sqs").get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]

    # --- One resource type each -----------------------------------------------------------------
    def _create_tables(self, client: Client) -> None:
        for logical_id, props in self.template.properties("AWS::DynamoDB::Table").items():
            dynamodb = client("dynamodb")
            name = self.physical_name(logical_id)
            description = dynamodb.create_table(**create_table_request(props, name))["TableDescription"]
            if (ttl := props.get("TimeToLiveSpecification") or {}).get("Enabled"):
                dynamodb.update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]}
                )
            self.table_names[logical_id] = self.refs[logical_id] = name
            self.atts[f"{logical_id}.Arn"] = description["TableArn"]
            if "LatestStreamArn" in description:
                self.atts[f"{logical_id}.StreamArn"] = description["LatestStreamArn"]

    def _create_queues(self, client: Client) -> None:
        # A queue's RedrivePolicy names its dead-letter queue by !GetAtt: those come first.
        queues = sorted(
            self.template.properties("AWS::SQS::Queue").items(), key=lambda item: "RedrivePolicy" in item[1]
        )
        for logical_id, props in queues:
            attributes = {
                key: str(props[key]) for key in ("VisibilityTimeout", "MessageRetentionPeriod") if key in props
            }
            if "RedrivePolicy" in props:
                attributes["RedrivePolicy"] = json.dumps(self.resolve(props["RedrivePolicy"]))
            name = self.physical_name(logical_id)
            url = client("sqs").create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
            self.queue_urls[logical_id] = self.refs[logical_id] = self.atts[f"{logical_id}.QueueUrl"] = url
            self.atts[f"{logical_id}.QueueName"] = name
            self.atts[f"{logical_id}.Arn"] = f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}"

    def _create_event_buses(self, client: Client) -> None:
        for logical_id, props in self.template.properties("AWS::Events::EventBus").items():
            name = self.resolve(props["Name"])
            self.atts[f"{logical_id}.Arn"] = client("events").create_event_bus(Name=name)["EventBusArn"]
            self.event_bus_names[logical_id] = self.refs[logical_id] = self.atts[f"{logical_id}.Name"] = name

    def _create_buckets(self, client: Client) -> None:
        for logical_id, props in self.template.properties("AWS::S3::Bucket").items():
            name = self.resolve(props.get("BucketName")) or self.physical_name(logical_id).lower()
            client("s3").create_bucket(Bucket=name)
            self.bucket_names[logical_id] = self.refs[logical_id] = name
            self.atts[f"{logical_id}.Arn"] = f"arn:aws:s3:::{name}"
        for logical_id, props in self.template.properties("AWS::S3Express::DirectoryBucket").items():
            # Named as CloudFormation names one (`<base>--<zone id>--x-s3`), by which botocore sends
            # its requests to the zone's endpoint, signed for s3express.
            name = f"{self.physical_name(logical_id).lower()}--{self.resolve(props['LocationName'])}--x-s3"
            directory_bucket_client().create_bucket(Bucket=name)
            self.bucket_names[logical_id] = self.refs[logical_id] = name
            self.atts[f"{logical_id}.Arn"] = f"arn:aws:s3express:{REGION}:{ACCOUNT_ID}:bucket/{name}"
            self.directory_buckets.add(logical_id)

    def _create_functions(self) -> None:
        """A LocalFunction per function (moto's Lambda Invoke reaches them through LambdaService)."""
        from moto.sqs.models import DEFAULT_SENDER_ID as SQS_SENDER_ID

        for logical_id, props in self.template.functions().items():
            name = self.physical_name(logical_id)
            function = LocalFunction.from_properties(props, name, self._handler_overrides.get(logical_id))
            self.functions[logical_id] = function
            self.function_arns[logical_id] = self.atts[f"{logical_id}.Arn"] = function.arn
            self.refs[logical_id] = name
            # The role SAM makes for it. Every local call is signed with the same credentials, so
            # moto's SQS records one SenderId for every sender: that is each role's unique id here.
            self.atts[f"{logical_id}Role.RoleId"] = SQS_SENDER_ID
            self.atts[f"{logical_id}Role.Arn"] = f"arn:aws:iam::{ACCOUNT_ID}:role/{name}-role"

    def create_usage_plans(self, client: Client) -> None:
        """API keys, usage plans on the local API's stage, and the keys in them: the local gateway
        reads from moto which plan the key an authorizer names is in (infra/local/gateway.py). Public:
        the in-process API of the tests makes them too (tests/integration/in_process.py)."""
        from infra.local.gateway import API_ID

        api = self.template.rest_api_id()
        self.refs[api] = API_ID
        self.refs[f"{api}.Stage"] = str(self.template.resolve(self.template.api("StageName", "Prod")))
        apigateway = client("apigateway")
        for logical_id, props in self.template.properties("AWS::ApiGateway::ApiKey").items():
            resolved = self.resolve(props)
            key = {"name": resolved.get("Name") or self.physical_name(logical_id)}
            key |= {"value": resolved["Value"]} if resolved.get("Value") else {}
            made = apigateway.create_api_key(**key, enabled=bool(resolved.get("Enabled", False)))
            self.refs[logical_id] = made["id"]
        for logical_id, props in self.template.properties("AWS::ApiGateway::UsagePlan").items():
            resolved = self.resolve(props)
            plan: dict[str, Any] = {"name": resolved.get("UsagePlanName") or self.physical_name(logical_id)}
            plan["apiStages"] = [{"apiId": s["ApiId"], "stage": s["Stage"]} for s in resolved.get("ApiStages") or []]
            if throttle := resolved.get("Throttle"):
                plan["throttle"] = {
                    "rateLimit": float(throttle["RateLimit"]),
                    "burstLimit": int(throttle["BurstLimit"]),
                }
            if quota := resolved.get("Quota"):
                plan["quota"] = {"limit": int(quota["Limit"]), "period": quota["Period"]}
            self.refs[logical_id] = self.usage_plan_ids[logical_id] = apigateway.create_usage_plan(**plan)["id"]
        for props in self.template.properties("AWS::ApiGateway::UsagePlanKey").values():
            resolved = self.resolve(props)
            apigateway.create_usage_plan_key(
                usagePlanId=resolved["UsagePlanId"], keyId=resolved["KeyId"], keyType=resolved["KeyType"]
            )

    def _create_state_machines(self, client: Client) -> None:
        """Every state machine, its DefinitionSubstitutions resolved and its ASL validated first
        (moto would accept what CreateStateMachine refuses on AWS)."""
        for logical_id, props in self.template.properties("AWS::Serverless::StateMachine").items():
            try:
                substitutions = self.resolve(props.get("DefinitionSubstitutions") or {})
            except Unresolved as error:
                raise ValueError(f"state machine {logical_id}: {error}") from None
            definition = self.template.state_machine_definition(props, substitutions)
            if problems := validate_asl(definition):
                raise AslError(logical_id, problems)
            name = self.physical_name(logical_id)
            role = f"arn:aws:iam::{ACCOUNT_ID}:role/{name}-role"
            kind = str(props.get("Type", "STANDARD")).upper()
            created = client("stepfunctions").create_state_machine(
                name=name, definition=json.dumps(definition), roleArn=role, type=kind
            )
            arn = self.state_machine_arns[logical_id] = self.refs[logical_id] = created["stateMachineArn"]
            self.atts[f"{logical_id}.Arn"] = arn
            self.atts[f"{logical_id}.Name"] = name

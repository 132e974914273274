"""Reads template.yaml into what the local runtime creates and serves: tables, queues, buckets, routes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account


# --- Loading ------------------------------------------------------------------------------------
# PyYAML has no CloudFormation loader, and cfn-lint's decoder is a dev tool whose import pulls in
# its whole rule engine, far too heavy for `make run`'s start-up; the short tags are a few lines.


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short tags (`!Ref x`) into their long form."""


# CloudFormation reads `2010-09-09` or `on` as strings, not as a date or a boolean.
CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:timestamp",)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_SHORT_TAGS = [
    "Ref",
    "Condition",
    "Base64",
    "Cidr",
    "FindInMap",
    "GetAtt",
    "GetAZs",
    "ImportValue",
    "Join",
    "Select",
    "Split",
    "Sub",
    "Transform",
    "And",
    "Equals",
    "If",
    "Not",
    "Or",
    "ToJsonString",
    "Length",
]


def _long_form(tag: str, loader: CfnLoader, node: yaml.Node) -> dict[str, Any]:
    key = tag if tag in ("Ref", "Condition") else f"Fn::{tag}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag == "GetAtt":
            value = value.split(".", 1)  # `!GetAtt Res.Attr` is ["Res", "Attr"]
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {key: value}


for _tag in _SHORT_TAGS:
    CfnLoader.add_constructor(f"!{_tag}", lambda loader, node, tag=_tag: _long_form(tag, loader, node))


def load_template(path: str | Path | None = None) -> dict[str, Any]:
    """The template as plain dicts, short tags in their long form."""
    text = Path(path or DEFAULT_TEMPLATE).read_text(encoding="utf-8")
    document = yaml.load(text, Loader=CfnLoader)
    if not isinstance(document, dict) or "Resources" not in document:
        raise ValueError(f"{path or DEFAULT_TEMPLATE}: not a CloudFormation template")
    return document


# --- What the template declares ---------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    logical_id: str
    key_schema: list[dict[str, str]]
    attribute_definitions: list[dict[str, str]]
    global_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    local_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    stream_view_type: str | None = None
    ttl_attribute: str | None = None
    billing_mode: str = "PAY_PER_REQUEST"
    table_name: str | None = None  # an explicit TableName, if the template sets one

    def create_table_request(self, physical_name: str) -> dict[str, Any]:
        """Keyword arguments for DynamoDB CreateTable."""
        provisioned = self.billing_mode == "PROVISIONED"
        throughput = {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
        request: dict[str, Any] = {
            "TableName": physical_name,
            "KeySchema": self.key_schema,
            "AttributeDefinitions": self.attribute_definitions,
            "BillingMode": self.billing_mode,
        }
        if provisioned:
            request["ProvisionedThroughput"] = throughput
        if self.global_secondary_indexes:
            request["GlobalSecondaryIndexes"] = [
                {**index, "ProvisionedThroughput": throughput} if provisioned else index
                for index in self.global_secondary_indexes
            ]
        if self.local_secondary_indexes:
            request["LocalSecondaryIndexes"] = self.local_secondary_indexes
        if self.stream_view_type:
            request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": self.stream_view_type}
        return request


@dataclass(frozen=True)
class QueueSpec:
    logical_id: str
    properties: dict[str, Any]  # raw; RedrivePolicy may hold !GetAtt to another queue

    @property
    def fifo(self) -> bool:
        return bool(self.properties.get("FifoQueue"))


@dataclass(frozen=True)
class BucketSpec:
    logical_id: str
    properties: dict[str, Any]  # raw; NotificationConfiguration is read by whoever emulates it


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    handler: str  # "package.module.attribute"
    code_uri: str
    memory_mb: int
    timeout_seconds: int
    environment: dict[str, Any]  # Globals merged with the function's own; values unresolved
    events: dict[str, dict[str, Any]]
    event_invoke_config: dict[str, Any] = field(default_factory=dict)  # its own, else Globals'; unresolved


@dataclass(frozen=True)
class StateMachineSpec:
    """An AWS::Serverless::StateMachine or AWS::StepFunctions::StateMachine; values unresolved."""

    logical_id: str
    resource_type: str
    name: Any  # an explicit Name / StateMachineName, or None
    type: str  # STANDARD or EXPRESS
    definition: Any  # inline Definition (a dict) or DefinitionString (text), or None
    definition_uri: Any  # a local path relative to the template (or an S3 location), or None
    substitutions: dict[str, Any]

    def load_definition(self, base_dir: Path, substitutions: Mapping[str, Any]) -> dict[str, Any]:
        """The definition with `substitutions` (already resolved) applied; not validated."""
        from infra.local import asl

        if self.definition is not None:
            return asl.render(self.definition, substitutions)
        if isinstance(self.definition_uri, str) and not self.definition_uri.startswith("s3://"):
            path = base_dir / self.definition_uri
            if not path.is_file():
                raise ValueError(f"state machine {self.logical_id}: DefinitionUri {path} does not exist")
            return asl.render(asl.load_definition_file(path), substitutions)
        raise ValueError(
            f"state machine {self.logical_id}: needs Definition or a local DefinitionUri "
            f"(an S3 location cannot be read locally), got {self.definition_uri!r}"
        )


@dataclass(frozen=True)
class EventSourceSpec:
    """One event source of a function: a SAM `Events` entry (DynamoDB, SQS, S3, ...) or an
    AWS::Lambda::EventSourceMapping resource. Properties are raw (intrinsics unresolved)."""

    function_logical_id: str
    name: str  # the event's name in Events, or the mapping resource's logical id
    type: str  # SAM's event type: DynamoDB, SQS, S3, Kinesis, Schedule, ...
    properties: dict[str, Any]
    # The function's EventInvokeConfig (its own, else Globals'): what an asynchronous invocation
    # (an S3 notification) is retried and where it goes when it fails; raw like `properties`.
    invoke_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiRoute:
    event_name: str
    path: str  # the resource template, e.g. /orders/{order_id}
    method: str  # upper case; ANY matches every method
    authorizer: str | None  # None when Auth.Authorizer is NONE (or the API has no default)


@dataclass(frozen=True)
class AuthorizerSpec:
    name: str
    function_logical_id: str
    handler: str
    payload_type: str  # REQUEST or TOKEN
    identity_headers: tuple[str, ...]
    reauthorize_every: int  # seconds; 0 turns the cache off


@dataclass(frozen=True)
class GatewayResponse:
    status: int
    body: str | None


class Template:
    """One parsed template and the questions the local runtime asks it."""

    def __init__(
        self,
        document: Mapping[str, Any],
        *,
        parameter_overrides: Mapping[str, Any] | None = None,
        source: Path | None = None,
        stack_name: str = "oms-local",
    ):
        self.document = document
        self.source = source
        self.parameter_overrides = dict(parameter_overrides or {})
        self.stack_name = stack_name

    @classmethod
    def load(cls, path: str | Path | None = None, **kwargs: Any) -> Template:
        source = Path(path or DEFAULT_TEMPLATE)
        return cls(load_template(source), source=source, **kwargs)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.document.get("Resources", {})

    def resources_of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {name: res for name, res in self.resources.items() if res.get("Type") == resource_type}

    # Parameters and intrinsics.
    def parameter(self, name: str) -> Any:
        if name in self.parameter_overrides:
            return self.parameter_overrides[name]
        declared = self.document.get("Parameters", {}).get(name)
        if declared is None:
            raise KeyError(f"template has no parameter {name}")
        if "Default" not in declared:
            raise KeyError(f"parameter {name} has no Default: pass it in parameter_overrides")
        return declared["Default"]

    def resolve(self, value: Any, refs: Mapping[str, str] | None = None, atts: Mapping[str, str] | None = None) -> Any:
        """Evaluates Ref, GetAtt, Sub and Join (other intrinsics come back as they are). `refs` maps
        logical ids to what `Ref` returns for them (a table's name, a queue's URL); `atts` maps
        "Logical.Attr" to what `GetAtt` returns. Unknown names raise KeyError."""
        refs = refs or {}
        atts = atts or {}
        if isinstance(value, list):
            return [self.resolve(item, refs, atts) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {key: self.resolve(item, refs, atts) for key, item in value.items()}
        ((key, arg),) = value.items()
        if key == "Ref":
            return self._ref(arg, refs)
        if key == "Fn::GetAtt":
            logical, attr = arg if isinstance(arg, list) else arg.split(".", 1)
            name = f"{logical}.{attr}"
            if name not in atts:
                raise KeyError(f"cannot resolve !GetAtt {name} locally")
            return atts[name]
        if key == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            variables = {name: self.resolve(item, refs, atts) for name, item in variables.items()}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name.startswith("!"):
                    return "${" + name[1:] + "}"
                if name in variables:
                    return str(variables[name])
                if "." in name:
                    return str(self.resolve({"Fn::GetAtt": name.split(".", 1)}, refs, atts))
                return str(self._ref(name, refs))

            return re.sub(r"\$\{([^}]+)\}", substitute, text)
        if key == "Fn::Join":
            separator, items = arg
            return separator.join(str(item) for item in self.resolve(items, refs, atts))
        return {key: self.resolve(arg, refs, atts)}

    def _ref(self, name: str, refs: Mapping[str, str]) -> Any:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": self.stack_name,
            "AWS::NoValue": None,
        }
        if name in refs:
            return refs[name]
        if name in pseudo:
            return pseudo[name]
        if name in self.document.get("Parameters", {}):
            return self.parameter(name)
        raise KeyError(f"cannot resolve !Ref {name} locally")

    # Data.
    def tables(self) -> list[TableSpec]:
        specs = []
        for logical_id, resource in self.resources_of_type("AWS::DynamoDB::Table").items():
            props = resource.get("Properties", {})
            ttl = props.get("TimeToLiveSpecification") or {}
            stream = props.get("StreamSpecification") or {}
            specs.append(
                TableSpec(
                    logical_id=logical_id,
                    key_schema=props["KeySchema"],
                    attribute_definitions=props["AttributeDefinitions"],
                    global_secondary_indexes=[_index(gsi) for gsi in props.get("GlobalSecondaryIndexes", [])],
                    local_secondary_indexes=[_index(lsi) for lsi in props.get("LocalSecondaryIndexes", [])],
                    stream_view_type=stream.get("StreamViewType"),
                    ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled") else None,
                    billing_mode=props.get("BillingMode", "PROVISIONED"),
                    table_name=self.resolve(props["TableName"]) if "TableName" in props else None,
                )
            )
        return specs

    def queues(self) -> list[QueueSpec]:
        return [
            QueueSpec(logical_id, resource.get("Properties", {}))
            for logical_id, resource in self.resources_of_type("AWS::SQS::Queue").items()
        ]

    def buckets(self) -> list[BucketSpec]:
        return [
            BucketSpec(logical_id, resource.get("Properties", {}))
            for logical_id, resource in self.resources_of_type("AWS::S3::Bucket").items()
        ]

    # State machines.
    def state_machines(self) -> list[StateMachineSpec]:
        specs = []
        for logical_id, resource in self.resources.items():
            resource_type = resource.get("Type")
            props = resource.get("Properties", {})
            if resource_type == "AWS::Serverless::StateMachine":
                name, machine_type = props.get("Name"), props.get("Type", "STANDARD")
                definition, uri = props.get("Definition"), props.get("DefinitionUri")
            elif resource_type == "AWS::StepFunctions::StateMachine":
                name, machine_type = props.get("StateMachineName"), props.get("StateMachineType", "STANDARD")
                definition = props.get("Definition", props.get("DefinitionString"))
                uri = props.get("DefinitionS3Location")
            else:
                continue
            specs.append(
                StateMachineSpec(
                    logical_id=logical_id,
                    resource_type=resource_type,
                    name=name,
                    type=str(machine_type).upper(),
                    definition=definition,
                    definition_uri=uri,
                    substitutions=dict(props.get("DefinitionSubstitutions") or {}),
                )
            )
        return specs

    @property
    def base_dir(self) -> Path:
        """What relative DefinitionUri / CodeUri paths are relative to."""
        return self.source.parent if self.source else PROJECT_ROOT

    # Event sources.
    def event_sources(self) -> list[EventSourceSpec]:
        """Every function event that is not an Api event, and every EventSourceMapping resource."""
        functions = self.functions()
        specs = [
            EventSourceSpec(
                function_id,
                name,
                str(event.get("Type")),
                dict(event.get("Properties") or {}),
                function.event_invoke_config,
            )
            for function_id, function in functions.items()
            for name, event in function.events.items()
            if event.get("Type") != "Api"
        ]
        for logical_id, resource in self.resources_of_type("AWS::Lambda::EventSourceMapping").items():
            props = dict(resource.get("Properties") or {})
            function = props.get("FunctionName")
            target = _logical_target(function)
            if target not in functions:
                raise ValueError(
                    f"{logical_id}: FunctionName must be !Ref or !GetAtt .Arn of a function of this template"
                )
            source = props.get("EventSourceArn")
            service = _source_service(source, self)
            if service == "DynamoDB":
                props["Stream"] = source
            elif service == "SQS":
                props["Queue"] = source
            else:
                props["Stream"] = source
            specs.append(EventSourceSpec(target, logical_id, service, props))
        return specs

    # Functions.
    def function_globals(self) -> dict[str, Any]:
        return self.document.get("Globals", {}).get("Function", {})

    def functions(self) -> dict[str, FunctionSpec]:
        defaults = self.function_globals()
        global_env = (defaults.get("Environment") or {}).get("Variables") or {}
        specs = {}
        for logical_id, resource in self.resources_of_type("AWS::Serverless::Function").items():
            props = resource.get("Properties", {})
            own_env = (props.get("Environment") or {}).get("Variables") or {}
            specs[logical_id] = FunctionSpec(
                logical_id=logical_id,
                handler=props.get("Handler", defaults.get("Handler", "")),
                code_uri=str(props.get("CodeUri", defaults.get("CodeUri", "."))),
                memory_mb=int(props.get("MemorySize", defaults.get("MemorySize", 128))),
                timeout_seconds=int(props.get("Timeout", defaults.get("Timeout", 3))),
                environment={**global_env, **own_env},
                events=props.get("Events") or {},
                event_invoke_config=dict(props.get("EventInvokeConfig") or defaults.get("EventInvokeConfig") or {}),
            )
        return specs

    def global_environment(self, refs: Mapping[str, str]) -> dict[str, str]:
        """Globals.Function.Environment.Variables with `!Ref`s resolved (a table's Ref is its name)."""
        variables = (self.function_globals().get("Environment") or {}).get("Variables") or {}
        return {name: _env_string(self.resolve(value, refs)) for name, value in variables.items()}

    # The API.
    def rest_api_id(self) -> str:
        apis = self.resources_of_type("AWS::Serverless::Api")
        if len(apis) != 1:
            raise ValueError(f"expected one AWS::Serverless::Api, found {sorted(apis)}")
        return next(iter(apis))

    def _api_auth(self) -> dict[str, Any]:
        return self.resources[self.rest_api_id()].get("Properties", {}).get("Auth") or {}

    def api_function(self) -> FunctionSpec:
        """The function whose Api events reference the REST API."""
        api_id = self.rest_api_id()
        serving = [
            spec
            for spec in self.functions().values()
            if any(_is_api_event(event, api_id) for event in spec.events.values())
        ]
        if len(serving) != 1:
            raise ValueError(f"expected one function serving {api_id}, found {[s.logical_id for s in serving]}")
        return serving[0]

    def api_routes(self) -> list[ApiRoute]:
        api_id = self.rest_api_id()
        default_authorizer = self._api_auth().get("DefaultAuthorizer")
        routes = []
        for name, event in self.api_function().events.items():
            if not _is_api_event(event, api_id):
                continue
            props = event["Properties"]
            authorizer = (props.get("Auth") or {}).get("Authorizer", default_authorizer)
            routes.append(
                ApiRoute(
                    event_name=name,
                    path=props["Path"],
                    method=str(props["Method"]).upper(),
                    authorizer=None if authorizer in (None, "NONE") else authorizer,
                )
            )
        return routes

    def authorizers(self) -> dict[str, AuthorizerSpec]:
        functions = self.functions()
        specs = {}
        for name, config in (self._api_auth().get("Authorizers") or {}).items():
            arn = config.get("FunctionArn") or {}
            get_att = arn.get("Fn::GetAtt") if isinstance(arn, dict) else None
            if not get_att or get_att[0] not in functions:
                raise ValueError(f"authorizer {name}: FunctionArn must be !GetAtt <Function>.Arn of this template")
            identity = config.get("Identity") or {}
            headers = identity.get("Headers") or ([identity["Header"]] if identity.get("Header") else [])
            if not headers and config.get("FunctionPayloadType", "TOKEN") == "TOKEN":
                headers = ["Authorization"]
            specs[name] = AuthorizerSpec(
                name=name,
                function_logical_id=get_att[0],
                handler=functions[get_att[0]].handler,
                payload_type=config.get("FunctionPayloadType", "TOKEN"),
                identity_headers=tuple(headers),
                reauthorize_every=int(self.resolve(identity.get("ReauthorizeEvery", 300))),
            )
        return specs

    def default_authorizer(self) -> AuthorizerSpec | None:
        name = self._api_auth().get("DefaultAuthorizer")
        return self.authorizers()[name] if name else None

    def gateway_responses(self) -> dict[str, GatewayResponse]:
        """GatewayResponses (UNAUTHORIZED, ACCESS_DENIED, ...) with their JSON body templates."""
        declared = self.resources[self.rest_api_id()].get("Properties", {}).get("GatewayResponses") or {}
        responses = {}
        for kind, config in declared.items():
            templates = config.get("ResponseTemplates") or {}
            responses[kind] = GatewayResponse(
                status=int(config.get("StatusCode", 500)), body=templates.get("application/json")
            )
        return responses

    def throttle(self) -> tuple[float, int] | None:
        """(rate per second, burst) of the API stage's catch-all MethodSettings, if declared."""
        props = self.resources[self.rest_api_id()].get("Properties", {})
        for setting in props.get("MethodSettings") or []:
            if setting.get("ResourcePath") == "/*" and setting.get("HttpMethod") == "*":
                rate = self.resolve(setting.get("ThrottlingRateLimit"))
                burst = self.resolve(setting.get("ThrottlingBurstLimit"))
                if rate is not None and burst is not None:
                    return float(rate), int(burst)
        return None

    def stage_name(self) -> str:
        props = self.resources[self.rest_api_id()].get("Properties", {})
        return str(self.resolve(props.get("StageName", "Prod")))


def _index(index: Mapping[str, Any]) -> dict[str, Any]:
    # CreateTable takes the CloudFormation shape as is, minus what it does not know.
    return {key: index[key] for key in ("IndexName", "KeySchema", "Projection") if key in index}


def _is_api_event(event: Mapping[str, Any], api_id: str) -> bool:
    if event.get("Type") != "Api":
        return False
    rest_api = (event.get("Properties") or {}).get("RestApiId")
    return rest_api == {"Ref": api_id} or rest_api == api_id


def _logical_target(value: Any) -> str | None:
    """The logical id a `!Ref X` or `!GetAtt X.Attr` names."""
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        arg = value["Fn::GetAtt"]
        return (arg if isinstance(arg, list) else arg.split(".", 1))[0]
    return None


def _source_service(source: Any, template: Template) -> str:
    """DynamoDB, SQS or Kinesis for an EventSourceArn (a literal ARN or !GetAtt of a resource)."""
    target = _logical_target(source)
    resource_type = template.resources.get(target or "", {}).get("Type", "")
    text = str(source)
    if resource_type == "AWS::DynamoDB::Table" or ":dynamodb:" in text:
        return "DynamoDB"
    if resource_type == "AWS::SQS::Queue" or ":sqs:" in text:
        return "SQS"
    if resource_type == "AWS::Kinesis::Stream" or ":kinesis:" in text:
        return "Kinesis"
    return "Unknown"


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

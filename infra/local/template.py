"""Reads template.yaml into what the local runtime creates and serves: tables, queues, buckets, routes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.local import supported

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

# fmt: off
_SHORT_TAGS = [
    "Ref", "Condition", "Base64", "Cidr", "FindInMap", "GetAtt", "GetAZs", "ImportValue", "Join", "Select",
    "Split", "Sub", "Transform", "And", "Equals", "If", "Not", "Or", "ToJsonString", "Length",
]
# fmt: on


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
# infra/local/supported.py lists what of the template is read here; Template.load() refuses the rest.


@dataclass(frozen=True)
class TableSpec:
    logical_id: str
    key_schema: list[dict[str, str]]
    attribute_definitions: list[dict[str, str]]
    global_secondary_indexes: list[dict[str, Any]] = field(default_factory=list)
    stream_view_type: str | None = None
    ttl_attribute: str | None = None

    def create_table_request(self, physical_name: str) -> dict[str, Any]:
        """Keyword arguments for DynamoDB CreateTable (on demand, as BillingMode must be)."""
        request: dict[str, Any] = {
            "TableName": physical_name,
            "KeySchema": self.key_schema,
            "AttributeDefinitions": self.attribute_definitions,
            "BillingMode": "PAY_PER_REQUEST",
        }
        if self.global_secondary_indexes:
            request["GlobalSecondaryIndexes"] = self.global_secondary_indexes
        if self.stream_view_type:
            request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": self.stream_view_type}
        return request


@dataclass(frozen=True)
class QueueSpec:
    logical_id: str
    properties: dict[str, Any]  # raw; RedrivePolicy holds !GetAtt to another queue


@dataclass(frozen=True)
class BucketSpec:
    logical_id: str
    properties: dict[str, Any]  # raw


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    handler: str  # "package.module.attribute"
    memory_mb: int
    timeout_seconds: int
    environment: dict[str, Any]  # Globals merged with the function's own; values unresolved
    events: dict[str, dict[str, Any]]
    event_invoke_config: dict[str, Any] = field(default_factory=dict)  # unresolved


@dataclass(frozen=True)
class StateMachineSpec:
    """An AWS::Serverless::StateMachine; values unresolved."""

    logical_id: str
    type: str  # STANDARD or EXPRESS
    definition_uri: str  # a JSON file, relative to the template
    substitutions: dict[str, Any]

    def load_definition(self, base_dir: Path, substitutions: Mapping[str, Any]) -> dict[str, Any]:
        """The definition with `substitutions` (already resolved) applied; not validated."""
        from infra.local import asl

        path = base_dir / self.definition_uri
        if not path.is_file():
            raise ValueError(f"state machine {self.logical_id}: DefinitionUri {path} does not exist")
        return asl.render(json.loads(path.read_text(encoding="utf-8")), substitutions)


@dataclass(frozen=True)
class EventSourceSpec:
    """One SAM `Events` entry of a function other than Api (DynamoDB, SQS, S3, Schedule).
    Properties are raw (intrinsics unresolved)."""

    function_logical_id: str
    name: str  # the event's name in Events
    type: str
    properties: dict[str, Any]
    # The function's EventInvokeConfig: what an asynchronous invocation (an S3 notification) is
    # retried and where it goes when it fails; raw like `properties`.
    invoke_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiRoute:
    event_name: str
    path: str  # the resource template, e.g. /orders/{order_id}
    method: str  # upper case
    authorizer: str | None  # None when Auth.Authorizer is NONE (or the API has no default)


@dataclass(frozen=True)
class AuthorizerSpec:
    """A REQUEST Lambda authorizer (the only payload type emulated)."""

    name: str
    function_logical_id: str
    handler: str
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
        """Raises UnsupportedTemplate if the template uses what the runtime does not emulate."""
        source = Path(path or DEFAULT_TEMPLATE)
        document = load_template(source)
        supported.check(document)
        return cls(document, source=source, **kwargs)

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
        """Evaluates Ref, GetAtt and Sub, the intrinsics the template's emulated properties use
        (another Fn:: raises KeyError). `refs` maps logical ids to what `Ref` returns for them (a
        table's name, a queue's URL); `atts` maps "Logical.Attr" to what `GetAtt` returns.
        Unknown names raise KeyError."""
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
        if key.startswith("Fn::"):
            raise KeyError(f"{key} is not evaluated locally (only Ref, Fn::GetAtt and Fn::Sub)")
        return {key: self.resolve(arg, refs, atts)}

    def _ref(self, name: str, refs: Mapping[str, str]) -> Any:
        pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::StackName": self.stack_name,
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
                    global_secondary_indexes=props.get("GlobalSecondaryIndexes", []),
                    stream_view_type=stream.get("StreamViewType"),
                    ttl_attribute=ttl.get("AttributeName") if ttl.get("Enabled") else None,
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
        for logical_id, resource in self.resources_of_type("AWS::Serverless::StateMachine").items():
            props = resource.get("Properties", {})
            if not isinstance(props.get("DefinitionUri"), str):
                raise ValueError(f"state machine {logical_id}: needs DefinitionUri, a JSON file next to the template")
            specs.append(
                StateMachineSpec(
                    logical_id=logical_id,
                    type=str(props.get("Type", "STANDARD")).upper(),
                    definition_uri=props["DefinitionUri"],
                    substitutions=dict(props.get("DefinitionSubstitutions") or {}),
                )
            )
        return specs

    @property
    def base_dir(self) -> Path:
        """What a relative DefinitionUri is relative to."""
        return self.source.parent if self.source else PROJECT_ROOT

    # Event sources.
    def event_sources(self) -> list[EventSourceSpec]:
        """Every function event that is not an Api event."""
        return [
            EventSourceSpec(
                function_id,
                name,
                str(event.get("Type")),
                dict(event.get("Properties") or {}),
                function.event_invoke_config,
            )
            for function_id, function in self.functions().items()
            for name, event in function.events.items()
            if event.get("Type") != "Api"
        ]

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
                handler=props["Handler"],
                memory_mb=int(props.get("MemorySize", defaults.get("MemorySize", 128))),
                timeout_seconds=int(props.get("Timeout", defaults.get("Timeout", 3))),
                environment={**global_env, **own_env},
                events=props.get("Events") or {},
                event_invoke_config=dict(props.get("EventInvokeConfig") or {}),
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

    def _api_props(self) -> dict[str, Any]:
        return self.resources[self.rest_api_id()].get("Properties", {})

    def _api_auth(self) -> dict[str, Any]:
        return self._api_props().get("Auth") or {}

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
            specs[name] = AuthorizerSpec(
                name=name,
                function_logical_id=get_att[0],
                handler=functions[get_att[0]].handler,
                identity_headers=tuple(identity.get("Headers") or ()),
                reauthorize_every=int(self.resolve(identity.get("ReauthorizeEvery", 300))),
            )
        return specs

    def default_authorizer(self) -> AuthorizerSpec | None:
        name = self._api_auth().get("DefaultAuthorizer")
        return self.authorizers()[name] if name else None

    def gateway_responses(self) -> dict[str, GatewayResponse]:
        """GatewayResponses (UNAUTHORIZED, ACCESS_DENIED, ...) with their JSON body templates."""
        responses = {}
        for kind, config in (self._api_props().get("GatewayResponses") or {}).items():
            templates = config.get("ResponseTemplates") or {}
            responses[kind] = GatewayResponse(
                status=int(config.get("StatusCode", 500)), body=templates.get("application/json")
            )
        return responses

    def throttle(self) -> tuple[float, int] | None:
        """(rate per second, burst) of the API stage's catch-all MethodSettings, if declared."""
        for setting in self._api_props().get("MethodSettings") or []:
            rate = self.resolve(setting.get("ThrottlingRateLimit"))
            burst = self.resolve(setting.get("ThrottlingBurstLimit"))
            if rate is not None and burst is not None:
                return float(rate), int(burst)
        return None

    def stage_name(self) -> str:
        return str(self.resolve(self._api_props().get("StageName", "Prod")))


def _is_api_event(event: Mapping[str, Any], api_id: str) -> bool:
    if event.get("Type") != "Api":
        return False
    rest_api = (event.get("Properties") or {}).get("RestApiId")
    return rest_api == {"Ref": api_id} or rest_api == api_id


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

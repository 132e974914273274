"""Reads template.yaml into what the local runtime creates and serves: tables, functions, state machines, the API."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra import asl
from infra.local import supported

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that reads CloudFormation's short tags (`!Ref x`) in their long form. cfn-lint's
    decoder would do it, but importing it pulls its whole rule engine into `make run`'s start-up."""


# CloudFormation reads `2010-09-09` as a string, not as a date.
CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _long_form(loader: CfnLoader, tag: str, node: yaml.Node) -> dict[str, Any]:
    key = tag if tag in ("Ref", "Condition") else f"Fn::{tag}"
    if isinstance(node, yaml.SequenceNode):
        return {key: loader.construct_sequence(node, deep=True)}
    if isinstance(node, yaml.MappingNode):
        return {key: loader.construct_mapping(node, deep=True)}
    value = loader.construct_scalar(node)
    return {key: value.split(".", 1) if tag == "GetAtt" else value}  # `!GetAtt Res.Attr` is ["Res", "Attr"]


CfnLoader.add_multi_constructor("!", _long_form)


def load_template(path: str | Path | None = None) -> dict[str, Any]:
    """The template as plain dicts, short tags in their long form."""
    document = yaml.load(Path(path or DEFAULT_TEMPLATE).read_text(encoding="utf-8"), Loader=CfnLoader)
    if not isinstance(document, dict) or "Resources" not in document:
        raise ValueError(f"{path or DEFAULT_TEMPLATE}: not a CloudFormation template")
    return document


# --- What the template declares (values unresolved unless said otherwise) ------------------------


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
class FunctionSpec:
    logical_id: str
    handler: str  # "package.module.attribute"
    memory_mb: int
    timeout_seconds: int
    environment: dict[str, Any]  # Globals merged with the function's own
    events: dict[str, dict[str, Any]]
    event_invoke_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StateMachineSpec:
    logical_id: str
    type: str  # STANDARD or EXPRESS
    definition_uri: str  # a JSON file, relative to the template
    substitutions: dict[str, Any]

    def load_definition(self, base_dir: Path, substitutions: Mapping[str, Any]) -> dict[str, Any]:
        """The definition with `substitutions` (already resolved) applied; not validated."""
        return asl.substitute(json.loads((base_dir / self.definition_uri).read_text(encoding="utf-8")), substitutions)


@dataclass(frozen=True)
class EventSourceSpec:
    """One SAM `Events` entry of a function other than Api (DynamoDB, SQS, S3, Schedule)."""

    function_logical_id: str
    name: str  # the event's name in Events
    type: str
    properties: dict[str, Any]
    # The function's EventInvokeConfig: how an asynchronous invocation (an S3 notification) is
    # retried and where it goes when it fails.
    invoke_config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiRoute:
    event_name: str
    path: str  # the resource template, e.g. /orders/{order_id}
    method: str  # upper case
    authorizer: str | None  # None when Auth.Authorizer is NONE (or the API has no default)


@dataclass(frozen=True)
class AuthorizerSpec:
    """A REQUEST Lambda authorizer (the only payload type emulated); values resolved."""

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
    """One parsed template and the questions the local runtime asks it. What is read here is what
    infra/local/supported.py declares emulated; Template.load() refuses a template using more."""

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
        return self.document["Resources"]

    @property
    def base_dir(self) -> Path:
        """What a relative DefinitionUri is relative to."""
        return self.source.parent if self.source else PROJECT_ROOT

    def properties(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """Logical id -> Properties of every resource of this type."""
        return {
            name: resource.get("Properties") or {}
            for name, resource in self.resources.items()
            if resource["Type"] == resource_type
        }

    # --- Parameters and intrinsics ---------------------------------------------------------------
    def parameter(self, name: str) -> Any:
        if name in self.parameter_overrides:
            return self.parameter_overrides[name]
        declared = self.document["Parameters"][name]
        if "Default" not in declared:
            raise KeyError(f"parameter {name} has no Default: pass it in parameter_overrides")
        return declared["Default"]

    def resolve(self, value: Any, refs: Mapping[str, str] | None = None, atts: Mapping[str, str] | None = None) -> Any:
        """Evaluates Ref, Fn::GetAtt and Fn::Sub of a string, the intrinsics the emulated properties
        use (another Fn:: raises KeyError). `refs` maps logical ids to what Ref returns for them (a
        table's name, a queue's URL); `atts` maps "Logical.Attr" to what GetAtt returns. A name
        neither maps, nor a parameter or pseudo parameter, raises KeyError."""
        refs, atts = refs or {}, atts or {}
        if isinstance(value, list):
            return [self.resolve(item, refs, atts) for item in value]
        if not isinstance(value, dict):
            return value
        key = next(iter(value), "")
        if len(value) != 1 or not (key == "Ref" or key.startswith("Fn::")):
            return {name: self.resolve(item, refs, atts) for name, item in value.items()}
        arg = value[key]
        if key == "Ref":
            if arg in refs:
                return refs[arg]
            if arg == "AWS::StackName":
                return self.stack_name
            if arg in _PSEUDO_PARAMETERS:
                return _PSEUDO_PARAMETERS[arg]
            if arg in self.document.get("Parameters", {}):
                return self.parameter(arg)
            raise KeyError(f"cannot resolve !Ref {arg} locally")
        if key == "Fn::GetAtt":
            if ".".join(arg) not in atts:
                raise KeyError(f"cannot resolve !GetAtt {'.'.join(arg)} locally")
            return atts[".".join(arg)]
        if key == "Fn::Sub" and isinstance(arg, str):
            return re.sub(
                r"\$\{([^}]+)\}",
                lambda m: str(
                    self.resolve({"Fn::GetAtt": m[1].split(".", 1)} if "." in m[1] else {"Ref": m[1]}, refs, atts)
                ),
                arg,
            )
        raise KeyError(f"{key} is not evaluated locally (only Ref, Fn::GetAtt and Fn::Sub of a string)")

    # --- Resources -----------------------------------------------------------------------------------
    def tables(self) -> list[TableSpec]:
        return [
            TableSpec(
                logical_id,
                props["KeySchema"],
                props["AttributeDefinitions"],
                props.get("GlobalSecondaryIndexes", []),
                (props.get("StreamSpecification") or {}).get("StreamViewType"),
                ttl["AttributeName"] if (ttl := props.get("TimeToLiveSpecification") or {}).get("Enabled") else None,
            )
            for logical_id, props in self.properties("AWS::DynamoDB::Table").items()
        ]

    def state_machines(self) -> list[StateMachineSpec]:
        return [
            StateMachineSpec(
                logical_id,
                str(props.get("Type", "STANDARD")).upper(),
                props["DefinitionUri"],
                dict(props.get("DefinitionSubstitutions") or {}),
            )
            for logical_id, props in self.properties("AWS::Serverless::StateMachine").items()
        ]

    def functions(self) -> dict[str, FunctionSpec]:
        defaults = self.document.get("Globals", {}).get("Function", {})
        global_env = (defaults.get("Environment") or {}).get("Variables") or {}
        return {
            logical_id: FunctionSpec(
                logical_id,
                props["Handler"],
                int(props.get("MemorySize", defaults.get("MemorySize", 128))),
                int(props.get("Timeout", defaults.get("Timeout", 3))),
                {**global_env, **((props.get("Environment") or {}).get("Variables") or {})},
                props.get("Events") or {},
                dict(props.get("EventInvokeConfig") or {}),
            )
            for logical_id, props in self.properties("AWS::Serverless::Function").items()
        }

    def event_sources(self) -> list[EventSourceSpec]:
        """Every function event that is not an Api event."""
        return [
            EventSourceSpec(
                function_id, name, event["Type"], dict(event.get("Properties") or {}), spec.event_invoke_config
            )
            for function_id, spec in self.functions().items()
            for name, event in spec.events.items()
            if event["Type"] != "Api"
        ]

    def global_environment(self, refs: Mapping[str, str]) -> dict[str, str]:
        """Globals.Function.Environment.Variables, resolved (a table's Ref is its name)."""
        variables = self.document.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
        return {name: env_string(self.resolve(value, refs)) for name, value in variables.items()}

    # --- The API -----------------------------------------------------------------------------------
    def rest_api_id(self) -> str:
        apis = list(self.properties("AWS::Serverless::Api"))
        if len(apis) != 1:
            raise ValueError(f"expected one AWS::Serverless::Api, found {apis}")
        return apis[0]

    def _api(self, name: str, default: Any = None) -> Any:
        return self.resources[self.rest_api_id()]["Properties"].get(name) or default

    def _api_events(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Function logical id -> its Api events on the REST API."""
        api = {"Ref": self.rest_api_id()}
        events = {
            function_id: {
                name: e
                for name, e in spec.events.items()
                if e["Type"] == "Api" and e["Properties"].get("RestApiId") == api
            }
            for function_id, spec in self.functions().items()
        }
        serving = {function_id: own for function_id, own in events.items() if own}
        if len(serving) != 1:
            raise ValueError(f"expected one function serving {api['Ref']}, found {sorted(serving)}")
        return serving

    def api_function(self) -> FunctionSpec:
        """The function whose Api events reference the REST API."""
        return self.functions()[next(iter(self._api_events()))]

    def api_routes(self) -> list[ApiRoute]:
        default = self._api("Auth", {}).get("DefaultAuthorizer")
        routes = []
        for name, event in next(iter(self._api_events().values())).items():
            props = event["Properties"]
            authorizer = (props.get("Auth") or {}).get("Authorizer", default)
            routes.append(
                ApiRoute(name, props["Path"], props["Method"].upper(), None if authorizer == "NONE" else authorizer)
            )
        return routes

    def authorizers(self) -> dict[str, AuthorizerSpec]:
        functions = self.functions()
        specs = {}
        for name, config in (self._api("Auth", {}).get("Authorizers") or {}).items():
            arn = config["FunctionArn"]
            function_id = arn.get("Fn::GetAtt", [None])[0] if isinstance(arn, dict) else None
            if function_id not in functions:
                raise ValueError(f"authorizer {name}: FunctionArn must be !GetAtt <Function>.Arn of this template")
            identity = config.get("Identity") or {}
            specs[name] = AuthorizerSpec(
                name,
                function_id,
                functions[function_id].handler,
                tuple(identity.get("Headers") or ()),
                int(self.resolve(identity.get("ReauthorizeEvery", 300))),
            )
        return specs

    def default_authorizer(self) -> AuthorizerSpec | None:
        name = self._api("Auth", {}).get("DefaultAuthorizer")
        return self.authorizers()[name] if name else None

    def gateway_responses(self) -> dict[str, GatewayResponse]:
        """GatewayResponses (UNAUTHORIZED, ACCESS_DENIED, ...) with their JSON body templates."""
        return {
            kind: GatewayResponse(
                int(config.get("StatusCode", 500)), (config.get("ResponseTemplates") or {}).get("application/json")
            )
            for kind, config in self._api("GatewayResponses", {}).items()
        }

    def throttle(self) -> tuple[float, int] | None:
        """(rate per second, burst) of the API stage's catch-all MethodSettings, if declared."""
        for setting in self.resolve(self._api("MethodSettings", [])):
            if "ThrottlingRateLimit" in setting and "ThrottlingBurstLimit" in setting:
                return float(setting["ThrottlingRateLimit"]), int(setting["ThrottlingBurstLimit"])
        return None

    def stage_name(self) -> str:
        return str(self.resolve(self._api("StageName", "Prod")))


_PSEUDO_PARAMETERS = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws"}


def env_string(value: Any) -> str:
    """A resolved value as Lambda's environment holds it (CloudFormation writes booleans in lower case)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

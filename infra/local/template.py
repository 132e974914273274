"""Reads template.yaml for the local runtime: Properties as declared, SAM's Globals, parameters, intrinsics, the API."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core import settings
from infra import asl
from infra.local import supported

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = PROJECT_ROOT / "template.yaml"

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account


class CfnLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Reads CloudFormation's short tags (`!Ref x`) in their long form (cfn-lint's decoder would,
    but importing it pulls its whole rule engine into `make run`'s start-up). libyaml's parser
    where PyYAML's wheel has it (the same documents, 0.06 s of CPU for template.yaml against
    0.40 s for the pure-Python one); the constructors and resolvers are PyYAML's either way."""


# CloudFormation reads `2010-09-09` as a string, not as a date.
CfnLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _long_form(loader: CfnLoader, tag: str, node: yaml.Node) -> dict[str, Any]:
    key = tag if tag in ("Ref", "Condition") else f"Fn::{tag}"
    if isinstance(node, yaml.SequenceNode):
        return {key: loader.construct_sequence(node, deep=True)}
    value = loader.construct_scalar(node)
    return {key: value.split(".", 1) if tag == "GetAtt" else value}  # `!GetAtt Res.Attr` is ["Res", "Attr"]


CfnLoader.add_multi_constructor("!", _long_form)


def load_template(path: str | Path | None = None) -> dict[str, Any]:
    """The template as plain dicts, short tags in their long form."""
    source = Path(path or DEFAULT_TEMPLATE)
    try:
        document = yaml.load(source.read_text(encoding="utf-8"), Loader=CfnLoader)
    except yaml.MarkedYAMLError as error:  # an edit that is not YAML: say where, not PyYAML's traceback
        mark = error.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"{source} is not valid YAML: {error.problem or error.context}{where}") from None
    if not isinstance(document, dict) or "Resources" not in document:
        raise ValueError(f"{path or DEFAULT_TEMPLATE}: not a CloudFormation template")
    return document


def parameter_refused(declared: Mapping[str, Any], value: Any) -> str | None:
    """Why CloudFormation refuses `value` for the declared parameter at deploy (None: it takes it),
    by the properties supported.PARAMETERS names; AllowedValues compare exactly ("TRUE" is not "true")."""
    allowed = declared.get("AllowedValues") or []
    one_of = f"must be one of {', '.join(str(v) for v in allowed)}"
    if declared.get("Type") == "String":
        text = env_string(value)
        if allowed and text not in {str(v) for v in allowed}:
            return one_of
        pattern = declared.get("AllowedPattern")
        # Java's regex (CloudFormation's), whole value; its \s, \d and \w are ASCII only.
        if pattern is not None and re.fullmatch(pattern, text, re.ASCII) is None:
            return f"must match {declared.get('ConstraintDescription') or pattern}"
        return None
    if declared.get("Type") != "Number":
        return None
    # As a deploy reads it: not float()'s `1_000`, ` 5 `, `nan` or `inf` (core.settings).
    number = settings.number(str(value))
    if number is None:
        return "must be a number"
    if "MinValue" in declared and number < float(declared["MinValue"]):
        return f"must be at least {declared['MinValue']}"
    if "MaxValue" in declared and number > float(declared["MaxValue"]):
        return f"must be at most {declared['MaxValue']}"
    return one_of if allowed and number not in {float(v) for v in allowed} else None


def create_table_request(props: Mapping[str, Any], physical_name: str) -> dict[str, Any]:
    """Keyword arguments for DynamoDB CreateTable from an AWS::DynamoDB::Table's Properties: on
    demand, as BillingMode must be; TimeToLiveSpecification is UpdateTimeToLive's, not CreateTable's."""
    request: dict[str, Any] = {"TableName": physical_name, "BillingMode": "PAY_PER_REQUEST"}
    request |= {
        key: props[key] for key in ("KeySchema", "AttributeDefinitions", "GlobalSecondaryIndexes") if props.get(key)
    }
    if view_type := (props.get("StreamSpecification") or {}).get("StreamViewType"):
        request["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view_type}
    return request


class Unresolved(ValueError):
    """An intrinsic Template.resolve cannot evaluate here: a name the template does not declare (a
    typo, `make run` says so in one line), or an intrinsic it does not evaluate."""


@dataclass(frozen=True)
class ApiRoute:
    event_name: str
    path: str  # the resource template, e.g. /orders/{order_id}
    method: str  # upper case
    authorizer: str | None  # None when Auth.Authorizer is NONE (or the API has no default)
    api_key_required: bool = False  # Auth.ApiKeyRequired, the event's or else the API's


@dataclass(eq=False)  # one template, compared and hashed by identity as before
class Template:
    """One parsed template, its parameters and intrinsics. What the runtime reads of it is what
    infra/local/supported.py declares emulated; Template.load() refuses a template using more."""

    document: Mapping[str, Any]
    _: KW_ONLY
    parameter_overrides: dict[str, Any] = field(default_factory=dict)  # name -> value, over the Default
    source: Path | None = None  # what DefinitionUri is relative to (the project when None)
    stack_name: str = "oms-local"

    @classmethod
    def load(cls, path: str | Path | None = None, **kwargs: Any) -> Template:
        """Raises UnsupportedTemplate if the template uses what the runtime does not emulate."""
        source = Path(path or DEFAULT_TEMPLATE)
        document = load_template(source)
        supported.check(document)
        return cls(document, source=source, **kwargs)

    def properties(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """Logical id -> Properties of every resource of this type that the stack has: one whose
        Condition is false is not created, as on AWS."""
        return {
            name: resource.get("Properties") or {}
            for name, resource in self.document["Resources"].items()
            if resource["Type"] == resource_type
            and ("Condition" not in resource or self.condition(resource["Condition"]))
        }

    def functions(self) -> dict[str, dict[str, Any]]:
        """Logical id -> Properties of every AWS::Serverless::Function with Globals.Function applied
        as SAM applies them: the function's own value wins, Environment.Variables merge by name."""
        defaults = self.document.get("Globals", {}).get("Function", {})
        return {
            logical_id: {
                **defaults,
                **props,
                "Environment": {"Variables": {**_variables(defaults), **_variables(props)}},
            }
            for logical_id, props in self.properties("AWS::Serverless::Function").items()
        }

    def parameter_variables(self) -> set[tuple[str, str]]:
        """(variable, parameter) of every function variable set to a parameter (`NAME: !Ref P`): what
        `make run` takes from the shell. Pairs: two functions may set one name to two parameters."""
        parameters = self.document.get("Parameters") or {}
        return {
            (name, parameter)
            for props in self.functions().values()
            for name, value in props["Environment"]["Variables"].items()
            if (parameter := _plain_parameter(value)) in parameters
        }

    def global_environment(self, refs: Mapping[str, str], atts: Mapping[str, str] | None = None) -> dict[str, str]:
        """Globals.Function.Environment.Variables, resolved as resolve() does (a table's Ref is its name)."""
        variables = _variables(self.document.get("Globals", {}).get("Function", {}))
        return {
            name: env_string(self.resolve_at(f"Globals.Function.Environment.Variables.{name}", value, refs, atts))
            for name, value in variables.items()
        }

    def state_machine_definition(self, props: Mapping[str, Any], substitutions: Mapping[str, Any]) -> dict[str, Any]:
        """A state machine's DefinitionUri (JSON, relative to the template) with `substitutions`
        (already resolved) applied; not validated."""
        base_dir = self.source.parent if self.source else PROJECT_ROOT
        return asl.substitute(
            json.loads((base_dir / props["DefinitionUri"]).read_text(encoding="utf-8")), substitutions
        )

    # --- Parameters and intrinsics ---------------------------------------------------------------
    def parameter(self, name: str) -> Any:
        if name in self.parameter_overrides:
            value = self.parameter_overrides[name]
            declared = self.document.get("Parameters", {}).get(name) or {}
            if refused := parameter_refused(declared, value):
                raise ValueError(f"parameter {name} {refused}, got {value!r} (CloudFormation refuses it at deploy)")
            return value
        declared = self.document["Parameters"][name]
        if "Default" not in declared:
            raise Unresolved(f"parameter {name} has no Default: pass it in parameter_overrides")
        return declared["Default"]

    def check_parameters(
        self, variables: Mapping[str, str] | None = None, settable: Mapping[str, str] | None = None
    ) -> None:
        """Refuses an override a deploy refuses (parameter_refused), naming the parameter and the
        variable that set it (`variables`: parameter -> name), and a parameter with neither a Default
        nor an override (a deploy asks for its value), naming where the template uses it and the
        variables that would set it (parameter_variables(), and `settable`: variable -> parameter)."""
        declared = self.document.get("Parameters") or {}
        for name in sorted(set(declared) - set(self.parameter_overrides)):
            if "Default" in (declared[name] or {}):
                continue
            uses = _parameter_uses(self.document, name)
            used = f" (used by {uses[0]}{f' and {len(uses) - 1} more' if len(uses) > 1 else ''})" if uses else ""
            setters = sorted(
                {var for var, parameter in self.parameter_variables() if parameter == name}
                | {var for var, parameter in (settable or {}).items() if parameter == name}
            )
            fix = f", or set {' or '.join(setters)}" if setters else ""
            raise ValueError(f"template parameter {name} has no Default{used}: give it a Default in the template{fix}")
        for name in self.parameter_overrides:
            try:
                self.parameter(name)
            except ValueError as refused:
                variable = (variables or {}).get(name)
                raise ValueError(f"{variable}: {refused}" if variable else str(refused)) from None

    def condition(self, name: str) -> bool:
        """The template's condition `name` with this stack's parameters: Fn::Equals of two values
        resolve() evaluates, or Fn::Not of one, what template.yaml's conditions use. Anything else
        raises Unresolved (a condition only ignored resources name is never evaluated)."""
        conditions = self.document.get("Conditions") or {}
        if name not in conditions:
            raise Unresolved(f"condition {name} is not in the template's Conditions")
        return self._condition_value(conditions[name], name)

    def _condition_value(self, value: Any, name: str) -> bool:
        key, arg = next(iter(value.items())) if isinstance(value, dict) and len(value) == 1 else ("", None)
        if key == "Fn::Equals" and isinstance(arg, list) and len(arg) == 2:
            first, second = (env_string(self.resolve(item)) for item in arg)
            return first == second
        if key == "Fn::Not" and isinstance(arg, list) and len(arg) == 1:
            return not self._condition_value(arg[0], name)
        raise Unresolved(f"condition {name}: {value!r} is not evaluated locally")

    def resolve_at(
        self, where: str, value: Any, refs: Mapping[str, str] | None = None, atts: Mapping[str, str] | None = None
    ) -> Any:
        """resolve(), its refusal naming `where` the value is written (`Resource.Property...`)."""
        try:
            return self.resolve(value, refs, atts)
        except Unresolved as error:
            raise Unresolved(f"{where}: {error}") from None

    def resolve(self, value: Any, refs: Mapping[str, str] | None = None, atts: Mapping[str, str] | None = None) -> Any:
        """Evaluates Ref, Fn::GetAtt, Fn::FindInMap, Fn::Sub, Fn::Join, Fn::Split, Fn::Select and
        Fn::If (only the branch its condition picks), the intrinsics the emulated properties use.
        `refs`: logical id -> what Ref returns (a table's name, a queue's URL); `atts`:
        "Logical.Attr" -> what GetAtt returns. Anything else raises Unresolved."""
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
            if arg == "AWS::NoValue":  # a property left out (an Fn::If's branch): None
                return None
            stack_uuid = uuid.uuid5(uuid.NAMESPACE_URL, self.stack_name)  # one per stack name, as each run's
            stack_id = f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{self.stack_name}/{stack_uuid}"
            if arg in (pseudo := {**_PSEUDO_PARAMETERS, "AWS::StackName": self.stack_name, "AWS::StackId": stack_id}):
                return pseudo[arg]
            if arg in self.document.get("Parameters", {}):
                return self.parameter(arg)
            raise Unresolved(f"cannot resolve !Ref {arg} locally")
        if key == "Fn::GetAtt":
            name = arg if isinstance(arg, str) else ".".join(arg)  # "Res.Attr" or ["Res", "Attr"]
            if name not in atts:
                raise Unresolved(f"cannot resolve !GetAtt {name} locally")
            return atts[name]
        if key == "Fn::FindInMap" and isinstance(arg, list) and len(arg) == 3:
            names = [self.resolve(item, refs, atts) for item in arg]
            try:
                return self.document["Mappings"][names[0]][names[1]][names[2]]
            except (KeyError, TypeError):
                raise Unresolved(f"cannot resolve !FindInMap {names}: not in the template's Mappings") from None
        if key == "Fn::If" and isinstance(arg, list) and len(arg) == 3 and isinstance(arg[0], str):
            return self.resolve(arg[1] if self.condition(arg[0]) else arg[2], refs, atts)
        if key == "Fn::Join" and isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str):
            return arg[0].join(str(item) for item in self.resolve(arg[1], refs, atts))
        if key == "Fn::Split" and isinstance(arg, list) and len(arg) == 2 and isinstance(arg[0], str):
            return str(self.resolve(arg[1], refs, atts)).split(arg[0])
        if key == "Fn::Select" and isinstance(arg, list) and len(arg) == 2:
            return self.resolve(arg[1], refs, atts)[int(self.resolve(arg[0], refs, atts))]
        if key == "Fn::Sub" and (isinstance(arg, str) or (isinstance(arg, list) and len(arg) == 2)):
            text, given = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1], refs, atts))

            def substitute(match: re.Match[str]) -> str:
                if match[1] in given:  # the list form's own variables come first
                    return str(given[match[1]])
                return str(self.resolve({"Fn::GetAtt" if "." in match[1] else "Ref": match[1]}, refs, atts))

            return re.sub(r"\$\{([^}]+)\}", substitute, text)
        raise Unresolved(supported.not_evaluated(key))  # supported.check refuses it in an emulated property

    # --- The API -----------------------------------------------------------------------------------
    def rest_api_id(self) -> str:
        apis = list(self.properties("AWS::Serverless::Api"))
        if len(apis) != 1:
            raise ValueError(f"expected one AWS::Serverless::Api, found {apis}")
        return apis[0]

    def api(self, name: str, default: Any = None) -> Any:
        """A property of the REST API (unresolved); `default` when it is absent."""
        return self.document["Resources"][self.rest_api_id()]["Properties"].get(name) or default

    def api_function(self) -> str:
        """The logical id of the one function whose Api events reference the REST API. An Api event
        naming no RestApiId (SAM's implicit API) or another one is refused, not left unrouted."""
        api = {"Ref": self.rest_api_id()}
        serving = []
        for logical_id, props in self.functions().items():
            events = {name: e for name, e in (props.get("Events") or {}).items() if e["Type"] == "Api"}
            if stray := sorted(name for name, e in events.items() if e["Properties"].get("RestApiId") != api):
                raise ValueError(f"{logical_id}: Api events {stray} must name RestApiId !Ref {api['Ref']}")
            serving += [logical_id] if events else []
        if len(serving) != 1:
            raise ValueError(f"expected one function serving {api['Ref']}, found {sorted(serving)}")
        return serving[0]

    def api_routes(self) -> list[ApiRoute]:
        """The API function's Api events (api_function() refused one naming another API)."""
        default = self.api("Auth", {}).get("DefaultAuthorizer")
        keys_required = self.api("Auth", {}).get("ApiKeyRequired", False)
        routes = []
        for name, event in self.functions()[self.api_function()]["Events"].items():
            if event["Type"] == "Api":
                props = event["Properties"]
                auth = props.get("Auth") or {}
                authorizer = auth.get("Authorizer", default)
                # As SAM reads it: a literal (it evaluates no intrinsic there, an !If reads as true).
                required = auth.get("ApiKeyRequired", keys_required)
                if not isinstance(required, bool):
                    raise ValueError(f"{name}: Auth.ApiKeyRequired must be true or false, not {required!r}")
                routes.append(
                    ApiRoute(
                        name,
                        props["Path"],
                        props["Method"].upper(),
                        None if authorizer == "NONE" else authorizer,
                        required,
                    )
                )
        return routes

    def authorizer_function(self, name: str) -> str:
        """The logical id of the function behind Auth.Authorizers[name], a REQUEST authorizer."""
        arn = self.api("Auth", {})["Authorizers"][name]["FunctionArn"]
        function_id = arn.get("Fn::GetAtt", [None])[0] if isinstance(arn, dict) else None
        if function_id not in self.properties("AWS::Serverless::Function"):
            raise ValueError(f"authorizer {name}: FunctionArn must be !GetAtt <Function>.Arn of this template")
        return function_id


_PSEUDO_PARAMETERS = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws"}


def _plain_parameter(value: Any) -> str | None:
    """The name a variable's value is exactly, `!Ref Name` or `!Sub "${Name}"` (the same value), or None."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    if isinstance(value.get("Ref"), str):
        return value["Ref"]
    text = value.get("Fn::Sub")
    match = re.fullmatch(r"\$\{([^}!.][^}.]*)\}", text) if isinstance(text, str) else None
    return match[1] if match else None


def _parameter_uses(document: Mapping[str, Any], name: str) -> list[str]:
    """Where the template uses parameter `name` (`!Ref name`, `${name}` in a !Sub), each as a path
    of keys: `Logical.Property...` for a resource's property, `Section...` elsewhere."""
    sub = re.compile(rf"\$\{{{re.escape(name)}\}}")
    found: list[str] = []

    def walk(value: Any, path: list[str]) -> None:
        if isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, [*path[:-1], f"{path[-1]}[{index}]"] if path else [f"[{index}]"])
        elif isinstance(value, dict):
            text = value.get("Fn::Sub") if len(value) == 1 else None
            text = text[0] if isinstance(text, list) and text else text
            if (len(value) == 1 and value.get("Ref") == name) or (isinstance(text, str) and sub.search(text)):
                found.append(".".join(path))
                return
            for key, item in value.items():
                walk(item, [*path, str(key)])

    for section, content in document.items():
        if section == "Resources" and isinstance(content, dict):
            for logical_id, resource in content.items():
                walk((resource or {}).get("Properties") if isinstance(resource, dict) else None, [logical_id])
        elif section != "Parameters":
            walk(content, [section])
    return found


def _variables(function_properties: Mapping[str, Any]) -> dict[str, Any]:
    return (function_properties.get("Environment") or {}).get("Variables") or {}


def env_string(value: Any) -> str:
    """A resolved value as Lambda's environment holds it (CloudFormation writes booleans in lower case)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)

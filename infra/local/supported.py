"""What of template.yaml the local runtime emulates, what it ignores and why; anything else fails startup.

The runtime reads the SAM template as written (no SAM transform). SUPPORTED maps each resource type
to a table of its properties, each one EMULATED (the runtime, or moto behind it, does what AWS does),
"ignored: <reason>" (why not emulating it changes nothing the product does), a frozenset (emulated
for these values only), a dict (a nested table, for an object or each object of a list), Each(table)
(an object of names the template chooses, each value following the table) or ByType (a function's
Events, each event's Properties following the table of its Type). check() refuses anything else,
naming the resource and the property, and an intrinsic other than EVALUATED's in an emulated
property (Template.resolve would not evaluate it): adding a property to template.yaml means adding
it here, with the code that emulates it (infra/local/template.py reads it) or the reason it does
not matter locally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EMULATED = "emulated"


def ignored(reason: str) -> str:
    return f"ignored: {reason}"


def emulated(*names: str) -> dict[str, str]:
    return dict.fromkeys(names, EMULATED)


@dataclass(frozen=True)
class Each:
    table: dict[str, Any]


@dataclass(frozen=True)
class ByType:
    tables: dict[str, dict[str, Any]]


_NO_IAM = ignored("IAM is not enforced locally (tests/unit/test_template_security.py checks it against the code)")
_NO_CLOUDWATCH = ignored("no CloudWatch locally: logs go to the console, metrics are off (tests check alarms)")
_NO_TRACING = ignored("no X-Ray daemon locally (POWERTOOLS_TRACE_DISABLED)")
_AT_REST = ignored("encryption at rest: nothing the product sees")
_ONE_PROCESS = ignored("every function runs in this Python process")
_ONE_VERSION = ignored("one version of each function locally")
_NO_RESOURCE_POLICIES = ignored("resource policies are not enforced locally")
_NO_ALARMS = ignored("alarm notifications: no alarms locally")
_NO_WAF = ignored("no WAF in front of the local API")
_ON_FAILURE = {"OnFailure": {"Type": frozenset({"SQS"}), "Destination": EMULATED}}
_RESPONSE_TYPES = frozenset({"ReportBatchItemFailures"})

_FUNCTION_COMMON: dict[str, Any] = {
    # The Lambda context's memory_limit_in_mb and remaining time; an overrun fails (infra/local/lambdas.py).
    **emulated("MemorySize", "Timeout"),
    "Environment": emulated("Variables"),
    "CodeUri": frozenset({"."}),  # handlers import from the project, which is on sys.path
    "Runtime": _ONE_PROCESS,
    "Architectures": _ONE_PROCESS,
    "Layers": ignored("the dependencies layer's packages are installed in the virtualenv"),
    "Tracing": _NO_TRACING,
    # Lambda's own START/END/REPORT lines and its filter of the functions' lines by level: locally
    # there are no platform lines, and the functions' level is POWERTOOLS_LOG_LEVEL, the same LogLevel
    # the template gives Lambda (tests/unit/test_platform_log_level.py).
    "LoggingConfig": ignored("no Lambda log processing locally: lines go to the console as the functions write them"),
}

_EVENTS = ByType(
    {
        "Api": {
            **emulated("RestApiId", "Path"),  # Path: literal segments and {param}s
            "Method": frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"}),
            "Auth": emulated("Authorizer", "ApiKeyRequired"),
        },
        "DynamoDB": {
            **emulated("Stream", "BatchSize", "BisectBatchOnFunctionError", "MaximumRetryAttempts"),
            "StartingPosition": frozenset({"TRIM_HORIZON", "LATEST"}),
            "FunctionResponseTypes": _RESPONSE_TYPES,
            "FilterCriteria": {"Filters": emulated("Pattern")},  # exact values
            "DestinationConfig": _ON_FAILURE,
            "MaximumBatchingWindowInSeconds": EMULATED,  # scaled by OMS_BATCHING_WINDOW_SCALE (the suite's 0)
            "ParallelizationFactor": ignored(
                "one batch per shard at a time; AWS keeps each key's records in order either way"
            ),
        },
        "SQS": {
            **emulated("Queue", "BatchSize"),
            "FunctionResponseTypes": _RESPONSE_TYPES,
            "MaximumBatchingWindowInSeconds": EMULATED,
            # Batches side by side in threads, up to SQS_LOCAL_CONCURRENCY; without it, one at a time.
            "ScalingConfig": emulated("MaximumConcurrency"),
        },
        "S3": {
            **emulated("Bucket", "Events"),  # Events: matched by moto
            "Filter": {"S3Key": {"Rules": {"Name": frozenset({"prefix", "suffix"}), "Value": EMULATED}}},
        },
        "Schedule": emulated("Schedule"),  # rate(...) only (a cron(...) is refused), checked when built
    }
)

SUPPORTED: dict[str, Any] = {
    "AWS::DynamoDB::Table": {
        **emulated("KeySchema", "AttributeDefinitions"),
        "GlobalSecondaryIndexes": emulated("IndexName", "KeySchema", "Projection"),
        "BillingMode": frozenset({"PAY_PER_REQUEST"}),
        "StreamSpecification": emulated("StreamViewType"),
        # Set on the table; moto deletes no expired item (README "What the local runtime emulates").
        "TimeToLiveSpecification": emulated("AttributeName", "Enabled"),
        "DeletionProtectionEnabled": ignored("the local stack is thrown away when it stops"),
        "PointInTimeRecoverySpecification": ignored("backups: nothing the product reads"),
        "SSESpecification": _AT_REST,
    },
    "AWS::SQS::Queue": {
        **emulated("VisibilityTimeout", "MessageRetentionPeriod"),
        "RedrivePolicy": emulated("deadLetterTargetArn", "maxReceiveCount"),
        "SqsManagedSseEnabled": _AT_REST,
    },
    "AWS::S3::Bucket": {
        "BucketName": EMULATED,
        "VersioningConfiguration": ignored(
            "buckets are unversioned locally: the import splitter keys an import by the object's ETag "
            "instead of its version (the same file put twice under one key is one import locally)"
        ),
        "BucketEncryption": _AT_REST,
        "PublicAccessBlockConfiguration": ignored("nothing is public locally"),
        "LifecycleConfiguration": ignored("expiry after days: the local stack lives for hours"),
    },
    # LabelsZoneId: a bucket of the directory bucket's name in moto (infra/local/resources.py).
    "AWS::S3Express::DirectoryBucket": {
        "DataRedundancy": frozenset({"SingleAvailabilityZone"}),
        "LocationName": EMULATED,  # the zone in the bucket's name, which botocore reads
        "BucketEncryption": _AT_REST,
        "LifecycleConfiguration": ignored("expiry after days: the local stack lives for hours"),
    },
    "AWS::Events::EventBus": emulated("Name"),
    "AWS::Serverless::Function": {
        **_FUNCTION_COMMON,
        "Handler": EMULATED,
        "Events": _EVENTS,
        "EventInvokeConfig": {"MaximumRetryAttempts": EMULATED, "DestinationConfig": _ON_FAILURE},
        "Description": ignored("documentation"),
        "Policies": _NO_IAM,
        "AutoPublishAlias": _ONE_VERSION,
        "AutoPublishAliasAllProperties": _ONE_VERSION,
        "DeploymentPreference": ignored("no CodeDeploy locally: a restart deploys everything at once"),
    },
    "AWS::Serverless::StateMachine": {
        "Type": frozenset({"EXPRESS"}),
        # DefinitionUri: a JSON file next to the template, run by moto's ASL interpreter.
        **emulated("DefinitionUri", "DefinitionSubstitutions"),
        "Policies": _NO_IAM,
        "Logging": _NO_CLOUDWATCH,
        "Tracing": _NO_TRACING,
    },
    "AWS::Serverless::Api": {
        "StageName": EMULATED,
        # A method requiring a key refuses a request whose authorizer named none of a usage plan on
        # the stage (403), and is throttled (and held to its quota) by that plan: gateway.py.
        "ApiKeySourceType": frozenset({"AUTHORIZER"}),
        "Auth": {
            "ApiKeyRequired": EMULATED,
            "DefaultAuthorizer": EMULATED,
            "Authorizers": Each(
                {
                    "FunctionArn": EMULATED,
                    "FunctionPayloadType": frozenset({"REQUEST"}),
                    "Identity": emulated("Headers", "ReauthorizeEvery"),
                }
            ),
        },
        "GatewayResponses": Each(
            {
                "StatusCode": EMULATED,
                "ResponseTemplates": emulated("application/json"),
                "ResponseParameters": {"Headers": EMULATED},  # static values ('...') only: gateway.py
            }
        ),
        "MethodSettings": {
            "ResourcePath": frozenset({"/*"}),
            "HttpMethod": frozenset({"*"}),
            # Locally per API key (infra/local/gateway.py).
            **emulated("ThrottlingRateLimit", "ThrottlingBurstLimit"),
        },
        "Name": ignored("the local API has one id, `local`"),
        "TracingEnabled": _NO_TRACING,
        "AccessLogSetting": ignored("the local gateway logs one line per request to the console instead"),
    },
    # Made in moto (infra/local/resources.py), where the local gateway reads which plan a key is in.
    "AWS::ApiGateway::ApiKey": {**emulated("Name", "Value", "Enabled"), "Description": ignored("documentation")},
    "AWS::ApiGateway::UsagePlan": {
        **emulated("UsagePlanName", "Throttle", "Quota"),  # Quota: a per-day one (gateway.py)
        "ApiStages": emulated("ApiId", "Stage"),
        "Description": ignored("documentation"),
    },
    "AWS::ApiGateway::UsagePlanKey": {**emulated("KeyId", "UsagePlanId"), "KeyType": frozenset({"API_KEY"})},
    "AWS::Serverless::LayerVersion": ignored("the layer's packages are installed in the virtualenv"),
    **dict.fromkeys(("AWS::IAM::Policy", "AWS::IAM::Role"), _NO_IAM),
    **dict.fromkeys(
        ("AWS::S3::BucketPolicy", "AWS::S3Express::BucketPolicy", "AWS::SQS::QueuePolicy"), _NO_RESOURCE_POLICIES
    ),
    **dict.fromkeys(("AWS::Logs::LogGroup", "AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard"), _NO_CLOUDWATCH),
    **dict.fromkeys(("AWS::SNS::Topic", "AWS::SNS::Subscription"), _NO_ALARMS),
    **dict.fromkeys(("AWS::WAFv2::WebACL", "AWS::WAFv2::WebACLAssociation"), _NO_WAF),
    "AWS::ApiGateway::Account": ignored("an account setting for access logs: no CloudWatch locally"),
    "AWS::CloudFormation::WaitConditionHandle": ignored("does nothing by itself"),
}

# Attributes of an emulated resource besides Type and Properties.
RESOURCE_ATTRIBUTES: dict[str, Any] = {
    "Condition": EMULATED,  # created only when it holds (Template.condition)
    "DeletionPolicy": ignored("the local stack is thrown away when it stops"),
    "UpdateReplacePolicy": ignored("the local stack is created anew each start"),
    "Metadata": ignored("sam build's settings"),
}

# Per parameter type, the properties template.parameter_refused checks (Description and
# ConstraintDescription have nothing to check): another constraint would be a deploy's refusal
# `make run` silently takes. NoEcho is not among them: messages and warnings show values.
PARAMETERS: dict[str, frozenset[str]] = {
    "Number": frozenset({"Type", "Default", "Description", "MinValue", "MaxValue", "AllowedValues"}),
    "String": frozenset({"Type", "Default", "Description", "ConstraintDescription", "AllowedValues", "AllowedPattern"}),
    "CommaDelimitedList": frozenset({"Type", "Default", "Description"}),
}

SECTIONS: dict[str, Any] = {
    "AWSTemplateFormatVersion": EMULATED,
    "Transform": frozenset({"AWS::Serverless-2016-10-31"}),
    "Description": ignored("documentation"),
    "Parameters": EMULATED,  # defaults, overridden by the stack's parameter_overrides; PARAMETERS checked
    "Mappings": EMULATED,  # Fn::FindInMap (infra/local/template.py resolves it)
    # Evaluated where an emulated resource or an Fn::If in an emulated property names one
    # (Template.condition: Fn::Equals, Fn::Not); others are not read.
    "Conditions": ignored("evaluated only where an emulated resource or property names one"),
    # One rule refuses PlatformLogLevel WARN with LogLevel WARNING or ERROR: PlatformLogLevel is
    # Lambda's alone (LoggingConfig, ignored above), no variable `make run` takes from the shell.
    # The other refuses KeyQuotaPerDay without KeyRateLimit, which locally leaves the quota out
    # with the per-key plan, as the template's conditions do.
    "Rules": ignored("a deploy's refusals of parameter combinations that change nothing locally"),
    "Globals": {"Function": _FUNCTION_COMMON},
    "Resources": EMULATED,  # walked resource by resource
    "Outputs": ignored("the local stack's names and addresses are in .oms-local.json"),
}


# What Template.resolve evaluates in an emulated property; anything else there (Fn::Base64,
# Fn::Cidr, ...) is refused. An ignored property or resource may use any.
EVALUATED = ("Ref", "Fn::GetAtt", "Fn::FindInMap", "Fn::Sub", "Fn::Join", "Fn::Split", "Fn::Select", "Fn::If")


def not_evaluated(intrinsic: str) -> str:
    return f"{intrinsic} is not evaluated locally (only {', '.join(EVALUATED[:-1])} and {EVALUATED[-1]})"


class UnsupportedTemplate(ValueError):
    """The template uses something the local runtime does not emulate."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "template.yaml uses what the local runtime does not emulate (infra/local/supported.py):\n  - "
            + "\n  - ".join(problems)
        )


def unsupported(document: Mapping[str, Any]) -> list[str]:
    """Every use of a section, resource type, property, value or intrinsic the tables do not cover."""
    # Resources are walked one by one below (an ignored one's properties are not looked into).
    problems = _walk({k: v for k, v in document.items() if k != "Resources"}, SECTIONS, "template")
    for name, declared in (document.get("Parameters") or {}).items():
        if (checked := PARAMETERS.get(declared.get("Type"))) is None:
            problems.append(f"parameter {name}: type {declared.get('Type')!r} is not emulated")
        else:
            problems += [f"parameter {name}: property {key} is not emulated" for key in sorted(set(declared) - checked)]
    for logical_id, resource in (document.get("Resources") or {}).items():
        where, table = f"{logical_id} ({resource.get('Type')})", SUPPORTED.get(resource.get("Type"))
        if table is None:
            problems.append(f"{where}: resource type not emulated")
        elif isinstance(table, dict):
            problems += _walk(
                {k: v for k, v in resource.items() if k not in ("Type", "Properties")}, RESOURCE_ATTRIBUTES, where
            )
            problems += _walk(resource.get("Properties") or {}, table, where)
    return problems


def check(document: Mapping[str, Any]) -> None:
    if problems := unsupported(document):
        raise UnsupportedTemplate(problems)


def _walk(value: Any, rule: Any, where: str) -> list[str]:
    if isinstance(rule, str):  # emulated (its intrinsics must be ones the runtime evaluates), or ignored
        return _not_evaluated(value, where) if rule == EMULATED else []
    if isinstance(value, list):
        return [problem for index, item in enumerate(value) for problem in _walk(item, rule, f"{where}[{index}]")]
    if isinstance(rule, frozenset):
        if isinstance(value, str) and value.upper() in {allowed.upper() for allowed in rule}:
            return []
        return [f"{where}: {value!r} is not emulated (only {', '.join(sorted(rule))})"]
    if not isinstance(value, Mapping):
        return [f"{where}: expected an object, got {value!r}"]
    if isinstance(rule, Each):
        return [problem for name, item in value.items() for problem in _walk(item, rule.table, f"{where}.{name}")]
    if isinstance(rule, ByType):
        problems = []
        for name, event in value.items():
            event_type = event.get("Type") if isinstance(event, Mapping) else None
            if event_type not in rule.tables:
                problems.append(f"{where}.{name}: event type {event_type!r} is not emulated")
                continue
            problems += [
                f"{where}.{name}: {key} is not emulated" for key in sorted(set(event) - {"Type", "Properties"})
            ]
            problems += _walk(event.get("Properties") or {}, rule.tables[event_type], f"{where}.{name}")
        return problems
    return [
        problem
        for key, item in value.items()
        for problem in (
            _walk(item, rule[key], f"{where}.{key}") if key in rule else [f"{where}: property {key} is not emulated"]
        )
    ]


def _not_evaluated(value: Any, where: str) -> list[str]:
    """Every intrinsic in `value` (an emulated property's) that Template.resolve does not evaluate."""
    if isinstance(value, list):
        return [problem for index, item in enumerate(value) for problem in _not_evaluated(item, f"{where}[{index}]")]
    if not isinstance(value, Mapping):
        return []
    key = next(iter(value), "")
    if len(value) == 1 and key.startswith("Fn::") and key not in EVALUATED:
        return [f"{where}: {not_evaluated(key)}"]
    return [problem for name, item in value.items() for problem in _not_evaluated(item, f"{where}.{name}")]

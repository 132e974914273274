"""Runs the SAM transform on a template offline, as `sam validate` does, to catch what cfn-lint cannot.

cfn-lint checks resources against their schemas but never runs the transform, so it accepts an
event `Type: SQSS` or a policy template with the wrong parameter. aws-sam-translator is the
library SAM itself deploys with; translating with it finds those without an AWS account.

It also fails on anything the local runtime does not emulate (infra/local/supported.py), on a
Schedule's rate EventBridge refuses (`rate(1 minutes)`: the transform and cfn-lint pass it) or a
cron(...) (a scheduled function numbers its runs in its rate's period), and
validates every state machine's ASL (infra/asl.py) after its DefinitionSubstitutions
are applied with placeholder values: a dangling Next, a path that never ends or a `${Name}` with
no substitution fails the check (the SAM transform and cfn-lint check none of that).

    python -m infra.check_template template.yaml
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path
from typing import Any

PLACEHOLDER_URI = "s3://bucket/key"

# Resource type -> the property that points at local code or a local definition.
_LOCAL_URIS = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::StateMachine": "DefinitionUri",
    "AWS::Serverless::Api": "DefinitionUri",
    "AWS::Serverless::HttpApi": "DefinitionUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}
_GLOBALS = {"Function": "CodeUri", "StateMachine": "DefinitionUri", "Api": "DefinitionUri", "HttpApi": "DefinitionUri"}


class _NoManagedPolicies:
    """Offline: the translator asks IAM for managed policy ARNs only for names it cannot map itself."""

    def load(self) -> dict[str, str]:
        return {}


def _is_local(uri: Any) -> bool:
    return isinstance(uri, str) and not uri.startswith("s3://")


def with_placeholder_uris(template: dict[str, Any]) -> dict[str, Any]:
    """A copy whose local CodeUri/DefinitionUri values point at S3, as `sam build`/`sam validate`
    would make them; the translator accepts only S3 locations."""
    template = copy.deepcopy(template)
    globals_ = template.get("Globals") or {}
    for section, prop in _GLOBALS.items():
        if _is_local((globals_.get(section) or {}).get(prop)):
            globals_[section][prop] = PLACEHOLDER_URI
    global_code = (globals_.get("Function") or {}).get("CodeUri")
    for resource in (template.get("Resources") or {}).values():
        prop = _LOCAL_URIS.get(resource.get("Type"))
        if prop is None:
            continue
        props = resource.setdefault("Properties", {})
        if _is_local(props.get(prop)):
            props[prop] = PLACEHOLDER_URI
        elif (
            resource["Type"] == "AWS::Serverless::Function"
            and prop not in props
            and global_code is None
            and "InlineCode" not in props
            and props.get("PackageType", "Zip") == "Zip"
        ):
            props[prop] = PLACEHOLDER_URI  # SAM CLI reads a missing CodeUri as "."
    return template


def translate(template: dict[str, Any]) -> dict[str, Any]:
    """The CloudFormation the SAM transform makes of `template`; raises InvalidDocumentException."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from samtranslator.translator.transform import transform

    return transform(with_placeholder_uris(template), {}, _NoManagedPolicies())


def placeholder_for(name: str, value: Any) -> str:
    """What a DefinitionSubstitutions value stands for when no stack exists: a literal stays, an
    intrinsic becomes an ARN-shaped placeholder (Task Resources must be ARNs)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    return f"arn:aws:lambda:us-east-1:123456789012:function:placeholder-{name}"


def state_machine_problems(template_path: Path) -> list[str]:
    """Every state machine's ASL problems, prefixed with its logical id."""
    from infra.asl import validate_asl
    from infra.local.template import Template

    template = Template.load(template_path)
    problems = []
    for logical_id, props in template.properties("AWS::Serverless::StateMachine").items():
        declared = props.get("DefinitionSubstitutions") or {}
        substitutions = {name: placeholder_for(name, value) for name, value in declared.items()}
        try:
            definition = template.state_machine_definition(props, substitutions)
        except (OSError, ValueError) as error:
            problems.append(f"{logical_id}: cannot read the definition: {error}")
            continue
        problems.extend(f"{logical_id}: {problem}" for problem in validate_asl(definition))
    return problems


def schedule_problems(template_path: Path) -> list[str]:
    """Every Schedule event whose expression, resolved (a Mappings entry through Fn::Sub, as
    ScheduleMinutes feeds the scheduled functions), EventBridge refuses: `rate(1 minutes)` (the
    SAM transform and cfn-lint pass it, the deploy fails), `rate(5 minute)`, `rate(0 minutes)`; and
    any `cron(...)`: a scheduled function numbers its runs in its rate's period, and a cron's uneven
    gaps would skip turns. `make run` refuses them too (infra/local/event_sources.schedule_period)."""
    from infra.local.event_sources import EventSourceError, schedule_period
    from infra.local.template import Template, Unresolved

    template = Template.load(template_path)
    problems = []
    for logical_id, props in template.functions().items():
        for name, event in (props.get("Events") or {}).items():
            if event.get("Type") != "Schedule":
                continue
            where = f"{logical_id}.{name}"
            try:
                schedule_period(str(template.resolve(event["Properties"]["Schedule"])), where)
            except (EventSourceError, Unresolved) as error:
                problems.append(str(error))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.check_template", description=__doc__.splitlines()[0])
    parser.add_argument("template", nargs="?", default="template.yaml", type=Path)
    args = parser.parse_args(argv)

    import yaml
    from samtranslator.model.exceptions import InvalidDocumentException

    from infra.local.template import load_template

    try:
        template = load_template(args.template)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"{args.template}: {error}", file=sys.stderr)
        return 1
    try:
        translated = translate(template)
    except InvalidDocumentException as error:
        print(f"{args.template}: {error.message}", file=sys.stderr)
        for cause in error.causes:
            print(f"  - {cause.message}", file=sys.stderr)
        return 1
    from infra.local.supported import UnsupportedTemplate, check

    try:
        check(template)
    except UnsupportedTemplate as error:
        print(f"{args.template}: {error}", file=sys.stderr)
        return 1
    for what, problems_of in (
        ("a schedule EventBridge refuses", schedule_problems),
        ("invalid state machine definition", state_machine_problems),
    ):
        problems = problems_of(args.template)
        if problems:
            print(f"{args.template}: {what}", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            return 1
    machines = sum(
        1
        for resource in template.get("Resources", {}).values()
        if resource.get("Type") in ("AWS::Serverless::StateMachine", "AWS::StepFunctions::StateMachine")
    )
    print(
        f"{args.template}: SAM transform OK, {len(template.get('Resources', {}))} resources "
        f"-> {len(translated.get('Resources', {}))} CloudFormation resources; ASL OK ({machines} state machines)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

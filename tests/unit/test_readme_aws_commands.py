"""Every `aws` command the README prints, in its sh blocks and in its prose, names a command the AWS
CLI has and only options that command takes, and its `--query` is JMESPath: checked against
botocore's service models, which the AWS CLI builds its parser from (its own botocore: the CLI is
not a dependency here). A copied runbook command that the CLI refuses leaves the operator with
nothing to run at the moment it is needed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import botocore.session
import jmespath
import pytest
from botocore import xform_name

from tests.readme_code import shell_blocks

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# A $(...) or $((...)) holding no other (an arithmetic one's parentheses two deep).
SUBSTITUTION = re.compile(r"\$\((?:\((?:\([^()]*\)|[^()])*\)|[^()$]|\$(?!\())*\)")
PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\n`]*?>")  # <OrdersTableName>, <the REST API's id>
OPERATORS = ";&|<>()"
# The CLI's own options, taken by every command (those the README uses, and their siblings).
GLOBAL_OPTIONS = {
    "query", "output", "region", "profile", "endpoint-url", "debug", "no-paginate", "no-cli-pager",
    "cli-binary-format", "cli-input-json", "generate-cli-skeleton", "max-items", "page-size", "starting-token",
    "cli-read-timeout", "cli-connect-timeout", "no-verify-ssl", "no-sign-request", "ca-bundle", "color",
}  # fmt: skip
SERVICES = {"s3api": "s3", "deploy": "codedeploy"}  # the CLI's names that are not botocore's
S3_COMMANDS = {"cp", "mv", "rm", "sync", "ls", "mb", "rb", "presign", "website"}  # `aws s3`'s own


def shell_texts() -> list[str]:
    """The README's sh blocks, and its inline code spans that run aws (a span's line breaks are the
    paragraph's wrapping)."""
    blocks = shell_blocks(README)
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    spans = [span for paragraph in prose.split("\n\n") for span in re.findall(r"`([^`]+)`", paragraph)]
    return blocks + [span.replace("\n", " ") for span in spans if re.match(r"aws\s", span) or "$(aws " in span]


def aws_calls(text: str) -> list[list[str]]:
    """The arguments of each aws call in `text`, those inside a command substitution included."""
    text = PLACEHOLDER.sub("X", re.sub(r"(?m)(^|\s)#[^\n]*", r"\1", text.replace("\\\n", " ")))
    calls = []
    while inner := list(SUBSTITUTION.finditer(text)):
        for match in reversed(inner):
            calls += _calls(match.group(0)[2:-1])
            text = text[: match.start()] + "X" + text[match.end() :]
    return calls + _calls(text)


def _calls(text: str) -> list[list[str]]:
    lexer = shlex.shlex(text.replace("\n", " ; "), posix=True, punctuation_chars=OPERATORS)
    lexer.whitespace_split = True
    words = list(lexer)
    calls = []
    for start in (i for i, word in enumerate(words) if word == "aws"):
        call = []
        for word in words[start + 1 :]:
            if word and set(word) <= set(OPERATORS):
                break
            call.append(word)
        while call and call[0].startswith("--"):  # aws --endpoint-url URL dynamodb ...
            call = call[2:]
        calls.append(call)
    return calls


CALLS = [call for text in shell_texts() for call in aws_calls(text)]
SESSION = botocore.session.get_session()


def options_of(service: str, command: str) -> set[str]:
    """The options `aws <service> <command>` takes, or an empty set for a command it does not have."""
    model = SESSION.get_service_model(SERVICES.get(service, service))
    operations = {xform_name(name, "-"): name for name in model.operation_names}
    if command not in operations:
        return set()
    shape = model.operation_model(operations[command]).input_shape
    members = shape.members.items() if shape is not None else []
    named = {xform_name(name, "-") for name, _ in members}
    negated = {"no-" + xform_name(name, "-") for name, member in members if member.type_name == "boolean"}
    return named | negated | GLOBAL_OPTIONS


def test_the_readmes_aws_commands_are_found():
    assert len(CALLS) >= 80
    found = {tuple(call[:2]) for call in CALLS}
    assert {("s3", "cp"), ("deploy", "stop-deployment"), ("sqs", "start-message-move-task")} <= found
    assert ("dynamodbstreams", "get-shard-iterator") in found  # inside IT=$(aws ...)


@pytest.mark.parametrize("call", CALLS, ids=lambda call: " ".join(call[:2]))
def test_every_aws_command_of_the_readme_is_one_the_cli_has_with_options_it_takes(call: list[str]):
    service, command, *arguments = call
    given = {word.removeprefix("--") for word in arguments if word.startswith("--")}
    if service == "s3":
        assert command in S3_COMMANDS
        return
    takes = options_of(service, command)
    assert takes, f"aws {service} {command}: no such command"
    assert sorted(given - takes) == [], f"aws {service} {command}"
    if "--query" in arguments:
        jmespath.compile(arguments[arguments.index("--query") + 1])


def test_every_aws_command_the_readme_aims_at_the_local_stack_gives_it_credentials_and_a_region():
    """The emulated endpoint takes any credentials, but the CLI asks for some and for a region
    before it sends anything ("You must specify a region"): a reader without an AWS profile copying
    a local command as printed must get the answer, not that."""
    local = [text for text in shell_texts() if "--endpoint-url http://127.0.0.1:4566" in text]
    assert len(local) >= 3
    for text in local:
        assert "AWS_ACCESS_KEY_ID=" in text and "AWS_SECRET_ACCESS_KEY=" in text, text
        assert "AWS_DEFAULT_REGION=" in text or "--region " in text, text

"""The `asl_parse` patch (infra/local/moto_patches/asl_parse.py): a definition is parsed once and its
tree visited into a new program per execution; executions of kept definitions, several at once,
end exactly as they do on moto's own parse; what does not parse raises every time."""

from __future__ import annotations

import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import boto3
import pytest
from moto import mock_aws

from infra.local.moto_patches import asl_parse, retry_delay

BOOM = {"StartAt": "Boom", "States": {"Boom": {"Type": "Fail", "Error": "Boom", "Cause": "planted"}}}
# Three attempts, then FAILED with Boom; the attempts are counted per execution.
RETRIED = {
    "StartAt": "Retried",
    "States": {
        "Retried": {
            "Type": "Parallel",
            "Branches": [BOOM],
            "Retry": [{"ErrorEquals": ["Boom"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 1}],
            "End": True,
        }
    },
}
# SUCCEEDED, with the error caught into $.error.
CAUGHT = {
    "StartAt": "Caught",
    "States": {
        "Caught": {
            "Type": "Parallel",
            "Branches": [BOOM],
            "Catch": [{"ErrorEquals": ["Boom"], "ResultPath": "$.error", "Next": "Recovered"}],
            "Next": "Recovered",
        },
        "Recovered": {"Type": "Pass", "End": True},
    },
}
ROLE = "arn:aws:iam::123456789012:role/interpreter"


@pytest.fixture
def antlr_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every lex and parse ANTLR runs of a whole definition (the work the patch saves), by its text."""
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser

    parses: list[str] = []
    state_machine = ASLParser.state_machine

    def counted(parser: ASLParser) -> Any:
        parses.append(parser.getTokenStream().tokenSource.inputStream.strdata)
        return state_machine(parser)

    monkeypatch.setattr(ASLParser, "state_machine", counted)
    return parses


@pytest.fixture
def installed() -> Iterator[None]:
    with asl_parse.PATCH.registered():
        yield


def _unique(machine: dict[str, Any]) -> str:
    """A definition no earlier test had kept (the kept trees are the process's)."""
    return json.dumps({**machine, "Comment": uuid.uuid4().hex})


def _parse(definition: str) -> tuple[Any, Any]:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    return AmazonStateLanguageParser.parse(definition)


def _shape(program: Any) -> str:
    """A program's components and their values (moto's repr of a component is deep), minus the
    addresses of the objects that have no repr of their own."""
    return re.sub(r" at 0x[0-9a-f]+", "", repr(program))


def test_a_definition_is_parsed_once_and_every_call_gets_a_new_program_like_moto_s(
    antlr_parses: list[str],
) -> None:
    definition = _unique(RETRIED)
    own_program, own_tree = _parse(definition)
    with asl_parse.PATCH.registered():
        parsed = [_parse(definition) for _ in range(3)]
    assert len(antlr_parses) == 1 + 1  # moto's own parse, then the patch's first
    programs, trees = [p for p, _ in parsed], [t for _, t in parsed]
    assert all(tree is trees[0] for tree in trees) and trees[0] is not own_tree
    assert len({id(program) for program in programs}) == 3
    assert {_shape(program) for program in programs} == {_shape(own_program)}


def test_the_program_holds_no_node_of_the_kept_tree(installed: None) -> None:
    """What makes sharing the tree safe beyond moto not writing to it: nothing an execution
    evaluates can reach it."""
    from antlr4.tree.Tree import Tree
    from moto.stepfunctions.parser.asl.component.component import Component

    definition = _unique(CAUGHT)
    _parse(definition)
    program, tree = _parse(definition)
    assert isinstance(tree, Tree)
    seen: set[int] = set()
    pending: list[Any] = [program]
    components = 0
    while pending:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        assert not isinstance(item, Tree), f"a component keeps a parse tree node: {item!r}"
        if isinstance(item, Component):
            components += 1
            pending.extend(vars(item).values())
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
        elif hasattr(item, "__dict__") and type(item).__module__.startswith("moto.stepfunctions"):
            pending.extend(vars(item).values())
    assert components > 10  # the walk reached the states' components


def test_a_definition_that_does_not_parse_raises_every_time_and_is_not_kept(
    installed: None, antlr_parses: list[str]
) -> None:
    from moto.stepfunctions.parser.asl.parse.asl_parser import ASLParserException

    broken = '{"StartAt": "Boom", "States": {"Boom": {"Type": "Fail", "Error": '
    # Parses, but the preprocessor refuses it (a state named twice): the other way a parse fails.
    redefined = '{"StartAt": "A", "States": {"A": {"Type": "Succeed"}, "A": {"Type": "Succeed"}}}'
    for _ in range(2):
        with pytest.raises(ASLParserException):
            _parse(broken)
        with pytest.raises(ValueError, match="State redefinition"):
            _parse(redefined)
    assert antlr_parses == [broken, redefined] * 2


def test_the_least_recently_used_definition_is_parsed_again_past_the_bound(
    installed: None, antlr_parses: list[str]
) -> None:
    definitions = [_unique(CAUGHT) for _ in range(asl_parse.KEPT_TREES + 1)]
    for definition in definitions[:-1]:
        _parse(definition)
    _parse(definitions[0])  # now the most recently used: definitions[1] is dropped next
    _parse(definitions[-1])
    antlr_parses.clear()
    _parse(definitions[0])
    _parse(definitions[-1])
    assert antlr_parses == []
    _parse(definitions[1])
    assert antlr_parses == [definitions[1]]


def _run_at_once(sfn: Any, machines: dict[str, str], rounds: int) -> list[tuple[str, Any]]:
    """Starts one execution of every machine per round, all at once, and waits for them: each one's
    (machine, status, output or error, the types of its history's events)."""
    started = []
    for n in range(rounds):
        for name, arn in machines.items():
            execution = sfn.start_execution(stateMachineArn=arn, name=f"{name}-{n}", input=json.dumps({"run": n}))
            started.append((name, execution["executionArn"]))
    ended = []
    for name, execution in started:
        deadline = time.monotonic() + 60
        while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
            assert time.monotonic() < deadline, f"{name} still running"
            time.sleep(0.01)
        history = sfn.get_execution_history(executionArn=execution)["events"]
        outcome = described.get("output") or described.get("error")
        ended.append((name, described["status"], outcome, [event["type"] for event in history]))
    return ended


def _run_machines(definitions: dict[str, str], rounds: int, patched: bool) -> list[tuple[str, Any]]:
    # Retry sleeps a tenth of IntervalSeconds: a retried execution lasts ~0.2 s, so those a round
    # starts overlap.
    with (
        mock_aws(config={"stepfunctions": {"execute_state_machine": True}}),
        retry_delay.PATCH.registered(0.1),
        asl_parse.PATCH.registered() if patched else nullcontext(),
    ):
        sfn = boto3.client("stepfunctions", region_name="us-east-1")
        machines = {
            name: sfn.create_state_machine(name=name, definition=definition, roleArn=ROLE)["stateMachineArn"]
            for name, definition in definitions.items()
        }
        return _run_at_once(sfn, machines, rounds)


def test_executions_of_kept_definitions_at_once_each_end_as_on_moto_s_own_parse(
    antlr_parses: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, "moto.stepfunctions.parser.asl.component.eval_component")  # every Boom
    definitions = {"retried": _unique(RETRIED), "caught": _unique(CAUGHT)}
    unpatched = {name: ended for name, *ended in _run_machines(definitions, rounds=1, patched=False)}
    assert unpatched["retried"][:2] == ["FAILED", "Boom"]
    assert unpatched["retried"][2].count("ParallelStateStarted") == 3  # the first attempt and two retries
    caught = {"run": 0, "error": {"Error": "Boom", "Cause": "planted"}}
    assert unpatched["caught"][:2] == ["SUCCEEDED", json.dumps(caught)]
    del antlr_parses[:]
    patched = _run_machines(definitions, rounds=3, patched=True)
    assert sorted(antlr_parses) == sorted(definitions.values())  # by CreateStateMachine's validation only
    assert [name for name, *_ in patched] == ["retried", "caught"] * 3
    for n, (name, status, outcome, types) in enumerate(patched):
        expected_status, expected_outcome, expected_types = unpatched[name]
        assert (status, types) == (expected_status, expected_types), name
        if name == "caught":
            expected_outcome = json.dumps({**caught, "run": n // 2})
        assert outcome == expected_outcome


def test_canary_moto_s_execution_worker_still_parses_its_definition_per_execution() -> None:
    """If moto stops parsing per execution (or reaches its program another way), the patch saves
    nothing: drop it."""
    from moto.stepfunctions.parser.backend.execution_worker import ExecutionWorker

    source = inspect.getsource(ExecutionWorker._get_evaluation_entrypoint)
    assert "AmazonStateLanguageParser.parse(" in source
    assert "_get_evaluation_entrypoint()" in inspect.getsource(ExecutionWorker._execution_logic)


def test_a_tree_kept_under_one_installation_serves_the_next(antlr_parses: list[str]) -> None:
    """Stacks started one after another in a process (the tests') parse each definition once."""
    definition = _unique(CAUGHT)
    with asl_parse.PATCH.registered():
        first = _parse(definition)[1]
    assert _parse(definition)[1] is not first  # moto's own parse while none is installed
    with asl_parse.PATCH.registered():
        assert _parse(definition)[1] is first
    assert antlr_parses == [definition] * 2

"""Amazon States Language: DefinitionSubstitutions, and the checks of a definition that moto leaves out.

AWS refuses a definition with a dangling `Next` or an unreachable state at deploy time; moto's ASL
parser accepts both (its ValidateStateMachineDefinition is not implemented), though it does refuse
a malformed one (Retry numbers out of range, ErrorEquals not a list, a Task without an ARN).
`validate_asl` runs that parser and adds the graph checks, before a state machine is created
locally and before `make test` passes a template (infra/check_template.py). Only the state types
the workflows use (Task, Pass, Choice, Succeed, Fail) are checked; any other is reported, so a workflow cannot
grow past what these checks cover without them growing too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_TERMINAL_TYPES = {"Succeed", "Fail"}  # end a path by themselves


class AslError(ValueError):
    """A state machine definition that AWS would refuse."""

    def __init__(self, name: str, problems: list[str]):
        self.name = name
        self.problems = problems
        super().__init__(f"state machine {name}: invalid definition:\n  - " + "\n  - ".join(problems))


def substitute(value: Any, substitutions: Mapping[str, Any]) -> Any:
    """Replaces `${Name}` in every string (keys included) with its DefinitionSubstitutions value as
    text, as SAM does in the definition's text. A name without one stays (validate_asl reports it)."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda match: str(substitutions.get(match[1], match[0])), value)
    if isinstance(value, list):
        return [substitute(item, substitutions) for item in value]
    if isinstance(value, dict):
        return {substitute(key, substitutions): substitute(item, substitutions) for key, item in value.items()}
    return value


def validate_asl(definition: Any) -> list[str]:
    """Problems AWS would report for this definition (empty: valid as far as these checks go).

    Checks: no `${...}` placeholder is left unsubstituted; StartAt names a state; every Next and
    Catch Next, every Choice rule's Next and Default names a state; every state is a Task, Pass,
    Choice, Succeed or Fail, reachable, and on a path that ends (Succeed, Fail or End: true); a Task
    or Pass state has Next or End, a Choice state non-empty Choices and neither; States.ALL is in the last
    retrier or catcher; then whatever moto's parser refuses."""
    if not isinstance(definition, dict):
        return ["the definition is not a JSON object"]
    problems = [
        f"{path}: unresolved placeholder {match[0]} (no DefinitionSubstitutions entry)"
        for path, text in _strings(definition, "$")
        for match in PLACEHOLDER.finditer(text)
    ]
    if definition.get("QueryLanguage") == "JSONata":
        problems.append("QueryLanguage JSONata: moto's interpreter runs JSONPath only")
    states, start = definition.get("States"), definition.get("StartAt")
    if not isinstance(states, dict) or not states:
        return [*problems, "definition: States must be a non-empty object"]
    if not isinstance(start, str) or not start:
        problems.append("definition: StartAt is missing")
    elif start not in states:
        problems.append(f"definition: StartAt names state {start!r}, which does not exist")
    edges = {name: _check_state(name, state, states, problems) for name, state in states.items()}
    if isinstance(start, str) and start in states:
        ends = {
            n
            for n, st in states.items()
            if isinstance(st, dict) and (st.get("Type") in _TERMINAL_TYPES or st.get("End"))
        }
        reachable, can_end, grown = _closure([start], edges), ends, True
        while grown:  # walk the edges backwards from the ends
            grown = {name for name, targets in edges.items() if name not in can_end and can_end.intersection(targets)}
            can_end |= grown
        for name in states:
            if name not in reachable:
                problems.append(f"States.{name}: not reachable from StartAt {start!r}")
            elif name not in can_end:
                problems.append(f"States.{name}: no path from here ends (in Succeed, Fail or End: true)")
    if not problems:  # the parser stops at its first error, and reads a placeholder as a missing Resource
        from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser, ASLParserException

        try:
            AmazonStateLanguageParser.parse(json.dumps(definition, indent=2))  # its errors give lines of that text
        except (ValueError, ASLParserException) as error:
            problems += [f"definition: {reason}" for reason in getattr(error, "errors", [error])]
    return problems


def _check_state(name: str, state: Any, states: Mapping[str, Any], problems: list[str]) -> list[str]:
    """Adds one state's problems; returns the states it can go to."""
    path = f"States.{name}"
    kind = state.get("Type") if isinstance(state, dict) else None
    if kind not in ("Task", "Pass", "Choice", *_TERMINAL_TYPES):
        problems.append(
            f"{path}.Type: {kind!r} is not checked locally (only Choice, Fail, Pass, Succeed, Task: "
            "add its checks to infra/asl.py first)"
        )
        return []
    if len(name) > 80:
        problems.append(f"{path}: state names are at most 80 characters")
    problems += [
        f"{path}.{field}: only Task states may {field.lower()}"
        for field in ("Retry", "Catch")
        if field in state and kind != "Task"
    ]
    if kind in ("Task", "Pass") and "Next" not in state and not state.get("End"):
        problems.append(f"{path}: needs Next or End: true")
    named = {"Next": state.get("Next")}
    if kind == "Choice":
        rules = state.get("Choices")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{path}.Choices: needs a non-empty list of rules")
            rules = []
        if "Next" in state or "End" in state:
            problems.append(f"{path}: a Choice state goes on by its rules and Default, never Next or End")
        named["Default"] = state.get("Default")
        for index, rule in enumerate(rules):
            named[f"Choices[{index}].Next"] = rule.get("Next", "") if isinstance(rule, dict) else ""
    for field in ("Retry", "Catch"):
        entries = state.get(field) if isinstance(state.get(field), list) else []
        for index, entry in enumerate(entries):
            errors = entry.get("ErrorEquals") if isinstance(entry, dict) else None
            if isinstance(errors, list) and "States.ALL" in errors and index != len(entries) - 1:
                problems.append(f"{path}.{field}[{index}].ErrorEquals: States.ALL must be alone and in the last entry")
            if field == "Catch" and isinstance(entry, dict):
                named[f"Catch[{index}].Next"] = entry.get("Next")
    targets = []
    for field, target in named.items():
        if target is None:
            continue
        if isinstance(target, str) and target in states:
            targets.append(target)
        else:
            problems.append(f"{path}.{field}: names state {target!r}, which does not exist")
    return targets


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and PLACEHOLDER.search(key):
                yield f"{path} (key)", key
            yield from _strings(item, f"{path}.{key}")


def _closure(seeds: Iterable[str], edges: Mapping[str, list[str]]) -> set[str]:
    """The seeds and every state the edges lead to from them."""
    seen, stack = set(seeds), list(seeds)
    while stack:
        for following in edges.get(stack.pop(), []):
            if following not in seen:
                seen.add(following)
                stack.append(following)
    return seen

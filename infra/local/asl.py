"""Amazon States Language: DefinitionSubstitutions, and the checks AWS makes of a definition that moto does not.

moto accepts a dangling `Next` and an unreachable state (its ValidateStateMachineDefinition is not
implemented); AWS refuses both at deploy time. `validate_asl` finds them before a state machine is
created locally and before `make test` passes a template (infra/check_template.py). Only the state
types the workflows use (Task, Succeed, Fail) are checked; any other is reported, so a workflow cannot
grow past what these checks cover without them growing too. Pure: no moto, no boto3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_TERMINAL_TYPES = {"Succeed", "Fail"}  # end a path by themselves
# Retrier field -> (its minimum, the types it may have, what it must be)
_RETRY_NUMBERS = {
    "IntervalSeconds": (1, int, "an integer >= 1"),
    "MaxAttempts": (0, int, "an integer >= 0"),
    "BackoffRate": (1, int | float, "a number >= 1.0"),
    "MaxDelaySeconds": (1, int, "an integer >= 1"),
}


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

    Checks: StartAt names a state; every Next and Catch Next names a state; every state is
    reachable and every path can end (Succeed, Fail or End: true); every state is a Task, Succeed
    or Fail; Task has a Resource; Retry/Catch are lists whose ErrorEquals are non-empty lists of
    names, with States.ALL alone and last; Retry numbers in range; no `${...}` placeholder is left
    unsubstituted."""
    if not isinstance(definition, dict):
        return ["the definition is not a JSON object"]
    problems = [
        f"{path}: unresolved placeholder {match[0]} (no DefinitionSubstitutions entry)"
        for path, text in _strings(definition, "$")
        for match in PLACEHOLDER.finditer(text)
    ]
    if definition.get("QueryLanguage") == "JSONata":
        problems.append("QueryLanguage JSONata: moto's interpreter runs JSONPath only")
    states = definition.get("States")
    if not isinstance(states, dict) or not states:
        return [*problems, "definition: States must be a non-empty object"]
    start = definition.get("StartAt")
    if not isinstance(start, str) or not start:
        problems.append("definition: StartAt is missing")
    elif start not in states:
        problems.append(f"definition: StartAt names state {start!r}, which does not exist")
    edges = {name: _check_state(name, state, states, problems) for name, state in states.items()}
    if isinstance(start, str) and start in states:
        ends = {
            name
            for name, state in states.items()
            if isinstance(state, dict) and (state.get("Type") in _TERMINAL_TYPES or state.get("End") is True)
        }
        reverse: dict[str, list[str]] = {}
        for source, targets in edges.items():
            for target in targets:
                reverse.setdefault(target, []).append(source)
        reachable, can_end = _closure([start], edges), _closure(ends, reverse)
        for name in states:
            if name not in reachable:
                problems.append(f"States.{name}: not reachable from StartAt {start!r}")
            elif name not in can_end:
                problems.append(f"States.{name}: no path from here ends (in Succeed, Fail or End: true)")
    return problems


def _check_state(name: str, state: Any, states: Mapping[str, Any], problems: list[str]) -> list[str]:
    """Adds one state's problems; returns the states it can go to."""
    path, targets = f"States.{name}", []
    if not isinstance(state, dict):
        problems.append(f"{path}: not an object")
        return targets
    kind = state.get("Type")
    if kind not in ("Task", *_TERMINAL_TYPES):
        problems.append(
            f"{path}.Type: {kind!r} is not checked locally (only Fail, Succeed, Task: "
            "add its checks to infra/local/asl.py first)"
        )
        return targets

    def target(field: str, value: Any) -> None:
        if not isinstance(value, str) or not value:
            problems.append(f"{path}.{field}: must name a state")
        elif value not in states:
            problems.append(f"{path}.{field}: names state {value!r}, which does not exist")
        else:
            targets.append(value)

    if len(name) > 80:
        problems.append(f"{path}: state names are at most 80 characters")
    if kind in _TERMINAL_TYPES:
        problems += [f"{path}: a {kind} state may not have {field}" for field in ("Next", "End") if field in state]
    else:
        if ("Next" in state) == (state.get("End") is True):
            problems.append(f"{path}: has both Next and End" if "Next" in state else f"{path}: needs Next or End: true")
        if "Next" in state:
            target("Next", state["Next"])
    if kind == "Task":
        resource = state.get("Resource")
        if not isinstance(resource, str) or not resource:
            problems.append(f"{path}.Resource: missing")
        elif not resource.startswith("arn:") and not PLACEHOLDER.search(resource):  # placeholders: reported once
            problems.append(f"{path}.Resource: {resource!r} is not an ARN")

    for field in ("Retry", "Catch"):
        entries = state.get(field)
        if entries is None:
            continue
        if kind != "Task":
            problems.append(f"{path}.{field}: only Task states may {field.lower()}")
        if not isinstance(entries, list):
            problems.append(f"{path}.{field}: must be a list")
            continue
        for index, entry in enumerate(entries):
            where = f"{path}.{field}[{index}]"
            if not isinstance(entry, dict):
                problems.append(f"{where}: not an object")
                continue
            errors = entry.get("ErrorEquals")
            if not isinstance(errors, list) or not errors:
                problems.append(f"{where}.ErrorEquals: must be a non-empty list of error names")
            else:
                if not all(isinstance(error, str) and error for error in errors):
                    problems.append(f"{where}.ErrorEquals: every entry must be an error name")
                if "States.ALL" in errors and (len(errors) != 1 or index != len(entries) - 1):
                    problems.append(f"{where}.ErrorEquals: States.ALL must be alone and in the last entry")
            if field == "Catch" and "Next" not in entry:
                problems.append(f"{where}: needs Next")
            elif field == "Catch":
                target(f"Catch[{index}].Next", entry["Next"])
            for key, (minimum, types, must_be) in _RETRY_NUMBERS.items() if field == "Retry" else ():
                value = entry.get(key, minimum)
                if not isinstance(value, types) or isinstance(value, bool) or value < minimum:
                    problems.append(f"{where}.{key}: must be {must_be}")
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

"""Amazon States Language: DefinitionSubstitutions and the checks moto (and statelint) do not make.

moto accepts a dangling `Next` and an unreachable state, and its ValidateStateMachineDefinition is
not implemented; AWS rejects both at deploy time. `validate_asl` finds those before a state machine
is created locally and before `make test` passes a template (infra/check_template.py).

Only the state types the workflows use (Task, Succeed, Fail) are checked; any other type is
reported, so a workflow cannot grow past what these checks cover without them growing too.
Pure: no moto, no boto3; `render` and `validate_asl` are all the template check needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")

_STATE_TYPES = {"Task", "Succeed", "Fail"}
_TERMINAL_TYPES = {"Succeed", "Fail"}  # end a path by themselves


class AslError(ValueError):
    """A state machine definition that AWS would refuse (or that could not be read)."""

    def __init__(self, name: str, problems: list[str]):
        self.name = name
        self.problems = problems
        super().__init__(f"state machine {name}: invalid definition:\n  - " + "\n  - ".join(problems))


# --- Reading and substituting -----------------------------------------------------------------------


def substitute(value: Any, substitutions: Mapping[str, Any]) -> Any:
    """Replaces `${Name}` in every string (keys included) with its DefinitionSubstitutions value, as
    text: SAM and CloudFormation substitute in the definition's text, so values are always strings.
    Names without a substitution stay as they are (validate_asl reports them)."""
    if isinstance(value, str):
        return PLACEHOLDER.sub(
            lambda match: str(substitutions[match.group(1)]) if match.group(1) in substitutions else match.group(0),
            value,
        )
    if isinstance(value, list):
        return [substitute(item, substitutions) for item in value]
    if isinstance(value, dict):
        return {substitute(key, substitutions): substitute(item, substitutions) for key, item in value.items()}
    return value


def render(definition: Any, substitutions: Mapping[str, Any]) -> dict[str, Any]:
    """A definition (parsed, or JSON text as in DefinitionString) with its substitutions applied."""
    if isinstance(definition, str):
        return json.loads(substitute(definition, substitutions))
    return substitute(definition, substitutions)


# --- Validation -------------------------------------------------------------------------------------


def validate_asl(definition: Any) -> list[str]:
    """Problems AWS would report for this definition (empty: valid as far as these checks go).

    Checks: StartAt names a state; every Next and Catch Next names a state; every state is
    reachable and every path can end (Succeed, Fail or End: true); every state is a Task, Succeed
    or Fail; Task has a Resource; Retry/Catch are lists whose ErrorEquals are non-empty lists of
    names, with States.ALL alone and last; Retry numbers in range; no `${...}` placeholder is left
    unsubstituted."""
    problems: list[str] = []
    if not isinstance(definition, dict):
        return ["the definition is not a JSON object"]
    for path, text in _strings(definition, "$"):
        for match in PLACEHOLDER.finditer(text):
            problems.append(f"{path}: unresolved placeholder {match.group(0)} (no DefinitionSubstitutions entry)")
    if definition.get("QueryLanguage") == "JSONata":
        problems.append("QueryLanguage JSONata: moto's interpreter runs JSONPath only")
    _validate_machine(definition, problems)
    return problems


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


def _validate_machine(machine: Mapping[str, Any], problems: list[str]) -> None:
    where = "definition"
    states = machine.get("States")
    if not isinstance(states, dict) or not states:
        problems.append(f"{where}: States must be a non-empty object")
        return
    start = machine.get("StartAt")
    if not isinstance(start, str) or not start:
        problems.append(f"{where}: StartAt is missing")
    elif start not in states:
        problems.append(f"{where}: StartAt names state {start!r}, which does not exist")

    edges: dict[str, list[str]] = {}
    ends: set[str] = set()
    for name, state in states.items():
        path = f"States.{name}"
        if not isinstance(state, dict):
            problems.append(f"{path}: not an object")
            continue
        targets = _validate_state(name, state, path, states, problems)
        edges[name] = [target for target in targets if target in states]
        state_type = state.get("Type")
        if state_type in _TERMINAL_TYPES or state.get("End") is True:
            ends.add(name)

    if isinstance(start, str) and start in states:
        reachable = _reachable(start, edges)
        for name in states:
            if name not in reachable:
                problems.append(f"States.{name}: not reachable from StartAt {start!r}")
        can_end = _can_reach(ends, edges)
        for name in states:
            if name in reachable and name not in can_end:
                problems.append(f"States.{name}: no path from here ends (in Succeed, Fail or End: true)")


def _validate_state(
    name: str, state: Mapping[str, Any], path: str, states: Mapping[str, Any], problems: list[str]
) -> list[str]:
    """Problems of one state; returns the names it can transition to."""
    state_type = state.get("Type")
    targets: list[str] = []

    def target(field: str, value: Any) -> None:
        if not isinstance(value, str) or not value:
            problems.append(f"{path}.{field}: must name a state")
        elif value not in states:
            problems.append(f"{path}.{field}: names state {value!r}, which does not exist")
        targets.append(value if isinstance(value, str) else "")

    if state_type not in _STATE_TYPES:
        problems.append(
            f"{path}.Type: {state_type!r} is not checked locally (only {', '.join(sorted(_STATE_TYPES))}: "
            "add its checks to infra/local/asl.py first)"
        )
        return targets
    if len(name) > 80:
        problems.append(f"{path}: state names are at most 80 characters")

    if state_type in _TERMINAL_TYPES:
        for field in ("Next", "End"):
            if field in state:
                problems.append(f"{path}: a {state_type} state may not have {field}")
    else:
        has_next, ends = "Next" in state, state.get("End") is True
        if has_next and ends:
            problems.append(f"{path}: has both Next and End")
        elif not has_next and not ends:
            problems.append(f"{path}: needs Next or End: true")
        if has_next:
            target("Next", state["Next"])

    if state_type == "Task":
        resource = state.get("Resource")
        if not isinstance(resource, str) or not resource:
            problems.append(f"{path}.Resource: missing")
        elif not resource.startswith("arn:") and not PLACEHOLDER.search(resource):  # placeholders: reported once
            problems.append(f"{path}.Resource: {resource!r} is not an ARN")

    if "Retry" in state:
        if state_type != "Task":
            problems.append(f"{path}.Retry: only Task states may retry")
        _validate_retriers(state["Retry"], f"{path}.Retry", problems)
    if "Catch" in state:
        if state_type != "Task":
            problems.append(f"{path}.Catch: only Task states may catch")
        catchers = state["Catch"]
        _validate_error_lists(catchers, f"{path}.Catch", problems)
        if isinstance(catchers, list):
            for index, catcher in enumerate(catchers):
                if isinstance(catcher, dict):
                    if "Next" not in catcher:
                        problems.append(f"{path}.Catch[{index}]: needs Next")
                    else:
                        target(f"Catch[{index}].Next", catcher["Next"])
    return targets


def _validate_error_lists(entries: Any, path: str, problems: list[str]) -> None:
    if not isinstance(entries, list):
        problems.append(f"{path}: must be a list")
        return
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{path}[{index}]: not an object")
            continue
        errors = entry.get("ErrorEquals")
        if not isinstance(errors, list) or not errors:
            problems.append(f"{path}[{index}].ErrorEquals: must be a non-empty list of error names")
            continue
        if not all(isinstance(error, str) and error for error in errors):
            problems.append(f"{path}[{index}].ErrorEquals: every entry must be an error name")
        if "States.ALL" in errors and (len(errors) != 1 or index != len(entries) - 1):
            problems.append(f"{path}[{index}].ErrorEquals: States.ALL must be alone and in the last entry")


def _validate_retriers(retriers: Any, path: str, problems: list[str]) -> None:
    _validate_error_lists(retriers, path, problems)
    if not isinstance(retriers, list):
        return
    for index, retrier in enumerate(retriers):
        if not isinstance(retrier, dict):
            continue
        interval = retrier.get("IntervalSeconds", 1)
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            problems.append(f"{path}[{index}].IntervalSeconds: must be an integer >= 1")
        attempts = retrier.get("MaxAttempts", 3)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            problems.append(f"{path}[{index}].MaxAttempts: must be an integer >= 0")
        backoff = retrier.get("BackoffRate", 2.0)
        if not isinstance(backoff, int | float) or isinstance(backoff, bool) or backoff < 1:
            problems.append(f"{path}[{index}].BackoffRate: must be a number >= 1.0")
        max_delay = retrier.get("MaxDelaySeconds")
        if max_delay is not None and (not isinstance(max_delay, int) or isinstance(max_delay, bool) or max_delay < 1):
            problems.append(f"{path}[{index}].MaxDelaySeconds: must be an integer >= 1")


def _reachable(start: str, edges: Mapping[str, list[str]]) -> set[str]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in edges.get(stack.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _can_reach(ends: set[str], edges: Mapping[str, list[str]]) -> set[str]:
    """The states from which some end state is reachable (walking the edges backwards)."""
    reverse: dict[str, list[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            reverse.setdefault(target, []).append(source)
    seen, stack = set(ends), list(ends)
    while stack:
        for previous in reverse.get(stack.pop(), []):
            if previous not in seen:
                seen.add(previous)
                stack.append(previous)
    return seen

"""The suite's hypothesis state machines, as `make test` and `make fuzz` run them.

`make test` runs each with `in_make_test(...)`: derandomized, the same steps on every run and
machine (drawn from a seed hashed from the test, no example database replayed before them), so a
failure there is reproduced by running it again and the suite's time is bounded. Each has a
`fuzz`-marked twin run `at_length(...)`: random examples, a new run each time (`make fuzz`;
OMS_STATEFUL_EXAMPLES and OMS_STATEFUL_STEPS search longer)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Verbosity, settings
from hypothesis.reporting import with_reporter
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


def at_length(examples: int, steps: int) -> settings:
    """What `make fuzz` runs: `examples` random examples of `steps` steps, unless the environment
    says more (OMS_STATEFUL_EXAMPLES, OMS_STATEFUL_STEPS)."""
    return settings(
        max_examples=int(os.environ.get("OMS_STATEFUL_EXAMPLES", examples)),
        stateful_step_count=int(os.environ.get("OMS_STATEFUL_STEPS", steps)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        report_multiple_bugs=False,  # a failure shrinks one bug, not every distinct one
    )


def in_make_test(examples: int, steps: int) -> settings:
    """What `make test` runs: the same `examples` examples of `steps` steps every time."""
    return settings(at_length(examples, steps), max_examples=examples, stateful_step_count=steps, derandomize=True)


def steps_drawn(machine: type[RuleBasedStateMachine], run_settings: settings) -> list[str]:
    """Each step a run of `machine` under `run_settings` took, as hypothesis prints a failing
    example's steps (`state.place(pickup=False, quantity=2)`, `Draw 1: 3` for what a rule drew
    itself), every example's in turn."""
    lines: list[Any] = []
    with with_reporter(lines.append):
        run_state_machine_as_test(machine, settings=settings(run_settings, verbosity=Verbosity.debug))
    return [line for line in map(str, lines) if line.startswith(("state.", "Draw "))]

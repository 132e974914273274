"""The `batch_package` patch: moto's Step Functions interpreter imports `moto.batch.utils` (the job
states of its Batch task), and `moto/batch/__init__.py` imports moto's Batch models and with them
all of moto.ec2 and moto.ecs: ~0.6 s of CPU (2026-12-06: 0.61 to 0.65 s, moto's core and Step
Functions models imported before it) in every process that runs a state machine, `make run`'s start
among them. The template uses no Batch.

While applied, moto.batch's own body runs at the first read of one of its names (moto's
`get_backend("batch")` reads `batch_backends`), not when the interpreter imports its submodule
(`MotoPatch.deferred`). The stack applies it before anything imports the interpreter (the
`asl_parse` patch imports it in its replacements)."""

from __future__ import annotations

from infra.local.moto_patches import AppliedBy, MotoPatch

PATCH = MotoPatch(
    "batch_package",
    applied_by=AppliedBy.STACK | AppliedBy.TEST_PROCESS,
    changes="moto.batch's own body (moto's Batch models, which import all of moto.ec2 and moto.ecs) runs "
    "at the first read of one of its names, not when the Step Functions interpreter imports "
    "moto.batch.utils (~0.6 s of CPU per process that runs a state machine).",
    expects={},  # it replaces no attribute: its canary is test_canary_moto_s_interpreter_imports_only_batch_s_utils...
    replacements=dict,
    deferred=("moto.batch",),
)

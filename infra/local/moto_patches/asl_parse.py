"""The `asl_parse` patch: moto's ASL interpreter lexes and parses a state machine's definition again
for every execution it starts (`ExecutionWorker._get_evaluation_entrypoint` calls
`AmazonStateLanguageParser.parse`): for the order workflow, ~28 ms of CPU in ANTLR per execution.

The parse tree of a definition is kept (only a definition that parsed and preprocessed without
error; the few most recently used) and visited again into a new program for every call, as moto's
parse does, so nothing an execution's evaluation holds is shared. Sharing the tree is safe: moto
reads it and never changes it (no setter on it outside ANTLR's own parse, no component keeps a node
of it; tests/integration/test_moto_patches_asl_parse.py checks the latter). A tree depends on the
definition's text alone, so the trees are kept for the process, across stacks (~0.6 MB each)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

# The template has two state machines; a test process creates a few more of its own.
KEPT_TREES = 8


@functools.lru_cache(maxsize=KEPT_TREES)  # the least recently used dropped first
def _kept_tree(parse: Callable[[str], tuple[Any, Any]], definition: str) -> Any:
    return parse(definition)[1]  # a definition that does not parse raises here, as before, and is not kept


def _replacements() -> Replacements:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    parse = AmazonStateLanguageParser.__dict__["parse"].__func__

    def kept_parse(definition: str) -> tuple[Any, Any]:
        tree = _kept_tree(parse, definition)
        return Preprocessor().visit(tree), tree  # what moto's parse returns after its syntax check

    return {(AmazonStateLanguageParser, "parse"): staticmethod(kept_parse)}


PATCH = MotoPatch(
    "asl_parse",
    applied_by=AppliedBy.STACK,
    changes="Step Functions executions of a definition already parsed visit its kept ANTLR parse tree into "
    "a new program instead of lexing and parsing the definition again (~28 ms of CPU per order workflow "
    "execution).",
    expects={"moto.stepfunctions.parser.asl.parse.asl_parser.AmazonStateLanguageParser.parse": "(definition)"},
    replacements=_replacements,
)

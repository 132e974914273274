"""The `asl_parse` patch: moto's ASL interpreter lexes and parses a state machine's definition again
for every execution it starts (`ExecutionWorker._get_evaluation_entrypoint` calls
`AmazonStateLanguageParser.parse`): for the order workflow, ~27 ms of CPU in ANTLR per execution.

The parse tree of a definition is kept (only a definition that parsed and preprocessed without
error; the few most recently used) and visited again into a new program for every call, as moto's
parse does, so nothing an execution's evaluation holds is shared. Sharing the tree is safe: moto
reads it and never changes it (no setter on it outside ANTLR's own parse, no component keeps a node
of it; tests/integration/test_moto_patches.py checks the latter).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from infra.local.moto_patches import MotoPatch, Replacements

# The template has two state machines; a test process creates a few more of its own.
KEPT_TREES = 8


def _replacements() -> Replacements:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    parse = AmazonStateLanguageParser.__dict__["parse"].__func__
    trees: OrderedDict[str, Any] = OrderedDict()  # definition -> its tree; this installation's own
    guard = threading.Lock()

    def kept_parse(definition: str) -> tuple[Any, Any]:
        with guard:
            tree = trees.get(definition)
            if tree is not None:
                trees.move_to_end(definition)
        if tree is not None:
            return Preprocessor().visit(tree), tree  # what moto's parse returns after its syntax check
        program, tree = parse(definition)  # a definition that does not parse raises here, as before
        with guard:
            trees[definition] = tree
            while len(trees) > KEPT_TREES:
                trees.popitem(last=False)
        return program, tree

    return {(AmazonStateLanguageParser, "parse"): staticmethod(kept_parse)}


PATCH = MotoPatch(
    "asl_parse",
    changes="Step Functions executions of a definition already parsed visit its kept ANTLR parse tree into "
    "a new program instead of lexing and parsing the definition again (~27 ms of CPU per order workflow "
    "execution).",
    expects={"moto.stepfunctions.parser.asl.parse.asl_parser.AmazonStateLanguageParser.parse": "(definition)"},
    replacements=_replacements,
)

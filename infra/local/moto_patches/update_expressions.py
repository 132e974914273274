"""The `update_expressions` patch: moto tokenizes and parses a DynamoDB UpdateExpression again at
every UpdateItem (twice: its request handler parses it to check the names and values used, its
backend parses it again) and at every Update of a TransactWriteItems; its validator's ten
passes over the tree rebuild each pass's dict of node types at every node they visit; and its
clause count pass searches the whole subtree of every nested UpdateExpression (each clause and
action is one) three times, quadratic in the expression's length.

Profiled in tests/integration/test_dynamodb_adapters.py (cProfile, so call-heavy code is
overstated): `UpdateExpressionParser.make` was 6.5 % of the file's time, the validator's walks
17 %, of which `nodes_to_be_processed` and `process` rebuilding `_processing_map()` at every node
were a quarter, and the clause count's `find_clauses` 5.5 %. With the patch an UpdateItem of five
actions (SET with arithmetic and list_append, REMOVE, ADD, a condition) took 8.7-8.9 ms of CPU
instead of 10.6-10.7 ms.

- The tree of an expression is kept, by its text (the few thousand most recent), and handed out
  again: moto reads it (`find_clauses`) and its `Validator` deep-copies it before any pass changes
  anything (tests/integration/test_moto_patches.py checks both still hold). An expression that does
  not parse raises as before and is not kept.
- A pass (`DepthFirstTraverser`, a new one per validation) builds its `_processing_map()` once and
  reads it at every node: each of moto's maps is a literal dict of the pass's own bound methods.
- The clause count pass (`ActionCountValidator`) counts each node's ADD, REMOVE and SET clauses
  from its children's counts, as `find_clauses` counts them, and refuses at the same node with the
  same clause as moto (its children first; ADD, then REMOVE, then SET).
- The validator's copy of a tree (`copy.deepcopy`, once per UpdateItem) copies each node as
  deepcopy does (a new object of its class, its attributes copied under the same memo, its parent
  found there) without deepcopy's generic `__reduce_ex__`/`_reconstruct` round per node; lists and
  strings as deepcopy copies them, anything else by deepcopy itself.
- A pass's walk (`traverse_node_recursively`, ten per UpdateItem) asks whether a node is a Node and
  one its pass processes once per node type (moto's Node is an ABC: each `isinstance` went through
  ABCMeta, for every type in the pass's tuple, at every node), and calls `pre_processing_of_child`
  only for a pass that has one of its own (moto's is a no-op).

Profiled with py-spy in tests/integration/test_dynamodb_adapters.py, test_reconciler.py and
test_reorder_points.py: the validator's copy was 9.0, 4.2 and 2.1 % of the files' CPU, its walks
12.4, 6.4 and 5.1 %.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

from infra.local.moto_patches import AppliedBy, MotoPatch, Replacements

# The OMS writes a few dozen distinct expressions; a test process writes a few hundred more.
KEPT_EXPRESSIONS = 4_096


@functools.lru_cache(maxsize=KEPT_EXPRESSIONS)  # the least recently used dropped first
def _kept_tree(make: Callable[[type, str], Any], parser: type, expression: str) -> Any:
    return make(parser, expression)  # an expression that does not parse raises here, as before, and is not kept


def forget() -> None:
    """Drop every kept tree (tests)."""
    _kept_tree.cache_clear()


def _replacements() -> Replacements:
    from moto.dynamodb.exceptions import TooManyClauses
    from moto.dynamodb.parsing.ast_nodes import (
        DepthFirstTraverser,
        Expression,
        Node,
        UpdateExpressionAddClause,
        UpdateExpressionFunction,
        UpdateExpressionRemoveClause,
        UpdateExpressionSetClause,
    )
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser
    from moto.dynamodb.parsing.validators import ActionCountValidator

    make = UpdateExpressionParser.__dict__["make"].__func__

    def kept_make(cls: type, expression_str: Any) -> Any:
        if cls is not UpdateExpressionParser or type(expression_str) is not str:
            return make(cls, expression_str)
        return _kept_tree(make, cls, expression_str)

    def kind(self: Any, node: Any) -> tuple[bool, Any]:
        """For `node`'s type, this pass's answers as moto's walk asks them, kept per type: is it a
        Node, and the processor of the first key of the pass's map (built once) it is an instance of
        (None: the pass does not process it)."""
        kinds = self.__dict__.get("_oms_kinds")
        if kinds is None:
            kinds = self.__dict__["_oms_kinds"] = {}
        found = kinds.get(type(node))
        if found is None:
            processing = self.__dict__.get("_oms_processing_map")
            if processing is None:
                processing = self.__dict__["_oms_processing_map"] = self._processing_map()
            key = next((class_key for class_key in processing if isinstance(node, class_key)), None)
            found = kinds[type(node)] = (isinstance(node, Node), None if key is None else processing[key])
        return found

    no_pre_processing = DepthFirstTraverser.__dict__["pre_processing_of_child"]

    def traverse_node_recursively(self: Any, node: Any, child_id: int = -1) -> Any:
        is_node, processor = kind(self, node)
        if is_node:
            parent_node = node.parent
            children = node.children
            if children is not None:
                if type(self).pre_processing_of_child is no_pre_processing:
                    for i, child_node in enumerate(children):
                        self.traverse_node_recursively(child_node, i)
                else:
                    for i, child_node in enumerate(children):
                        self.pre_processing_of_child(node, i)
                        self.traverse_node_recursively(child_node, i)
            if processor is not None:
                node = processor(node)
                node.parent = parent_node
                if parent_node:
                    parent_node.children[child_id] = node
        return node

    node_types: dict[type, bool] = {}

    def copied(value: Any, memo: dict[int, Any]) -> Any:
        kind = type(value)
        if kind is str or value is None:
            return value
        if kind is list:
            found = memo.get(id(value))
            if found is None:
                found = memo[id(value)] = []
                found.extend([copied(item, memo) for item in value])
            return found
        is_node = node_types.get(kind)
        if is_node is None:
            is_node = node_types[kind] = issubclass(kind, Node)
        return node_copy(value, memo) if is_node else copy.deepcopy(value, memo)

    def node_copy(self: Any, memo: dict[int, Any] | None = None) -> Any:
        memo = {} if memo is None else memo
        found = memo.get(id(self))
        if found is not None:
            return found
        kind = type(self)
        twin = memo[id(self)] = kind.__new__(kind)
        twin.__dict__.update({name: copied(value, memo) for name, value in self.__dict__.items()})
        return twin

    clauses = (
        (UpdateExpressionAddClause, "ADD"),
        (UpdateExpressionRemoveClause, "REMOVE"),
        (UpdateExpressionSetClause, "SET"),
    )

    def clause_count(counts: dict[tuple[int, type], int], node: Any, clause: type) -> int:
        """len(node.find_clauses([clause])), from the counts of its children already counted (the
        pass visits the children first and keeps the tree for its whole walk)."""
        key = (id(node), clause)
        found = counts.get(key)
        if found is None:
            found = 0
            for child in node.children or []:
                if type(child) is clause:
                    found += 1
                elif isinstance(child, Expression | UpdateExpressionFunction):
                    found += clause_count(counts, child, clause)
            counts[key] = found
        return found

    def verify_action_counts(self: Any, node: Any) -> Any:
        counts = self.__dict__.setdefault("_oms_clause_counts", {})
        for clause, name in clauses:
            if clause_count(counts, node, clause) > 1:
                raise TooManyClauses(name)
        return node

    return {
        (UpdateExpressionParser, "make"): classmethod(kept_make),
        (DepthFirstTraverser, "traverse_node_recursively"): traverse_node_recursively,
        (Node, "__deepcopy__"): node_copy,
        (ActionCountValidator, "verify_action_counts"): verify_action_counts,
    }


PATCH = MotoPatch(
    "update_expressions",
    applied_by=AppliedBy.STACK | AppliedBy.MOCK_AWS,
    changes="DynamoDB UpdateExpressions already parsed are read from their kept tree instead of being "
    "tokenized and parsed again (moto parses each one twice per UpdateItem; its validator works on a copy "
    "of the tree), each validation pass builds its map of node types once instead of at every node it "
    "visits, and the clause count pass counts each node's clauses from its children's counts instead of "
    "searching every nested expression's subtree again (an UpdateItem of five actions: 17 % less CPU); "
    "the validator's copy of a tree copies its nodes without deepcopy's generic round per node, and each pass "
    "asks whether a node is one it processes once per node type, not through ABCMeta at every node.",
    expects={
        "moto.dynamodb.parsing.expressions.UpdateExpressionParser.make": "(cls, expression_str)",
        "moto.dynamodb.parsing.ast_nodes.DepthFirstTraverser.traverse_node_recursively": "(self, node, child_id=-1)",
        "moto.dynamodb.parsing.ast_nodes.Node.__deepcopy__": "missing",
        "moto.dynamodb.parsing.validators.ActionCountValidator.verify_action_counts": "(self, node)",
    },
    replacements=_replacements,
)

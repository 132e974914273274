"""No status is spelt as a string outside its enum (STYLE.md: "no status string appears anywhere else"):
checked by reading core/, functions/ and plugins/ (their tests aside).

A status enum is any `class ...Status(StrEnum)` in core/. A literal equal to one of their values is
an offence where it stands for a status: compared (`==`, `in`, `case`), a set of them, a dict keyed
by them, given to a `status` keyword, field or variable, or a status read's default. A literal that
only happens to equal a status (a counter named `failed`, a gateway's `declined` outcome) is written
in ALLOWED, with why."""

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("core", "functions", "plugins")

# (file, what the literal is compared with or given to, the literal): strings that equal a status
# and mean something else. Each entry must still match something (test_every_allowance_is_used).
ALLOWED: dict[tuple[str, str, str], str] = {
    ("core/payments.py", "result.outcome", "declined"): (
        "the gateway's answer (PaymentResult.outcome: approved, declined, transient_error), not a payment status"
    ),
    ("core/tracking.py", "update.status", "delivered"): (
        "a carrier's tracking update (TrackingUpdate.status: in_transit, delivered), not a shipment status"
    ),
}


# status_values and findings read the tree once per test process (the source does not change while
# the tests run): findings parses and walks every file of core/, functions/ and plugins/, 4-15 s on a
# loaded machine, and two tests asked for it; four asked for status_values. What each test checks is
# unchanged.
@functools.cache
def status_values(root: Path = ROOT) -> frozenset[str]:
    """The values of every status enum of core/ (read from the source, so a new one is covered)."""
    values = set()
    for path in sorted((root / "core").rglob("*.py")):
        for node in _nodes(_tree(path)):
            if not (isinstance(node, ast.ClassDef) and node.name.endswith("Status")):
                continue
            if not any(isinstance(base, ast.Name) and base.id == "StrEnum" for base in node.bases):
                continue
            for statement in node.body:
                if isinstance(statement, ast.Assign) and _is_str(statement.value):
                    values.add(statement.value.value)
    return frozenset(values)


@functools.cache
def _tree(path: Path) -> ast.Module:
    """`path` parsed, once per test process: status_values and findings both read core/ (two thirds
    of the source scanned), and parsing is most of what the check costs. Nothing changes a tree."""
    return ast.parse(path.read_text(), filename=str(path))


def _is_str(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _names_a_status(name: str) -> bool:
    return "status" in name.lower() or name == "resume_to"


def _mentions_a_status(node: ast.AST) -> bool:
    """Whether `node` reads a status: a name, attribute or key that says so."""
    for part in ast.walk(node):
        if isinstance(part, ast.Name) and _names_a_status(part.id):
            return True
        if isinstance(part, ast.Attribute) and _names_a_status(part.attr):
            return True
        if _is_str(part) and _names_a_status(part.value):
            return True
    return False


def _nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree`, in ast.walk's order (breadth first), listed once: offences goes over
    them three times, and ast.walk's generator (iter_child_nodes, iter_fields) took most of the
    4-15 s the tree's check cost."""
    nodes, index = [tree], 0
    while index < len(nodes):
        node = nodes[index]
        index += 1
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast.AST):
                nodes.append(value)
            elif isinstance(value, list):
                nodes.extend(item for item in value if isinstance(item, ast.AST))
    return nodes


# The nodes a status literal is looked for in (each of offences' branches), and an operand of a comparison.
_CHECKED = frozenset(
    {ast.Compare, ast.MatchValue, ast.Set, ast.Tuple, ast.List, ast.Dict, ast.Call, ast.BoolOp, ast.Assign,
     ast.AnnAssign, ast.arguments}
)  # fmt: skip


def offences(source: str | ast.Module, values: frozenset[str]) -> Iterator[tuple[int, str, str]]:
    """(line, what the literal meets, the literal) for each status spelt as a string in `source`
    (its text, or the text parsed)."""
    nodes = _nodes(ast.parse(source) if isinstance(source, str) else source)
    in_literal_types = {
        id(part)
        for node in nodes
        if isinstance(node, ast.Subscript) and ast.unparse(node.value).split(".")[-1] == "Literal"
        for part in ast.walk(node.slice)
    }
    compared = {
        id(operand) for node in nodes if isinstance(node, ast.Compare) for operand in [node.left, *node.comparators]
    }

    def statuses(node: ast.AST | None) -> list[str]:
        """The status literals `node` is: one, or a tuple, list or set display of them only."""
        if node is None or id(node) in in_literal_types:
            return []
        if _is_str(node):
            return [node.value] if node.value in values else []
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
            found = [statuses(item) for item in node.elts]
            return [value for one in found for value in one] if all(found) else []
        return []

    for node in nodes:
        if type(node) not in _CHECKED:  # most nodes: names, loads, constants, expressions, ...
            continue
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for operand in operands:
                others = " ".join(ast.unparse(other) for other in operands if other is not operand)
                for value in statuses(operand):
                    yield node.lineno, others, value
        elif isinstance(node, ast.MatchValue):
            for value in statuses(node.value):
                yield node.lineno, "case", value
        elif id(node) in compared:
            continue  # an operand of a comparison: reported with what it is compared with
        elif isinstance(node, ast.Set) or (isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) > 1):
            for value in statuses(node):
                yield node.lineno, "a collection of statuses", value
        elif isinstance(node, ast.Dict):
            keys = [statuses(key) for key in node.keys]
            if keys and all(keys):
                yield node.lineno, "a dict keyed by statuses", keys[0][0]
            for key, item in zip(node.keys, node.values, strict=True):
                # {"status": ...}, {":status": ...}; {"S": ...} is a DynamoDB string, say an expression value.
                if _is_str(key) and (_names_a_status(key.value) or key.value == "S"):
                    for value in statuses(item):
                        yield node.lineno, repr(key.value), value
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id.endswith("Status"):
                for value in statuses(node.args[0] if node.args else None):
                    yield node.lineno, node.func.id, value
            for keyword in node.keywords:
                if keyword.arg and _names_a_status(keyword.arg):
                    for value in statuses(keyword.value):
                        yield node.lineno, f"{keyword.arg}=", value
            reads = isinstance(node.func, ast.Attribute) and node.func.attr == "get" and len(node.args) == 2
            if reads and _mentions_a_status(node.args[0]):
                for value in statuses(node.args[1]):
                    yield node.lineno, ast.unparse(node.args[0]), value
        elif isinstance(node, ast.BoolOp):
            joined = " or " if isinstance(node.op, ast.Or) else " and "
            for item in node.values:
                others = [other for other in node.values if other is not item]
                if any(_mentions_a_status(other) for other in others):
                    for value in statuses(item):
                        yield node.lineno, joined.join(ast.unparse(other) for other in others), value
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(_mentions_a_status(target) for target in targets):
                for value in statuses(node.value):
                    yield node.lineno, " ".join(ast.unparse(target) for target in targets), value
        elif isinstance(node, ast.arguments):
            named = [*node.posonlyargs, *node.args]
            defaulted = named[len(named) - len(node.defaults) :]
            for arg, default in [
                *zip(defaulted, node.defaults, strict=True),
                *zip(node.kwonlyargs, node.kw_defaults, strict=True),
            ]:
                if _names_a_status(arg.arg):
                    for value in statuses(default):
                        yield default.lineno, f"{arg.arg}=", value


def scanned_files(root: Path = ROOT) -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")):
            if "tests" not in path.relative_to(root).parts:  # plugins/test_payments.py is a plugin: scanned
                yield path


@functools.cache
def findings(root: Path = ROOT) -> dict[tuple[str, str, str], list[int]]:
    values = status_values(root)
    found: dict[tuple[str, str, str], list[int]] = {}
    for path in scanned_files(root):
        for line, meets, value in offences(_tree(path), values):
            found.setdefault((path.relative_to(root).as_posix(), meets, value), []).append(line)
    return found


def test_no_status_is_spelt_as_a_string():
    spelt = {
        f"{path}:{lines[0]}: {value!r} against {meets}"
        for (path, meets, value), lines in findings().items()
        if (path, meets, value) not in ALLOWED
    }
    assert sorted(spelt) == []


def test_every_allowance_is_used():
    assert sorted(set(ALLOWED) - set(findings())) == []


def test_the_status_enums_are_read():
    values = status_values()
    assert {"pending", "succeeded", "failed", "ready_for_pickup", "partially_refunded", "requested", "draft"} <= values
    assert "order.shipped" not in values


def test_the_check_catches_each_way_of_spelling_a_status():
    source = """
if refund.status == "failed": pass
if order["status"] in ("pending", "authorized"): pass
COUNTED = frozenset({"allocated", "shipped"})
EVENTS = {"shipped": 1, "delivered": 2}
payment = Payment(status="authorized")
document = {"id": 1, "status": "cancelled"}
status = document.get("status", "pending")
current = document.get("status") or "pending"
resume: str = "on_hold"
hold.resume_to = "allocated"
def f(status="shipped"): pass
values = {":key": {"S": "pending"}, ":received": {"S": "received"}}
stored = ReturnStatus("requested")
match status:
    case "refunded": pass
    case "voided" | "declined": pass
"""
    found = [(meets, value) for _, meets, value in offences(source, status_values())]
    assert found.count(("refund.status", "failed")) == 1
    assert ("order['status']", "pending") in found and ("order['status']", "authorized") in found
    assert ("a collection of statuses", "allocated") in found
    assert ("a dict keyed by statuses", "shipped") in found
    assert ("status=", "authorized") in found
    assert ("'status'", "cancelled") in found
    assert ("'status'", "pending") in found
    assert ("document.get('status')", "pending") in found
    assert ("hold.resume_to", "allocated") in found
    assert ("status=", "shipped") in found
    assert ("'S'", "pending") in found and ("'S'", "received") in found
    assert ("ReturnStatus", "requested") in found
    assert ("case", "refunded") in found and ("case", "declined") in found
    assert found.count(("a collection of statuses", "pending")) == 0  # the tuple compared is reported once
    assert not any(value == "on_hold" for _, value in found)  # `resume` names no status


def test_strings_that_only_look_like_statuses_pass():
    source = """
outcome: Literal["approved", "declined"] = "declined"
counters = {"imported": 0, "failed": 0}
EVENT = "order.shipped"
if entry.type == "shipment_shipped": pass
failed = int(values.get("failed", 0))
record("PaymentFailures", kind="declined")
key = {":pk": {"S": "ready"}}
"""
    assert list(offences(source, status_values())) == []

"""One owner of "read, decide, write conditionally, decide again after losing the race" (STYLE.md,
review item 2): core.order_changes.modify. Checked by reading core/: a loop that catches StaleVersion
(or ReservationsChanged, its kind) is a hand-written retry, and only the owner has one, but for
those listed in ALLOWED, each with why modify cannot make its write. A use case that writes an
order answers `decide` to modify; one that must act between reads answers it a `First`."""

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RETRIED = {"StaleVersion", "ReservationsChanged"}
OWNER = ("core/order_changes.py", "modify")

# (file, function): its retry loop, and why it is not modify's. Each entry must still match a loop
# (test_every_allowance_is_used), so one moved onto modify leaves the list.
ALLOWED: dict[tuple[str, str], str] = {
    ("core/fulfillment.py", "OrderActions._reject_in_part"): (
        "each attempt reserves and books the parcel's units again before its write records them "
        "(Workflow.source_parcel_again) and gives them back when the write is lost: effects modify's "
        "`decide` must not make, and which no later attempt may keep"
    ),
    ("core/unit_cancellation.py", "UnitCancellation._stock_step"): (
        "the order's write and its stock moves in one transaction (OrderRepository.update_with_stock), "
        "lost to a reservation's change too (ReservationsChanged): modify writes the order alone"
    ),
    ("core/workflow.py", "Workflow._write_reserving"): (
        "the order's write and its reservations' top-ups in one transaction (Backorders.fill: a "
        "backorder's fill, an order sent back to be sourced whole): modify writes the order alone"
    ),
    ("core/purchasing.py", "Purchasing._change"): "a purchase order, not an order: its own repository",
    ("core/purchasing.py", "Purchasing.receive"): "a purchase order and its receipt's record, not an order",
    ("core/reorder.py", "Replenishment.buy"): "a purchase order draft and its pointer, not an order",
    ("core/returns.py", "Returns.request"): "a new return taking the next ordinal, not an order's write",
    ("core/returns.py", "Returns._change"): "a return, not an order: its own repository",
    ("core/returns.py", "Returns._shown_in_all"): "a return, not an order",
    ("core/refund_service.py", "show_refunded_in_all"): "a return, not an order",
    ("core/refund_service.py", "show_owed"): "a return, not an order",
}


def _catches_stale(handler: ast.ExceptHandler) -> bool:
    caught = handler.type
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught] if caught is not None else []
    return any(isinstance(name, ast.Name) and name.id in RETRIED for name in names)


def _retries(loop: ast.For | ast.While) -> bool:
    return any(
        isinstance(node, ast.Try) and any(_catches_stale(handler) for handler in node.handlers)
        for node in ast.walk(loop)
    )


def _functions_retrying(node: ast.AST, scope: list[str]) -> Iterator[str]:
    """The qualified name of each function in `node` with a loop that catches StaleVersion."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            inner = [*scope, child.name]
            if not isinstance(child, ast.ClassDef) and any(
                isinstance(loop, ast.For | ast.While) and _retries(loop) for loop in ast.walk(child)
            ):
                yield ".".join(inner)
            yield from _functions_retrying(child, inner)


@functools.cache
def retry_loops(root: Path = ROOT) -> tuple[tuple[str, str], ...]:
    """(file, function) for each function of core/ with a loop that catches StaleVersion: read once
    per test process (the source does not change while the tests run; three tests ask, each parse
    of core/ 0.3-1 s)."""
    return tuple(
        (where, name)
        for path in sorted((root / "core").rglob("*.py"))
        for where in [str(path.relative_to(root))]
        for name in dict.fromkeys(_functions_retrying(ast.parse(path.read_text(), filename=where), []))
    )


def test_only_the_owner_retries_a_lost_write_by_hand():
    hand_written = [found for found in retry_loops() if found != OWNER and found not in ALLOWED]
    assert hand_written == [], (
        "a hand-written read-decide-write-retry loop: write the order through core.order_changes.modify "
        f"(an effect owed before deciding: answer a First), or say in ALLOWED why it cannot: {hand_written}"
    )


def test_the_owner_is_found():
    assert OWNER in set(retry_loops())


def test_every_allowance_is_used():
    found = set(retry_loops())
    assert [allowed for allowed in ALLOWED if allowed not in found] == []

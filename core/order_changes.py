"""One owner of "read the order, decide its next version, write it conditionally, decide again
after losing the race", and of recording failed payment attempts that way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.errors import Conflict, InvalidRequest, NotFound, StaleVersion
from core.events import OrderEvent
from core.models import PAYMENT_FAILURE_EVENTS, Bookkeeping, Change, HistoryEntry, Order
from core.payments import Failure, OnFailure
from core.ports import OrderRepository

ATTEMPTS = 5  # re-reads after losing a write race to the workflow or another request

# A change that records two facts in the one conditional write: the next version and its entries
# (a refusal and the call to a person it makes due: RefundService._record_refusal).
Changes = tuple[Order, list[HistoryEntry]]


@dataclass(frozen=True)
class First:
    """What `decide` answers when the order owes an effect before anything can be decided on it (a
    capture a ship asked for, settled before a cancel of units decides which units go: the parcel
    keeps its lines until then): modify runs `effect` on a consistent read only (a plain one may
    predate the write that settled it), then reads the order again and decides again, as after a
    lost race. `effect` must be idempotent (its gateway calls keyed): a later attempt may find more
    owed, and run it again."""

    effect: Callable[[], object]


Decide = Callable[[Order], Change | Changes | Bookkeeping | First | None]
# failure_recorder's signature: (orders, order_id, actor, clock, *, unless=None, **detail) -> OnFailure.
Recorder = Callable[..., OnFailure]
# Whether a failed attempt is a repeat the order's history (its entries) holds already, judged in
# its write's decision (failure_recorder).
Unless = Callable[[Failure, list[HistoryEntry]], bool]


def visible(order: Order | None, order_id: str, channel: str | None) -> Order:
    """`order` as a caller bound to `channel` (None: any) may see it. Another channel's order
    answers exactly like a missing one (NotFound), so ids cannot be probed."""
    if order is None or (channel is not None and order.channel != channel):
        raise NotFound(f"no order {order_id}")
    return order


def modify(
    orders: OrderRepository, order_id: str, decide: Decide, *, channel: str | None = None, attempts: int = ATTEMPTS,
    consistent: bool = False, written: list[Order] | None = None, history_read: list[int] | None = None,
    read: Order | None = None,
) -> Order:  # fmt: skip
    """Read the order, ask `decide` for its next version and history entry (an Order method's
    answer: the entry None for the system's bookkeeping, a list for several facts written at once
    (Changes); None when there is nothing to write) and write that, conditional on the version read.
    A lost race reads and decides again, so `decide` must only decide: side effects belong before
    (what the write records) or after it, or, owed before anything is decided, in a First it
    answers. Returns the order as stored (as read when `decide` said
    None). Another channel's order is NotFound; StaleVersion after `attempts` lost races (or
    effects run first: First).

    The first read is eventually consistent (cheap, and nearly always current). One that may
    predate the change making this one possible (a release sent just after its hold, a cancel
    just after the order was placed) must not refuse it: a refusal, and every read after a lost
    race, is decided again on a consistent read; so is finding nothing to do, which a read before
    the caller's own write of a moment ago would find (the capture request whose gateway answer it
    records, the renewal request it records the new authorization for), and the order is returned
    as written. `consistent` reads consistently from the first: for a decision sure to follow the
    caller's own writes (a refund the capture just written makes refundable). `written`, when
    given, gets the version this call wrote (nothing when `decide` said None): what the caller did,
    as opposed to what another writer did meanwhile, for a caller that counts it. `history_read`:
    what `decide` sets to the number of history entries it decided on (failure_recorder), the
    write then conditional on the history being that long still: a history-only entry leaves the
    version as it was, so a racing caller's would not make the write stale otherwise. `read`: the
    order as the caller read it (plainly) or wrote it a moment ago, decided on in place of the
    first plain read (one read unit fewer a step, issue 10): as stale at worst as a plain read, and
    treated as one (a refusal, nothing to do and a lost race are decided again on a consistent
    read)."""
    for _ in range(attempts):
        if history_read is not None:
            history_read.clear()
        if read is not None and not consistent:
            found, read = read, None
        else:
            found = orders.get(order_id, consistent=True) if consistent else orders.get(order_id)
        try:
            order = visible(found, order_id, channel)
            change = decide(order)
        except (NotFound, Conflict, InvalidRequest):
            if consistent:
                raise
            consistent = True
            continue
        if isinstance(change, First):
            if consistent:
                change.effect()
            consistent = True
            continue
        if change is None:
            if not consistent:
                # Nothing to do, on a read that may predate the write this call follows (often the
                # caller's own of a moment ago: the request it records the gateway's answer for).
                consistent = True
                continue
            return order
        new, entry = change
        entries = entry if isinstance(entry, list) else [entry] if entry is not None else []
        try:
            if history_read:
                orders.update(new, order, entries, history_length=history_read[-1])
            else:
                orders.update(new, order, entries)
        except StaleVersion:
            consistent = True
            continue
        if written is not None:
            written.append(new)
        return new
    raise StaleVersion(f"order {order_id} kept changing; retry")


def failure_recorder(
    orders: OrderRepository, order_id: str, actor: str, clock: Callable[[], datetime], *,
    unless: Unless | None = None, **detail: Any,
) -> OnFailure:  # fmt: skip
    """What Payments.retried calls with each failed gateway attempt: an entry in the order's
    history (with `detail`, e.g. the shipment), the order itself unchanged. Not when `unless` says
    the attempt is a repeat the history holds already (refusal_noted_once): asked in the write's
    decision, on the history read after the version the write is conditional on, so of two
    attempts racing (a cancel and its retry at once) the one whose write lands second (the write
    conditional on the history's length too: modify's `history_read`) is decided again on the
    history holding the first's entry, and records (and counts) nothing."""

    def record(failure: Failure) -> None:
        read: list[int] = []

        def decide(order: Order) -> Change | None:
            if unless is not None:
                found = orders.history(order_id, consistent=True)
                entries = found[1] if found is not None else []
                read.append(len(entries))
                if unless(failure, entries):
                    return None
            return order.record_payment_failure(
                failure.operation, attempt=failure.attempt, kind=failure.kind, message=failure.message,
                at=clock(), actor=actor, detail=detail,
            )  # fmt: skip

        modify(orders, order_id, decide, history_read=read if unless is not None else None)

    return record


# The failed attempts no gateway answered: no payment plugin took the order's method, or the one
# that did failed (raised, or answered what the core cannot take: PluginError). Nothing moved.
NOT_ANSWERED = ("no_plugin", "plugin_error")
# The failed attempts whose repeat is not recorded again (refusal_noted_once, and a capture's in
# Cancellation.refusal_recorded_last): the gateway's refusal, and those no gateway answered, each
# the same answer however often it is asked (until a person changes something).
UNANSWERED_AGAIN = ("refused", *NOT_ANSWERED)


def refusal_noted_once(
    orders: OrderRepository, order_id: str, actor: str, clock: Callable[[], datetime], *,
    recorder: Recorder = failure_recorder, followed_by: Callable[[HistoryEntry], bool] | None = None,
    repeats: list[Failure] | None = None, **detail: Any,
) -> OnFailure:  # fmt: skip
    """`recorder` (failure_recorder) for a payment operation that anything repeated at will asks
    again (the release of what an authorization holds beyond the captures, asked by every ship
    repeated and every cancel repeated, and by a delivery a carrier reports while the gateway has
    not refused it; the renewal of an authorization a capture was refused on, asked again under
    the key it was declined under): a refusal is not recorded when the order's history ends with
    refusals of the operation only, each the same answer (`kind`), this very one among them (the
    same actor, gateway words and `detail`): two loops taking turns (a warehouse repeating its
    ship, a cancel repeated) each add theirs once. The gateway answers the same key with the same
    refusal and nothing moved, so a repeat tells an auditor nothing the first did, and a loop would
    fill the order's item. So it is for an attempt no payment plugin took (kind `no_plugin`: nobody
    asked the gateway), or whose plugin failed (`plugin_error`), which the reconciler's kept-back
    pass asks again each run while a settlement waits for the plugin. A new answer (refused once the
    plugin is back) and any other failure are always recorded. `followed_by`: the entries a refusal
    of the operation leads to,
    which the run steps over (a declined renewal of the settlement's authorization, and the
    settlement's capture not made it records: Cancellation.renewed_for_settlement), as it steps
    over an attempt under a key the gateway refused that failed transiently (answers_known: the late
    one of two asks at once, answered "key in use"). `repeats`
    gets each failure not recorded for being such a repeat. Judged in the entry's write's decision
    (failure_recorder's `unless`): two attempts racing record the refusal once."""
    said: list[bool] = []  # the last decision's: a repeat, not recorded

    def repeated(failure: Failure, entries: list[HistoryEntry]) -> bool:
        said[:] = [failure.kind in UNANSWERED_AGAIN and _refused_last(entries, actor, failure, detail, followed_by)]
        return said[0]

    record = recorder(orders, order_id, actor, clock, unless=repeated, **detail)

    def on_failure(failure: Failure) -> None:
        said.clear()
        record(failure)
        if said and said[0] and repeats is not None:
            repeats.append(failure)

    return on_failure


def _refused_last(
    entries: list[HistoryEntry], actor: str, failure: Failure, detail: dict[str, Any],
    followed_by: Callable[[HistoryEntry], bool] | None = None,
) -> bool:  # fmt: skip
    for last in reversed(answers_known(entries)):
        said = last.detail or {}
        if (followed_by is not None and followed_by(last)) or last.type is OrderEvent.DELIVERY_NOT_RECORDED:
            continue  # what a refusal led to (a carrier's report it stopped: OrderActions.deliver)
        # A run of this very answer only: a refusal once the plugin is back (or no plugin once
        # the gateway refused) is a new answer, and recorded.
        if last.type is not PAYMENT_FAILURE_EVENTS[failure.operation] or said.get("kind") != failure.kind:
            return False
        if (last.actor == actor and said.get("message") == failure.message[:500]
                and all(said.get(k) == v for k, v in detail.items())):  # fmt: skip
            return True
    return False


# The detail naming the idempotency key a failed attempt was asked under, by its entry's type: an
# authorization's (a renewal's) and a capture's. Entries older code wrote may lack it.
ATTEMPT_KEYS: dict[OrderEvent, str] = {
    OrderEvent.PAYMENT_AUTHORIZATION_FAILED: "authorization_key",
    OrderEvent.PAYMENT_CAPTURE_FAILED: "capture_key",
}


def refused_keys(history: list[HistoryEntry], operation: str) -> set[str]:
    """The keys `operation` (authorize, capture) was refused under in `history` (a decline: not an
    attempt no payment plugin took)."""
    failed = PAYMENT_FAILURE_EVENTS[operation]
    return {key for event, key in _refusals(history) if event is failed}


def _refusals(history: list[HistoryEntry]) -> set[tuple[OrderEvent, str]]:
    """(the failure entry's type, its key) of each refusal in `history` under a key (ATTEMPT_KEYS)."""
    return {
        (entry.type, key) for entry in history
        if entry.type in ATTEMPT_KEYS and (entry.detail or {}).get("kind") == "refused"
        and isinstance(key := entry.detail.get(ATTEMPT_KEYS[entry.type]), str)
    }  # fmt: skip


def answers_known(history: list[HistoryEntry]) -> list[HistoryEntry]:
    """`history` without the transient failures of an authorization or a capture asked under a key
    the gateway refused that operation under (in it): a gateway answers a key with its first answer
    (the hookspecs ask it), so that attempt's answer is the refusal, and it says nothing the refusal
    did not. One is the late twin of two asks under one key at once (a carrier's report delivered
    twice, a warehouse's ship sent twice): Stripe answers it 409 `idempotency_key_in_use` while the
    other's call is in flight, which a payment plugin maps to TransientError, and its entry may land
    after its twin's refusal. A run of refusals is matched past it (_refused_last,
    Cancellation.refusal_recorded_last, core.cancellation._trailing_declines): else the late
    twin's own attempt answered with the refusal, and the next repeat, would each record it again
    (a capture's with its capture not made, a settlement's alarmed and logged), and the next report
    would ask a declined card at once. An attempt whose entry names no key (older code) is kept."""
    refused = _refusals(history)
    if not refused:
        return history
    return [
        entry for entry in history
        if not (entry.type in ATTEMPT_KEYS and (entry.detail or {}).get("kind") == "transient"
                and (entry.type, entry.detail.get(ATTEMPT_KEYS[entry.type])) in refused)
    ]  # fmt: skip


def no_plugin_noted_last(entries: list[HistoryEntry], actor: str, failure: Failure, detail: dict[str, Any]) -> bool:
    """Whether `failure` is an attempt no payment plugin took, or whose plugin failed (NOT_ANSWERED:
    kind `no_plugin`, `plugin_error`), that the order's history (`entries`) ends with already: the
    same operation, actor, message and `detail`, in a run of such attempts (_refused_last). A
    request that stands while the plugin is out (a capture a dead ship
    or settlement left: Cancellation.capture_refused leaves it, with no `capture_not_made`) is
    asked again by whatever repeats (a ship on a loop, a carrier's report again): its attempt is
    noted once, not once a repeat. A gateway's answer, or anything else since, is a new entry."""
    return failure.kind in NOT_ANSWERED and _refused_last(entries, actor, failure, detail)


def outage_noted_once(
    orders: OrderRepository, order_id: str, actor: str, clock: Callable[[], datetime], *,
    unless: Unless | None = None, **detail: Any,
) -> OnFailure:  # fmt: skip
    """failure_recorder for a pass that asks the gateway again every few minutes: a transient
    failure is recorded once a call, and only when the order's last failed attempt at the same
    operation with the same `detail` was not transient already (that entry keeps when the outage
    began and what the gateway said), so an outage does not grow the history a pass at a time. So
    is an attempt no payment plugin took (kind `no_plugin`: nobody asked the gateway), or whose
    plugin failed (`plugin_error`), which such a pass asks again each run while the plugin is out of
    the deployment, or until its bug is fixed (a capture request a ship
    or a settlement left standing, which stands for when the plugin is back): not recorded while
    the history ends with that very attempt (the same actor and `detail`: _refused_last), as the
    pending-refund pass notes a refund's (RefundService._recorder). A refusal is
    always recorded. Both repeats (and `unless`'s) are judged in the entry's write's decision
    (failure_recorder): two passes racing note the outage, or the attempt, once."""
    first: list[Failure] = []  # this call's first transient failure: the only one it may record

    def noted_last(failure: Failure, entries: list[HistoryEntry]) -> bool:
        if (unless is not None and unless(failure, entries)) or no_plugin_noted_last(entries, actor, failure, detail):
            return True
        return bool(first) and failure is first[0] and _unavailable_in(entries, failure.operation, detail)

    record = failure_recorder(orders, order_id, actor, clock, unless=noted_last, **detail)

    def on_failure(failure: Failure) -> None:
        if failure.kind == "transient":
            if first:
                return  # once a call
            first.append(failure)
        record(failure)

    return on_failure


# The operations whose outage a request anything repeated sends again records once
# (request_outage_noted_once): a void, a capture (a parcel's, asked by its ship repeated; the
# settlement's, asked by every delivery reported again), and an authorization asked under a key
# such a request asks again (the renewal of one grown old, asked before either capture). Each
# with what tells its requests apart, absent from a detail that does not name it (None).
NOTED_ONCE_BY_REQUESTS = {"void": (), "capture": ("shipment_id",), "authorize": ("authorization_key",)}


def request_outage_noted_once(
    orders: OrderRepository, order_id: str, actor: str, clock: Callable[[], datetime], *,
    unless: Unless | None = None, **detail: Any,
) -> OnFailure:  # fmt: skip
    """failure_recorder for a request that anything repeated at will sends again (a carrier's
    delivery report, a warehouse's ship, a cancel): every failed attempt is recorded, but a void's,
    a capture's or an authorization's (a renewal's) transient ones not when the order's last failed
    attempt at that void, capture or authorization (the same `detail`; a capture's the same
    shipment, or none: the settlement's; an authorization's the same key) was transient already:
    the outage is on the history, with when it began and what the gateway said (an authorization's
    key among the attempts whose answer was lost, for a cancel to release), and a loop of reports
    or ships through it would otherwise add three entries a call until the order's item is full.
    A refusal, and every other failure, is always recorded (but a repeat `unless` finds). Whether
    the history says so is judged in the write of this call's first such attempt (failure_recorder):
    of two requests racing through the outage, the one whose write lands second records nothing."""
    known: list[bool] = []  # whether the history said so when this call's first one was written
    first: list[Failure] = []

    def outage_known(failure: Failure, entries: list[HistoryEntry]) -> bool:
        if unless is not None and unless(failure, entries):
            return True
        if not first or failure is not first[0]:
            return False
        # A settlement's capture is not a parcel's, nor an authorization under no key one under a key.
        matched = {**dict.fromkeys(NOTED_ONCE_BY_REQUESTS[failure.operation]), **detail}
        known[:] = [_unavailable_in(entries, failure.operation, matched)]
        return known[0]

    record = failure_recorder(orders, order_id, actor, clock, unless=outage_known, **detail)

    def on_failure(failure: Failure) -> None:
        if failure.operation in NOTED_ONCE_BY_REQUESTS and failure.kind == "transient":
            if known and known[0]:
                return
            if not first:
                first.append(failure)
        record(failure)

    return on_failure


def _unavailable_in(entries: list[HistoryEntry], operation: str, detail: dict[str, Any]) -> bool:
    """Whether the last failed attempt at `operation` with `detail` in `entries` was transient. A
    capture's key (`capture_key`) is not compared: its shipment (or none) and amount name the
    request already, and an outage older code wrote names no key."""
    failed = PAYMENT_FAILURE_EVENTS[operation]
    compared = {name: value for name, value in detail.items() if name != "capture_key"}
    about = [
        entry for entry in entries
        if entry.type is failed and all((entry.detail or {}).get(name) == value for name, value in compared.items())
    ]  # fmt: skip
    return bool(about) and about[-1].detail.get("kind") == "transient"

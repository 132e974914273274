"""Returns (RMA) as the HTTP contract names them: the request, the receipt and the Return itself."""

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import InvalidRequest, InvalidTransition, StaleVersion
from core.events import OrderEvent
from core.fields import empty_list
from core.models import Identifier, LineId, LineInput, Note, Strict, Text, VisibleText, units_text
from core.money import Money
from core.return_decisions import ReturnPolicyDecision as ReturnPolicyDecision  # plugins import it from here too
from core.status import UNRECEIVED_RETURNS, ReturnStatus, can_transition

ReasonCode = Literal[
    "damaged", "defective", "wrong_item", "not_as_described", "size_or_fit", "no_longer_needed", "other"
]  # fmt: skip
Condition = Literal["resellable", "damaged"]
Quantity = Annotated[int, Field(ge=1, le=10_000, strict=True)]


class ReturnLineInput(Strict):
    line_id: LineId
    quantity: Quantity
    reason: Text = Field(description="Free text: why the customer sends it back")
    reason_code: ReasonCode | None = None


class ExchangeInput(Strict):
    lines: Annotated[list[LineInput], Field(min_length=1, max_length=100)]


def _unique(values: list[Any], field: str, what: str) -> None:
    """Each line's `values` once. A repeat names its own entry (`lines[1].line_id`), as the
    contract's 422 does, and the entry it repeats in its message."""
    seen: dict[Any, int] = {}
    for index, value in enumerate(values):
        if value in seen:
            # Raised as a ValidationError so that its place is the entry's, not the whole list's.
            raise ValidationError.from_exception_data(
                "lines",
                [{"type": "value_error", "loc": (index, field), "input": value,
                  "ctx": {"error": f"repeats the {what} of lines[{seen[value]}]"}}],
            )  # fmt: skip
        seen[value] = index


class RequestReturn(Strict):
    """The body of POST /orders/{id}/returns."""

    lines: Annotated[list[ReturnLineInput], Field(min_length=1, max_length=100)]
    exchange: ExchangeInput | None = None

    @field_validator("lines")
    @classmethod
    def _one_entry_per_line(cls, lines: list[ReturnLineInput]) -> list[ReturnLineInput]:
        _unique([line.line_id for line in lines], "line_id", "line_id")
        return lines


class ReturnNote(Strict):
    """The body of POST /returns/{id}/approve and /reject."""

    note: Note | None = None


class ReturnReceiptLine(Strict):
    line_id: LineId
    quantity: Quantity
    condition: Condition


class ReceiveReturn(Strict):
    """The body of POST /returns/{id}/receive: what came back, per line and condition."""

    location_id: Identifier
    lines: Annotated[list[ReturnReceiptLine], Field(min_length=1, max_length=200)]

    @field_validator("lines")
    @classmethod
    def _once_per_condition(cls, lines: list[ReturnReceiptLine]) -> list[ReturnReceiptLine]:
        _unique([(line.line_id, line.condition) for line in lines], "condition", "line_id and condition")
        return lines

    def received(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for line in self.lines:
            totals[line.line_id] = totals.get(line.line_id, 0) + line.quantity
        return totals


class ReturnLine(BaseModel):
    # Validated again in each new version of its return (Return._next copies lines with
    # model_copy, which does not validate), so no count a receipt gets wrong is stored.
    model_config = ConfigDict(
        revalidate_instances="always", defer_build=True, json_schema_serialization_defaults_required=True
    )

    line_id: str
    quantity: Annotated[int, Field(ge=1)]
    reason: Annotated[str, VisibleText]
    reason_code: ReasonCode | None = None
    received_quantity: Annotated[int, Field(ge=0)] = 0
    # Of the received units, those fit to sell again (back on hand); the rest were damaged.
    resellable_quantity: Annotated[int, Field(ge=0)] = 0
    condition: Literal["resellable", "damaged", "mixed"] | None = Field(
        default=None, description="How the received units came back; `mixed` when some were damaged and some not"
    )

    @model_validator(mode="after")
    def _no_more_back_than_authorized(self) -> "ReturnLine":
        if not self.resellable_quantity <= self.received_quantity <= self.quantity:
            raise ValueError(
                f"line {self.line_id}: {self.resellable_quantity} resellable of {self.received_quantity} received "
                f"of {self.quantity} authorized"
            )
        return self


class OrderEntry(BaseModel):
    """An entry a change of a return owes its order's history (its request, approval, rejection or
    expiry), kept on the return with the change itself: Returns writes it on the order, which
    records each once (Order.return_noted), and writes it again wherever the first writer died."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    type: OrderEvent
    actor: str
    detail: dict[str, Any]


class Return(BaseModel):
    """One return (RMA) of an order. Its methods are the only way to a new version: each checks
    the transition table and bumps the version the repository's conditional write expects."""

    model_config = ConfigDict(
        revalidate_instances="always", defer_build=True, json_schema_serialization_defaults_required=True
    )

    id: str
    order_id: str
    channel: str = Field(description="The order's channel: a channel's API keys see only its returns")
    ordinal: int = Field(description="1 for an order's first return, 2 for its second, ...")
    status: ReturnStatus
    lines: list[ReturnLine]
    refund: Money = Field(description="What was refunded for this return (zero until it is refunded)")
    fee: Money
    refund_shipping: bool = False
    refund_shipping_with_whole_order: bool = Field(
        default=False,
        description="The order's shipping comes back with this return's refund if it brings the order's last unit "
        "back and every unit came back on returns that say so (refund_shipping: with this return's refund anyway)",
    )
    label_url: str | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    # The label's booking: the parcel's hash its carrier booking was asked under, after the return's
    # id (core.returns.return_booking_key; `label_booking_key`), what a cancel of it names. None
    # without a label, or for one booked before it was kept. The system's own: stored, never shown.
    booking: str | None = Field(default=None, exclude=True)
    # Where the units go back to (the label's address): of the locations they shipped from, the one
    # nearest the customer (core.returns.return_destination), decided when the return is made.
    return_to: str | None = None
    received_at_location: str | None = None
    received_by: str | None = Field(default=None, description="The API key id that received the parcel")
    # When its units arrived (its receipt's write): a stock take recorded since counted them on the
    # shelf, so its restock adds them no more (InventoryRepository.restock). None for one received
    # before it was kept. The system's own: stored, never shown.
    received_at: datetime | None = Field(default=None, exclude=True)
    exchange: ExchangeInput | None = None
    exchange_order_id: str | None = None
    exchange_not_placed: str | None = Field(
        default=None,
        description="Why the exchange's replacement could not be placed when the return was received "
        "(`insufficient_stock`: not enough of a product that may not wait for stock; `no_price`: a product no longer "
        "priced in the order's currency; `amount_too_large`: a product priced so high since that the replacement's "
        "total reaches 10^15, the most an order records; `no_shipping_method`: no shipping service quotes it any more; "
        "`unknown_payment_method`: no payment plugin takes the original's method any "
        "more; `pickup_not_offered`: the original's pickup store no longer takes pickup orders; "
        "`exchange_external_id_taken`: an order the channel placed itself has the replacement's external_id; "
        "`validation_error`: the original's address or customer, which the replacement keeps, no longer passes "
        "today's rules, the history entry's details naming the field); the "
        "returned units are refunded instead",
    )
    # Its replacement is to be placed (Return.placing_exchange): decided before it is, so a
    # concurrent run's stock check that disagrees gives nothing up. The system's own: stored, never shown.
    exchange_placing: bool = Field(default=False, exclude=True)
    # Its replacement, decided to be placed, was refused since (Returns.exchange): the detail of the
    # `exchange_not_placed` entry it owes once given up, and when the refusal was written (`at`).
    # No run that reads it puts the replacement. The system's own: stored, never shown.
    exchange_refused: dict[str, Any] | None = Field(default=None, exclude=True)
    note: Annotated[str, VisibleText] | None = None
    # What the order's history owes this return's changes (OrderEntry). The system's own: stored
    # (stored_json), never shown.
    order_entries: list[OrderEntry] = Field(default_factory=empty_list, exclude=True)
    # The key of the request that made it (a client's Idempotency-Key, scoped to its API key): a
    # retry the first run's stored answer never reached finds this return (Returns.request).
    # The system's own: stored, never shown.
    request_key: str | None = Field(default=None, exclude=True)
    # When it became `authorized` (at its request, or when a person approved it): its expiry counts
    # from then (expiry_start). The system's own: stored, never shown.
    authorized_at: datetime | None = Field(default=None, exclude=True)
    # The other returns of the order this return's step is finishing the pending refunds of
    # (Returns._finish_pending), written before it asks the gateway and cleared once they show
    # what went back for them (core.refund_service.show_owed): a step that dies between lets its
    # retry, or the reconciler's returns pass, show it. The system's own: stored, never shown.
    shows_owed: list[str] = Field(default_factory=empty_list, exclude=True)
    # The workflow execution whose ReturnStuck listed it again last (listed_again): that step run
    # again after its answer was lost finds it listed and writes nothing, so a pass that set it
    # aside since is not undone. The system's own: stored, never shown.
    listed_by: str | None = Field(default=None, exclude=True)
    created_at: datetime
    updated_at: datetime
    version: int

    def stored_json(self) -> str:
        """The return as the repository stores it: the API's JSON plus what only the system reads."""
        api_json = self.model_dump_json(exclude_none=True)
        system: dict[str, Any] = {}
        if self.order_entries:
            system["order_entries"] = [entry.model_dump(mode="json") for entry in self.order_entries]
        if self.request_key is not None:
            system["request_key"] = self.request_key
        if self.booking is not None:
            system["booking"] = self.booking
        if self.authorized_at is not None:
            system["authorized_at"] = self.authorized_at.isoformat()
        if self.received_at is not None:
            system["received_at"] = self.received_at.isoformat()
        if self.exchange_placing:
            system["exchange_placing"] = True
        if self.exchange_refused is not None:
            system["exchange_refused"] = self.exchange_refused
        if self.shows_owed:
            system["shows_owed"] = self.shows_owed
        if self.listed_by is not None:
            system["listed_by"] = self.listed_by
        if not system:
            return api_json
        return api_json[:-1] + "," + json.dumps(system, separators=(",", ":"))[1:]

    def made_by(self, cmd: RequestReturn) -> bool:
        """Whether this return is what `cmd` asks for (its lines and exchange)."""
        asked = [(x.line_id, x.quantity, x.reason, x.reason_code) for x in cmd.lines]
        return asked == [(x.line_id, x.quantity, x.reason, x.reason_code) for x in self.lines] and (
            self.exchange == cmd.exchange
        )

    def owing(self, type: OrderEvent, *, actor: str, detail: dict[str, Any]) -> "Return":
        """This version of the return, owing its order's history an entry `type` for it (the same
        version: the entry belongs to the change that made it)."""
        entry = OrderEntry(type=type, actor=actor, detail=detail)
        return Return.model_validate({**dict(self), "order_entries": [*self.order_entries, entry]})

    def _next(self, to: ReturnStatus | None, at: datetime, **fields: Any) -> "Return":
        if to is not None and to != self.status and not can_transition(self.status, to):
            raise InvalidTransition(f"a return cannot go from {self.status} to {to}")
        return Return.model_validate(
            {**dict(self), **fields, "status": to or self.status, "version": self.version + 1, "updated_at": at}
        )

    def expiry_start(self) -> datetime:
        """Where the time a return may wait unreceived starts: an authorized return's approval (the
        customer could send nothing before it), a requested one's creation. An authorized return
        stored before approvals were kept was last changed by its approval (or made authorized)."""
        if self.status is ReturnStatus.AUTHORIZED:
            return self.authorized_at or self.updated_at
        return self.created_at

    def labelled(
        self, carrier: str | None, tracking_number: str | None, label_url: str | None, booking: str | None = None
    ) -> "Return":
        """This version with the label booked for it (as it is without one, `label_url` None) and
        the `booking` it was asked under (see the field): the same version, as the label belongs to
        the change that authorizes the return."""
        if label_url is None:
            return self
        changes = {"carrier": carrier, "tracking_number": tracking_number, "label_url": label_url, "booking": booking}
        return Return.model_validate({**dict(self), **changes})

    def label_booking_key(self) -> str | None:
        """The key the carrier booking of its label was asked under (oms_carrier_return_label's
        `booking_key`), or None when it has no label or was labelled before that was kept."""
        return f"{self.id}-{self.booking}" if self.label_url is not None and self.booking is not None else None

    def check_seen(self, if_match: int | None) -> None:
        """Refuse a decision a person made from version `if_match` (their If-Match) of a return at
        another version: StaleVersion, 409 `version_conflict`, naming the current one. None: they
        named none, and the decision is made on the return as it is."""
        if if_match is not None and self.version != if_match:
            raise StaleVersion.unseen(f"return {self.id}", self.version, if_match)

    def approve(self, note: str | None, *, at: datetime) -> "Return":
        if self.status is not ReturnStatus.REQUESTED:
            raise InvalidTransition(f"a return that is {self.status} is not waiting for approval")
        return self._next(ReturnStatus.AUTHORIZED, at, note=note or self.note, authorized_at=at)

    def reject(self, note: str | None, *, at: datetime) -> "Return":
        if self.status is not ReturnStatus.REQUESTED:
            raise InvalidTransition(f"a return that is {self.status} is not waiting for approval")
        return self._next(ReturnStatus.REJECTED, at, note=note or self.note)

    def cancel(self, *, at: datetime) -> "Return":
        """Given up before anything arrived: only a return still `requested` or `authorized` is
        cancelled; one received (or rejected, or cancelled already) is InvalidTransition."""
        if self.status not in UNRECEIVED_RETURNS:
            raise InvalidTransition(f"a return that is {self.status} cannot be cancelled")
        return self._next(ReturnStatus.CANCELLED, at)

    def receive(self, receipt: ReceiveReturn, *, at: datetime, by: str) -> "Return":
        """The units of `receipt` arrived at its location, received by the API key `by`. Only an
        authorized return is received, once; more units of a line than it authorized is
        InvalidRequest (422). The same receipt again answers this return as it is (a retried
        request); another receipt of a return received already is InvalidTransition (409): what
        arrived was restocked and refunded as first recorded, and a different count must not look
        recorded when it was not."""
        if self.status in (ReturnStatus.RECEIVED, ReturnStatus.REFUNDED):
            if self._recorded_as(receipt):
                return self
            raise InvalidTransition(
                f"return {self.id} was received already, with another receipt",
                details=[{"field": "lines", "message": "differs from the receipt recorded; receive again only to "
                          "retry the same receipt"}],
            )  # fmt: skip
        if self.status is not ReturnStatus.AUTHORIZED:
            raise InvalidTransition(f"a return that is {self.status} cannot be received")
        by_line = {line.line_id: line for line in self.lines}
        resellable: dict[str, int] = {}
        damaged: dict[str, int] = {}
        for item in receipt.lines:
            if item.line_id not in by_line:
                raise _invalid_receipt(receipt, item.line_id, "is not on this return", field="line_id")
            target = resellable if item.condition == "resellable" else damaged
            target[item.line_id] = target.get(item.line_id, 0) + item.quantity
        lines = []
        for line in self.lines:
            good, bad = resellable.get(line.line_id, 0), damaged.get(line.line_id, 0)
            if good + bad > line.quantity:
                raise _invalid_receipt(
                    receipt, line.line_id, f"has {units_text(line.quantity)} authorized, {good + bad} received"
                )
            condition = None
            if good or bad:
                condition = "mixed" if good and bad else ("resellable" if good else "damaged")
            lines.append(
                line.model_copy(
                    update={"received_quantity": good + bad, "resellable_quantity": good, "condition": condition}
                )
            )
        return self._next(
            ReturnStatus.RECEIVED,
            at,
            lines=lines,
            received_at_location=receipt.location_id,
            received_by=by,
            received_at=at,
        )

    def _recorded_as(self, receipt: ReceiveReturn) -> bool:
        """Whether this received return records `receipt`: its location, and each line's units in
        each condition (in whatever order the receipt lists them)."""
        counted: dict[tuple[str, str], int] = {}
        for item in receipt.lines:
            counted[item.line_id, item.condition] = counted.get((item.line_id, item.condition), 0) + item.quantity
        recorded = {}
        for line in self.lines:
            damaged = line.received_quantity - line.resellable_quantity
            for condition, quantity in (("resellable", line.resellable_quantity), ("damaged", damaged)):
                if quantity:
                    recorded[line.line_id, condition] = quantity
        return receipt.location_id == self.received_at_location and counted == recorded

    def with_exchange_order(self, order_id: str, *, at: datetime) -> "Return":
        """The replacement order of this return's exchange was placed."""
        if self.exchange is None or self.status is not ReturnStatus.RECEIVED:
            raise InvalidTransition(f"a return that is {self.status} cannot place an exchange")
        if self.exchange_not_placed is not None:
            raise InvalidTransition(f"the exchange of return {self.id} was given up ({self.exchange_not_placed})")
        return self._next(None, at, exchange_order_id=order_id)

    def owing_shown(self, return_ids: list[str]) -> "Return":
        """This return's step is about to finish the pending refunds of the returns `return_ids`,
        which then owe showing what went back for them (shows_owed)."""
        return self._kept(shows_owed=list(dict.fromkeys([*self.shows_owed, *return_ids])))

    def owed_shown(self, still_owed: list[str] | None = None) -> "Return":
        """The returns this one's step finished the refunds of show them now (shows_owed), but
        `still_owed`, whose refunds are still pending (core.refund_service.show_owed)."""
        return self._kept(shows_owed=list(still_owed or []))

    def listed_again(self, execution: str = "") -> "Return":
        """A new version changing nothing shown: written, a received return is listed again for the
        reconciler's returns pass (ReceivedReturns), which may have set it aside; by `execution`'s
        ReturnStuck, when one is named (listed_by)."""
        return self._kept(listed_by=execution or None)

    def listed_by_execution(self, execution: str) -> bool:
        """Whether the ReturnStuck of workflow execution `execution` listed this return again."""
        return bool(execution) and self.listed_by == execution

    def _kept(self, **fields: Any) -> "Return":
        """A new version changing only what the system keeps for itself: its `updated_at` is still
        its last change shown (the reconciler's returns pass judges a received return by it)."""
        return Return.model_validate({**dict(self), **fields, "version": self.version + 1})

    def placing_exchange(self, *, at: datetime) -> "Return":
        """The replacement of this return's exchange is to be placed (it passed capture's checks):
        decided before it is, once, so that a run whose check disagrees follows this decision."""
        if self.exchange is None or self.status is not ReturnStatus.RECEIVED:
            raise InvalidTransition(f"a return that is {self.status} cannot place an exchange")
        if self.exchange_not_placed is not None:
            raise InvalidTransition(f"the exchange of return {self.id} was given up ({self.exchange_not_placed})")
        return self._next(None, at, exchange_placing=True)

    def refused_after_deciding(self, detail: dict[str, Any], *, at: datetime) -> "Return":
        """The replacement this return's exchange was decided to place (placing_exchange) was
        refused since, none of it placed (`detail`: what its `exchange_not_placed` entry will say):
        no run that reads this version puts it, and the exchange is given up once no run that read
        an earlier one can still (Returns.exchange)."""
        if not self.exchange_placing or self.exchange_order_id is not None or self.exchange_not_placed is not None:
            raise InvalidTransition(f"the exchange of return {self.id} is not being placed")
        if self.status is not ReturnStatus.RECEIVED:
            raise InvalidTransition(f"a return that is {self.status} cannot place an exchange")
        return self._next(None, at, exchange_refused={**detail, "at": at.isoformat()})

    def without_exchange(self, code: str, *, at: datetime) -> "Return":
        """The replacement of this return's exchange cannot be placed (`code` says why): its units
        are refunded instead. Decided once: a later run refunds it, whatever stock arrived since.
        One decided to be placed (placing_exchange) is given up only when none of its can exist
        (Returns._without_exchange: its external_id taken by another order)."""
        if self.exchange is None or self.exchange_order_id is not None or self.status is not ReturnStatus.RECEIVED:
            raise InvalidTransition(f"a return that is {self.status} cannot give up its exchange")
        return self._next(None, at, exchange_not_placed=code)

    def refunded(self, amount: Money, *, at: datetime) -> "Return":
        return self._next(ReturnStatus.REFUNDED, at, refund=amount)

    def refunded_in_all(self, amount: Money, *, at: datetime) -> "Return":
        """A refunded return whose refund kept part of its worth back, refunded since
        (UnitCancellation.refund_kept_back): `amount` is what was refunded for it in all."""
        if self.status is not ReturnStatus.REFUNDED:
            raise InvalidTransition(f"a return that is {self.status} has no refund to add to")
        return self._next(None, at, refund=amount)

    def received(self) -> dict[str, int]:
        return {line.line_id: line.received_quantity for line in self.lines if line.received_quantity}


def _invalid_receipt(receipt: ReceiveReturn, line_id: str, problem: str, field: str = "quantity") -> InvalidRequest:
    """The 422 of a receipt's line `line_id`, naming its first entry's `field` (the one at fault)."""
    index = next(i for i, item in enumerate(receipt.lines) if item.line_id == line_id)
    return InvalidRequest(
        f"line {line_id} {problem}", details=[{"field": f"lines[{index}].{field}", "message": problem}]
    )

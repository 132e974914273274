"""Vendors and purchase orders: what is bought from whom, submitted, and received into stock (issue 15)."""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import (
    Conflict,
    InvalidRequest,
    InvalidTransition,
    NotFound,
    StaleVersion,
    StockLimitReached,
    UnknownSku,
)
from core.fields import empty_list, written_as_a_time
from core.ids import new_id, short_hash
from core.models import MAX_ON_HAND, Email, Identifier, ReorderSettings, Shown, Strict, Text, VisibleName
from core.money import MAX_ABS_AMOUNT, AmountTooLarge, ExactMoney, Money
from core.ports import CatalogRepository
from core.status import PurchaseOrderStatus, check_purchase_order_step

PO = PurchaseOrderStatus
# The most units of a sku one line orders (or a receipt's line counts): what a location may hold.
MAX_UNITS = MAX_ON_HAND
Units = Annotated[int, Field(ge=1, le=MAX_UNITS, strict=True)]
# A receipt is one DynamoDB transaction: the PO and one stock item per line (at most 100 items).
MAX_LINES = 99
# Statuses whose units not yet received count as incoming stock.
INCOMING = frozenset({PO.OPEN, PO.PARTIALLY_RECEIVED})
# The receipts a PO keeps (RecordedReceipt, keys included) fill at most this many bytes of its
# DynamoDB item: with the PO's own document (99 lines of the longest skus: under 30 KB) the item
# stays well under DynamoDB's 400 KB. A few thousand receipts of a line or two each.
MAX_RECEIPT_BYTES = 256 * 1024


def _not_negative(cost: Money) -> Money:
    # What the vendor is paid per unit: below zero would book the vendor paying for the goods.
    if cost.is_negative():
        raise ValueError("unit_cost must not be negative")
    return cost


UnitCost = Annotated[ExactMoney, AfterValidator(_not_negative)]


class VendorRequest(Strict):
    name: Text
    email: Email | None = None
    lead_time_days: Annotated[int, Field(ge=0, le=365, strict=True)]


class Vendor(Shown):
    vendor_id: str
    # One stored before invisible characters were refused (VendorRequest) shows each as U+FFFD.
    name: Annotated[str, VisibleName]
    email: Annotated[str, VisibleName] | None = None
    lead_time_days: int


class VendorPage(Shown):
    items: list[Vendor]
    next_cursor: str | None = None


class NewPurchaseOrderLine(Strict):
    sku: Identifier
    quantity: Units
    unit_cost: UnitCost


def _line_error(index: int, field: str, value: object, message: str) -> Any:
    """A value error at `lines[index].field`, for ValidationError.from_exception_data."""
    return {"type": "value_error", "loc": (index, field), "input": value, "ctx": {"error": message}}


def _repeats(skus: list[str], message: str) -> list[Any]:
    """An error at `lines[i].sku` for each entry repeating an earlier one's sku; `message` is
    formatted with that earlier entry's index (`first`) and the `sku`."""
    first: dict[str, int] = {}
    errors = []
    for index, sku in enumerate(skus):
        if sku in first:
            errors.append(_line_error(index, "sku", sku, message.format(first=first[sku], sku=sku)))
        first.setdefault(sku, index)
    return errors


# A delivery date outside the years 2000 to 2999 (in UTC) is a typo, and would not survive
# conversion to UTC at the edges. Every moment of 2999 is taken: the bound is the first of 3000.
EARLIEST_EXPECTED = datetime(2000, 1, 1, tzinfo=UTC)
AFTER_LATEST_EXPECTED = datetime(3000, 1, 1, tzinfo=UTC)


class NewPurchaseOrder(Strict):
    vendor_id: Identifier
    location_id: Identifier
    lines: Annotated[list[NewPurchaseOrderLine], Field(min_length=1, max_length=MAX_LINES)]
    expected_at: datetime | None = Field(
        default=None, description="When the goods are due; without it, now plus the vendor's lead_time_days"
    )

    # Field validators, not one on the model: each error names its field (`expected_at`), or the
    # entry of `lines` at fault (`lines[3].sku`).
    @field_validator("lines")
    @classmethod
    def _one_line_per_sku(cls, lines: list[NewPurchaseOrderLine]) -> list[NewPurchaseOrderLine]:
        # One line per sku, as receipts name lines by sku; one currency, as the PO is one bill.
        repeated = "lines[{first}] orders {sku} already: each sku appears on one line"
        errors = _repeats([line.sku for line in lines], repeated)
        currency = lines[0].unit_cost.currency
        for index, line in enumerate(lines):
            other = line.unit_cost.currency
            if other != currency:
                said = f"in {other}, where lines[0] is in {currency}: a purchase order is in one currency"
                errors.append(_line_error(index, "unit_cost", other, said))
        if errors:
            # Raised as a ValidationError so that each error names its entry, not the whole list.
            raise ValidationError.from_exception_data("lines", sorted(errors, key=lambda error: error["loc"]))
        return lines

    _an_rfc_3339_time = field_validator("expected_at", mode="before")(
        written_as_a_time("expected_at", "an RFC 3339 time such as 2030-01-31T09:00:00Z")
    )

    @field_validator("expected_at")
    @classmethod
    def _a_plausible_moment(cls, expected_at: datetime | None) -> datetime | None:
        if expected_at is not None and expected_at.tzinfo is None:
            raise ValueError("expected_at needs a time zone")
        if expected_at is not None and not EARLIEST_EXPECTED <= expected_at < AFTER_LATEST_EXPECTED:
            raise ValueError(
                "expected_at must fall in the years 2000 to 2999 in UTC: from 2000-01-01T00:00:00Z, "
                "before 3000-01-01T00:00:00Z"
            )
        # Kept and shown in UTC, as every time the API answers (API.md).
        return expected_at.astimezone(UTC) if expected_at is not None else None


class PurchaseOrderLine(BaseModel):
    # Validated again in each new version of its PO (PurchaseOrder._next), so no count or cost a
    # change gets wrong is stored. No upper bound on `quantity`: a draft grown past MAX_UNITS is
    # refused by the reorder that grew it (core.reorder.past_the_limit), naming the limit.
    model_config = ConfigDict(
        revalidate_instances="always", defer_build=True, json_schema_serialization_defaults_required=True
    )

    sku: str
    quantity: Annotated[int, Field(ge=1)]
    received_quantity: Annotated[int, Field(ge=0)] = 0
    # Null only on a draft a reorder point made without a cost: submitting it prices the line.
    unit_cost: UnitCost | None = Field(
        default=None, description="Null only on a draft line a reorder point made without a cost"
    )

    @model_validator(mode="after")
    def _not_over_received(self) -> "PurchaseOrderLine":
        if self.received_quantity > self.quantity:
            raise ValueError(f"{self.sku}: {self.received_quantity} received of {self.quantity} ordered")
        return self

    @property
    def outstanding(self) -> int:
        return self.quantity - self.received_quantity


class ReceivedLine(Shown):
    sku: str
    quantity: int


class PurchaseOrderReceipt(Shown):
    """A receipt counted on a purchase order: what arrived (its units per sku, its lines of one sku
    added up) and when it was counted, what a goods-received note books."""

    received_at: datetime | None = Field(
        description="When the receipt was counted; null for one counted before the OMS kept receipts' times"
    )
    lines: list[ReceivedLine]


class PurchaseOrder(Shown):
    id: str
    vendor_id: str
    location_id: str
    status: PurchaseOrderStatus
    lines: list[PurchaseOrderLine]
    expected_at: datetime
    created_at: datetime
    # Set by the one step draft -> open (`submit`): a submit of a PO that has it and is not
    # cancelled is a retry; a PO created open has none, and a submit of it is no transition.
    submitted_at: datetime | None = Field(
        default=None, description="When the draft was submitted to its vendor; null on a draft and on a PO created open"
    )
    # Shown, never stored in the PO's document: read from the receipts kept on its item
    # (RecordedReceipt, receipts_listed), where each receipt is written once, under its key.
    receipts: list[PurchaseOrderReceipt] = Field(
        default_factory=empty_list,
        description="Every receipt counted on it, oldest first, sent with an Idempotency-Key or without (a receipt "
        "sent again under its key is not another); one counted before receipts kept their units is not listed",
    )
    updated_at: datetime | None = Field(
        default=None, description="When it last changed; null on one last changed before the OMS kept that time"
    )
    version: int = 1

    def outstanding(self) -> dict[str, int]:
        """Units of each sku ordered and not yet received: what counts as incoming while the PO is open."""
        return {line.sku: line.outstanding for line in self.lines}

    def _next(self, status: PurchaseOrderStatus | None = None, *, at: datetime, **fields: Any) -> "PurchaseOrder":
        """The next version, made at `at` (its `updated_at`): `status` (None: as it is) as the
        transition table allows, with `fields`, validated as a new PO is, so a wrong status, count or
        cost is refused. Its lines too: the methods below copy them with model_copy, which does not
        validate, and this validates them again (PurchaseOrderLine's revalidate_instances)."""
        if status is not None:
            check_purchase_order_step(self.status, status)
        changes = {**fields, "status": status or self.status, "version": self.version + 1, "updated_at": at}
        return PurchaseOrder.model_validate({**dict(self), **changes})

    def submit(
        self, prices: dict[str, Money] | None = None, *, at: datetime, expected_at: datetime | None = None
    ) -> "PurchaseOrder":
        """The draft sent to its vendor at `at`, open. `prices` sets unit costs by sku (a draft's unpriced
        lines, or a draft's costs corrected), in the order of the submission's lines: a sku the PO
        lacks is 422 naming its line (`lines[i].sku`). A line left without a cost is 422
        `unpriced_lines`, since an open PO is a commitment to pay, and costs in more than one
        currency are 422 `mixed_currencies`, each cost named by the submission's line that gave it
        (`lines[i].unit_cost`), or as the draft's. `expected_at` replaces the due date a draft got.
        A draft submitted already (open, or received since) is answered as it is when `prices` agree
        with its costs: a submit sent again, its first answer lost. Otherwise the transition table
        answers: a PO created open was never a draft, and it, a cancelled one and one that `prices`
        would price otherwise are 409 `invalid_transition`."""
        if self.submitted_as(prices):
            return self
        check_purchase_order_step(self.status, PO.OPEN, self._not_submittable())
        prices = prices or {}
        skus = {line.sku for line in self.lines}
        unknown = [(index, sku) for index, sku in enumerate(prices) if sku not in skus]
        if unknown:
            raise InvalidRequest(
                f"{unknown[0][1]} is not on purchase order {self.id}",
                details=[
                    {"field": f"lines[{index}].sku", "message": f"{sku} is not on purchase order {self.id}"}
                    for index, sku in unknown
                ],
            )
        lines = [line.model_copy(update={"unit_cost": prices.get(line.sku, line.unit_cost)}) for line in self.lines]
        unpriced = [line.sku for line in lines if line.unit_cost is None]
        if unpriced:
            raise InvalidRequest(
                f"purchase order {self.id} has lines without a unit_cost",
                code="unpriced_lines",
                details=[{"field": "lines", "message": f"{sku} needs a unit_cost"} for sku in unpriced],
            )
        # A draft's lines take their costs from several reorder points: the PO sent is in one currency.
        currencies = sorted({line.unit_cost.currency for line in lines if line.unit_cost is not None})
        if len(currencies) > 1:
            priced_by = {sku: index for index, sku in enumerate(prices)}
            raise InvalidRequest(
                f"purchase order {self.id} would be priced in {' and '.join(currencies)}",
                code="mixed_currencies",
                details=[_cost_in(line, priced_by.get(line.sku)) for line in lines if line.unit_cost is not None],
            )
        costs_within_the_limit(lines)
        return self._next(PO.OPEN, at=at, lines=lines, submitted_at=at, expected_at=expected_at or self.expected_at)

    def _not_submittable(self) -> str:
        """Why a submit of this PO, which is no retry of one (submitted_as), is refused."""
        if self.status is PO.CANCELLED:
            return f"purchase order {self.id} is cancelled"
        if self.submitted_at is not None:
            return (
                f"purchase order {self.id} was submitted already, with other costs: an open purchase "
                "order's costs are what its vendor agreed to"
            )
        return f"purchase order {self.id} was created open, not as a draft: it has no submit to make"

    def _not_receivable(self) -> str:
        """Why a receipt on this PO (neither open nor received) is refused."""
        if self.status is PO.DRAFT:
            return f"purchase order {self.id} is a draft: submit it to its vendor first"
        return f"purchase order {self.id} is {self.status}"

    def submitted_as(self, prices: dict[str, Money] | None) -> bool:
        """Whether this PO is a draft submitted already (open, or received since: not cancelled)
        with every cost in `prices` on its line: a submit of it is a retry, and changes nothing."""
        costs = {line.sku: line.unit_cost for line in self.lines}
        return (
            self.submitted_at is not None
            and self.status is not PO.CANCELLED
            and all(sku in costs and costs[sku] == cost for sku, cost in (prices or {}).items())
        )

    def grow(self, sku: str, quantity: int, unit_cost: Money | None, *, at: datetime) -> "PurchaseOrder":
        """The draft with `quantity` more of `sku`, grown at `at`: its line grows, or a new line is
        added, priced at `unit_cost`, what its reorder point says the units cost now (a draft is
        priced by its points alone: a submit prices it and opens it in one write); without one, the
        line keeps its cost. An open PO is never grown: its costs are the vendor's agreement."""
        if self.status is not PO.DRAFT:
            raise InvalidTransition(f"purchase order {self.id} is {self.status}, not a draft")
        lines, found = [], False
        for line in self.lines:
            if line.sku == sku:
                found = True
                line = line.model_copy(
                    update={"quantity": line.quantity + quantity, "unit_cost": unit_cost or line.unit_cost}
                )
            lines.append(line)
        if not found:
            lines.append(PurchaseOrderLine(sku=sku, quantity=quantity, unit_cost=unit_cost))
        return self._next(at=at, lines=lines)

    def takes(self, sku: str) -> bool:
        """Whether a reorder of `sku` may grow this draft (a receipt names at most MAX_LINES lines)."""
        return self.status is PO.DRAFT and (len(self.lines) < MAX_LINES or any(li.sku == sku for li in self.lines))

    def cancel(self, *, at: datetime) -> "PurchaseOrder":
        """The PO cancelled; one cancelled already as it is (a cancel sent again changes nothing)."""
        return self if self.status is PO.CANCELLED else self._next(PO.CANCELLED, at=at)

    def receive(self, receipt: "Receipt", *, at: datetime) -> "PurchaseOrder":
        """The PO after `receipt`, counted at `at` and listed last of its receipts (its lines of one
        sku add up). More than ordered minus received is refused (422 `over_receipt`), each problem
        naming the receipt's line as the contract's error shape does: `lines[i].sku` for a sku the
        PO lacks, `lines[i].quantity` for the line at which a sku's units pass what is outstanding."""
        # A received PO has nothing outstanding: a receipt on it is an over-receipt, as one that
        # passes the last units of a partly received PO is. A draft or a cancelled PO is a conflict.
        if self.status not in INCOMING and self.status is not PO.RECEIVED:
            # raises: only an open PO is received
            check_purchase_order_step(self.status, PO.RECEIVED, self._not_receivable())
        by_sku = {line.sku: line for line in self.lines}
        units = receipt.units()
        problems = []
        counted: dict[str, int] = {}
        for index, item in enumerate(receipt.lines):
            line = by_sku.get(item.sku)
            if line is None:
                problems.append(
                    {"field": f"lines[{index}].sku", "message": f"{item.sku} is not on purchase order {self.id}"}
                )
                continue
            before = counted.get(item.sku, 0)
            counted[item.sku] = before + item.quantity
            if before <= line.outstanding < counted[item.sku]:
                # What was received already says whether a receipt thought lost (sent again without
                # an Idempotency-Key) was counted: "5 received" alone read as the PO's, not this receipt's.
                said = (f"{units[item.sku]} {item.sku} in this receipt, {line.outstanding} outstanding "
                        f"({line.quantity} ordered, {line.received_quantity} received already)")  # fmt: skip
                problems.append({"field": f"lines[{index}].quantity", "message": said})
        if problems:
            raise InvalidRequest(
                f"the receipt does not fit purchase order {self.id}", code="over_receipt", details=problems
            )
        lines = [
            line.model_copy(update={"received_quantity": line.received_quantity + units.get(line.sku, 0)})
            for line in self.lines
        ]
        done = all(line.received_quantity == line.quantity for line in lines)
        listed = PurchaseOrderReceipt(received_at=at, lines=_received_lines(units))
        status = PO.RECEIVED if done else PO.PARTIALLY_RECEIVED
        return self._next(status, at=at, lines=lines, receipts=[*self.receipts, listed])


def _received_lines(units: dict[str, int]) -> list[ReceivedLine]:
    return [ReceivedLine(sku=sku, quantity=quantity) for sku, quantity in units.items()]


def costs_within_the_limit(
    lines: "list[PurchaseOrderLine] | list[NewPurchaseOrderLine]",
    detail: dict[str, str] | None = None,
) -> None:
    """Raise AmountTooLarge (422 `amount_too_large`, its one detail `detail`, by default naming
    `lines`) when `lines` (priced in one currency) would cost 10^15 or more of it: every amount is
    below that (API.md), a PO's, the vendor's bill, too."""
    currency = bill_at_the_limit(lines)
    if currency is not None:
        said = f"the purchase order would cost 10^15 {currency} or more, the most the OMS records"
        detail = detail or {"field": "lines", "message": "quantity × unit_cost, summed, reaches it"}
        raise AmountTooLarge(said, details=[detail])


def bill_at_the_limit(lines: "list[PurchaseOrderLine] | list[NewPurchaseOrderLine]") -> str | None:
    """The currency in which `lines` would cost 10^15 or more (quantity × unit_cost of its priced
    lines, summed; a draft's lines may be priced in two), or None: every amount is below that."""
    bills: dict[str, Decimal] = {}
    for line in lines:
        if line.unit_cost is not None:
            currency = line.unit_cost.currency
            bills[currency] = bills.get(currency, Decimal(0)) + line.unit_cost.amount * line.quantity
    return next((currency for currency, bill in bills.items() if bill >= MAX_ABS_AMOUNT), None)


def _cost_in(line: PurchaseOrderLine, index: int | None) -> dict[str, str]:
    """A line's currency, naming the submission's line that priced it (`index`), else the draft's."""
    if index is None:
        return {"field": "lines", "message": f"{line.sku} costs {line.unit_cost.currency} on the draft"}
    return {"field": f"lines[{index}].unit_cost", "message": f"{line.sku} costs {line.unit_cost.currency}"}


class LinePrice(Strict):
    sku: Identifier
    unit_cost: UnitCost


class Submission(Strict):
    """The optional body of a submit: unit costs for a draft's lines (required for those without one)."""

    lines: Annotated[list[LinePrice], Field(default_factory=empty_list, max_length=MAX_LINES)]

    @field_validator("lines")
    @classmethod
    def _one_price_per_sku(cls, lines: list[LinePrice]) -> list[LinePrice]:
        repeats = _repeats([line.sku for line in lines], "lines[{first}] prices {sku} already: price each sku once")
        if repeats:
            # Raised as a ValidationError so that each error names its repeating entry, not the whole list.
            raise ValidationError.from_exception_data("lines", repeats)
        return lines

    def prices(self) -> dict[str, Money]:
        """Unit costs by sku, in the order of `lines` (an error names a line by its index)."""
        return {line.sku: line.unit_cost for line in self.lines}


class ReceiptLine(Strict):
    sku: Identifier
    quantity: Units


class Receipt(Strict):
    lines: Annotated[list[ReceiptLine], Field(min_length=1, max_length=MAX_LINES)]

    def units(self) -> dict[str, int]:
        units: dict[str, int] = {}
        for line in self.lines:
            units[line.sku] = units.get(line.sku, 0) + line.quantity
        return units

    def digest(self) -> str:
        """Names this body: a receipt sent again under its key is told from another one by it."""
        return short_hash(self.model_dump_json())


class RecordedReceipt(BaseModel, defer_build=True):
    """A receipt counted on a purchase order, kept on it under its key for as long as the PO
    (an Idempotency-Key's record lasts 24 h): the digest of its body, the version of the PO it
    made, the units it counted per sku and when it was counted. One recorded before receipts kept
    these has none; one recorded before receipts kept their time has all but `received_at`."""

    digest: str | None = None
    version: int | None = None
    units: dict[str, int] | None = None
    received_at: datetime | None = None

    def size(self, key: str) -> int:
        """Bytes it takes on the PO's item, near enough: its key and its stored document."""
        return len(key.encode()) + len(self.model_dump_json(exclude_none=True))


def counted_again(po: PurchaseOrder, receipts: dict[str, RecordedReceipt], key: str, receipt: Receipt) -> PurchaseOrder:
    """The answer to `receipt` sent again under `key`, which `po` counted already (`receipts`): the
    PO as that receipt left it, whenever it comes back (the units each receipt counted, up to it,
    make its received quantities). Another body under the key is 409 `idempotency_key_reused`.
    Where the PO keeps a receipt recorded before receipts kept their bodies, the PO as it is."""
    first = receipts[key]
    if first.digest is None or first.version is None:
        return po
    if first.digest != receipt.digest():
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
            details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
        )
    received: dict[str, int] = {}
    for recorded in receipts.values():
        if recorded.units is None or recorded.version is None:
            return po
        if recorded.version <= first.version:
            for sku, units in recorded.units.items():
                received[sku] = received.get(sku, 0) + units
    # An answer rebuilt from the stored PO, never written: model_copy, not a new version (_next).
    lines = [line.model_copy(update={"received_quantity": received.get(line.sku, 0)}) for line in po.lines]
    done = all(line.received_quantity == line.quantity for line in lines)
    status = PO.RECEIVED if done else PO.PARTIALLY_RECEIVED
    up_to_it = receipts_listed({name: kept for name, kept in receipts.items() if kept.version <= first.version})
    changes = {"lines": lines, "status": status, "version": first.version, "receipts": up_to_it}
    return po.model_copy(update={**changes, "updated_at": first.received_at})


def receipts_listed(receipts: dict[str, RecordedReceipt]) -> list[PurchaseOrderReceipt]:
    """The receipts a PO keeps (by key), as it lists them: oldest first, as each receipt made the
    next version of the PO. One kept without its units (before receipts kept them) cannot say
    what arrived, and is not listed."""
    known = sorted((kept for kept in receipts.values() if kept.version is not None and kept.units), key=_made)
    return [
        PurchaseOrderReceipt(received_at=kept.received_at, lines=_received_lines(kept.units or {})) for kept in known
    ]


def _made(kept: RecordedReceipt) -> int:
    return kept.version or 0


def record_of(
    receipt: Receipt, received: PurchaseOrder, key: str, receipts: dict[str, RecordedReceipt]
) -> RecordedReceipt:
    """What `received` (the PO after `receipt`) keeps of it under `key`: 409 `too_many_receipts`
    when the receipts it keeps would pass MAX_RECEIPT_BYTES, and nothing is counted."""
    record = RecordedReceipt(
        digest=receipt.digest(), version=received.version, units=receipt.units(), received_at=received.updated_at
    )
    if sum(kept.size(name) for name, kept in receipts.items()) + record.size(key) > MAX_RECEIPT_BYTES:
        raise Conflict(
            f"purchase order {received.id} keeps as many receipts as it can: receive the rest on another "
            "purchase order (cancel this one for what has not arrived)",
            code="too_many_receipts",
        )
    return record


class PurchaseOrderPage(Shown):
    items: list[PurchaseOrder]
    next_cursor: str | None = None


@dataclass(frozen=True)
class PurchaseOrderFilter:
    status: PurchaseOrderStatus | None = None
    vendor_id: str | None = None


class PurchasingRepository(ABC):
    """Vendors and purchase orders. Every PO write is conditional on its status and version and
    moves the incoming units on the stock items it names in the same transaction."""

    @abstractmethod
    def put_vendor(self, vendor: Vendor) -> bool:
        """Create or replace a vendor; True when it is new."""

    @abstractmethod
    def get_vendor(self, vendor_id: str) -> Vendor | None: ...

    @abstractmethod
    def list_vendors(self, limit: int, cursor: str | None) -> tuple[list[Vendor], str | None]: ...

    @abstractmethod
    def add(self, po: PurchaseOrder) -> None:
        """Store a new PO: an open one with its incoming units, or a draft (which brings none)."""

    @abstractmethod
    def get(self, po_id: str) -> tuple[PurchaseOrder, dict[str, RecordedReceipt]] | None:
        """The PO and the receipts counted on it, by key."""

    @abstractmethod
    def update(self, po: PurchaseOrder, expected: PurchaseOrder, receipt: tuple[str, RecordedReceipt] | None) -> None:
        """Write `po` over `expected` (StaleVersion when it is no longer that status and version),
        moving incoming stock by the difference of their outstanding units; with a receipt
        (key, record) also add its units to on hand at the PO's location and keep the record
        under the key, all in one transaction. A draft cancelled marks the stock item of each of
        its skus in that transaction: its units, counted as bought, are not coming (the change
        the Inventory stream then carries, `StockChange.draft_withdrawn`, buys them again)."""

    @abstractmethod
    def list(
        self, where: PurchaseOrderFilter, limit: int, cursor: str | None
    ) -> tuple[list[PurchaseOrder], str | None]: ...

    # --- Reorder points (core.reorder) ---------------------------------------------------------
    @abstractmethod
    def set_reorder(self, sku: str, location_id: str, settings: ReorderSettings | None) -> None:
        """Set (or with None clear) the reorder settings on the stock item, where the Inventory
        stream's images carry them to the crossing detection."""

    @abstractmethod
    def open_draft(self, vendor_id: str, location_id: str) -> tuple[PurchaseOrder | None, str | None]:
        """The draft reorder points grow for this vendor and location (None once it was submitted
        or cancelled), and the id of the PO last made that draft (None before the first)."""

    @abstractmethod
    def holding_draft(self, vendor_id: str, location_id: str, sku: str) -> PurchaseOrder | None:
        """The draft for this vendor and location that `add_reorder` last added a line of `sku` to,
        while it is a draft: it may no longer be the open draft (it filled up and a new one
        opened), and its units of `sku` are still bought. None when there is none."""

    @abstractmethod
    def holding_drafts(self, vendor_id: str | None, location_id: str, sku: str) -> "list[PurchaseOrder]":
        """The `holding_draft` of `sku` at this location of `vendor_id` (None: no point here now)
        and of every other vendor `add_reorder` added a line of it to here (a reorder point whose
        vendor changed, or one cleared): each draft's units of `sku` are bought."""

    @abstractmethod
    def reordered(self, key: str) -> bool:
        """Whether `add_reorder` recorded the crossing `key` (`sku#location_id#change_id`)."""

    @abstractmethod
    def add_reorder(self, po: PurchaseOrder, expected: PurchaseOrder | None, pointer: str | None, key: str) -> bool:
        """In one transaction: record the crossing `key` (once ever), and write the draft `po`,
        over `expected` (its status and version) or, when None, as a new PO that becomes the open
        draft in place of `pointer`; when `po` gets a line of the key's sku, it becomes the sku's
        `holding_draft`, and its vendor one of those `holding_drafts` reads. False when `key` was
        recorded before (nothing is written); StaleVersion when the draft or the open-draft record
        changed meanwhile."""


class Purchasing:
    """Vendors, purchase orders and receipts."""

    ATTEMPTS = 5

    def __init__(
        self, repository: PurchasingRepository, catalog: CatalogRepository, clock: Callable[[], datetime]
    ) -> None:
        self._repository = repository
        self._catalog = catalog
        self._clock = clock

    def put_vendor(self, vendor_id: str, request: VendorRequest) -> tuple[Vendor, bool]:
        vendor = Vendor(vendor_id=vendor_id, **request.model_dump())
        return vendor, self._repository.put_vendor(vendor)

    def vendors(self, limit: int, cursor: str | None) -> tuple[list[Vendor], str | None]:
        return self._repository.list_vendors(limit, cursor)

    def create(self, request: NewPurchaseOrder, po_id: str | None = None) -> PurchaseOrder:
        """An open PO. `po_id` (derived from a client's Idempotency-Key) names it: a create retried
        after its first attempt was written returns that PO instead of opening a second one."""
        if po_id is not None and (found := self._repository.get(po_id)) is not None:
            return _same_request(found[0], request)
        costs_within_the_limit(request.lines)
        vendor = self._repository.get_vendor(request.vendor_id)
        if vendor is None:
            raise InvalidRequest(
                f"no vendor {request.vendor_id}",
                code="unknown_vendor",
                details=[{"field": "vendor_id", "message": "PUT /vendors/{vendor_id} first"}],
            )
        if self._catalog.get_location(request.location_id) is None:
            raise InvalidRequest(
                f"no location {request.location_id}",
                code="unknown_location",
                details=[{"field": "location_id", "message": "not a location of the network"}],
            )
        known = self._catalog.get_products({line.sku for line in request.lines})
        missing = [(index, line.sku) for index, line in enumerate(request.lines) if line.sku not in known]
        if missing:
            raise UnknownSku(
                f"unknown sku {missing[0][1]}",
                details=[{"field": f"lines[{index}].sku", "message": f"no product {sku}"} for index, sku in missing],
            )
        now = self._clock()
        po = PurchaseOrder(
            id=po_id or new_id("po"),
            vendor_id=vendor.vendor_id,
            location_id=request.location_id,
            # Open at once (API.md): a draft is what a reorder point would propose for a person to submit.
            status=PO.OPEN,
            lines=[PurchaseOrderLine(**line.model_dump()) for line in request.lines],
            expected_at=request.expected_at or now + timedelta(days=vendor.lead_time_days),
            created_at=now,
            updated_at=now,
        )
        try:
            self._repository.add(po)
        except StaleVersion:
            found = self._repository.get(po.id) if po_id is not None else None
            if found is None:
                raise
            return _same_request(found[0], request)  # a concurrent retry of the same create wrote it
        return po

    def get(self, po_id: str) -> PurchaseOrder:
        return self._read(po_id)[0]

    def list(
        self, where: PurchaseOrderFilter, limit: int, cursor: str | None
    ) -> tuple[list[PurchaseOrder], str | None]:
        return self._repository.list(where, limit, cursor)

    def _read(self, po_id: str) -> tuple[PurchaseOrder, dict[str, RecordedReceipt]]:
        found = self._repository.get(po_id)
        if found is None:
            raise NotFound(f"no purchase order {po_id}")
        return found

    def _change(self, po_id: str, step: Callable[[PurchaseOrder], PurchaseOrder]) -> PurchaseOrder:
        for _ in range(self.ATTEMPTS):
            po, _receipts = self._read(po_id)
            new = step(po)
            if new is po:
                return po  # a retry of a change made already: nothing to write
            try:
                self._repository.update(new, po, None)
            except StaleVersion:
                continue  # changed meanwhile (a receipt): decide again on what it is now
            return new
        raise StaleVersion(f"purchase order {po_id} keeps changing; try again")

    def submit(
        self, po_id: str, submission: Submission | None = None, expected_version: int | None = None
    ) -> PurchaseOrder:
        """Open the draft. With `expected_version` (the version its submitter read), a draft changed
        since (a crossing grew it while it waited for a person) is 409 `version_conflict`: the vendor
        is never sent units its submitter has not seen. A draft submitted already answers as it is."""
        prices = submission.prices() if submission else {}

        def step(po: PurchaseOrder) -> PurchaseOrder:
            now = self._clock()
            if po.status is not PO.DRAFT:
                return po.submit(prices, at=now)  # as it is when submitted already, else raises
            _check_seen(po, expected_version, "submitting")
            # A draft waited for a person: its goods are due the vendor's lead time from now.
            vendor = self._repository.get_vendor(po.vendor_id)
            return po.submit(
                prices, at=now, expected_at=now + timedelta(days=vendor.lead_time_days) if vendor else None
            )

        return self._change(po_id, step)

    def cancel(self, po_id: str, expected_version: int | None = None) -> PurchaseOrder:
        """Cancel the PO. With `expected_version` (the version its canceller read), a PO changed since
        (submitted, received into, cancelled) is 409 `version_conflict`, nothing written: a buyer
        never withdraws from the vendor a PO they have not seen."""

        def step(po: PurchaseOrder) -> PurchaseOrder:
            _check_seen(po, expected_version, "cancelling")
            return po.cancel(at=self._clock())

        return self._change(po_id, step)

    def receive(self, po_id: str, receipt: Receipt, key: str) -> PurchaseOrder:
        """Count `receipt` once per `key`, kept on the PO: a receipt sent again with the same key,
        however late (its first attempt written, its answer lost, or a batch re-sent a day
        after), counts nothing again and answers the PO as it left it (`counted_again`)."""
        for _ in range(self.ATTEMPTS):
            po, receipts = self._read(po_id)
            if key in receipts:
                return counted_again(po, receipts, key, receipt)
            new = po.receive(receipt, at=self._clock())
            try:
                self._repository.update(new, po, (key, record_of(receipt, new, key, receipts)))
            except StaleVersion:
                continue
            except StockLimitReached as full:
                raise _naming_lines(full, receipt) from None
            return new
        raise StaleVersion(f"purchase order {po_id} keeps changing; try again")


def _check_seen(po: PurchaseOrder, expected_version: int | None, doing: str) -> None:
    """Refuse (StaleVersion, 409 `version_conflict`) a change decided from `expected_version` (the
    If-Match of a person `doing` it) of a PO at another version; None: none was named."""
    if expected_version is not None and po.version != expected_version:
        advice = f": it changed since it was read; read it again before {doing} it"
        raise StaleVersion.unseen(f"purchase order {po.id}", po.version, expected_version, advice)


def _naming_lines(full: StockLimitReached, receipt: Receipt) -> StockLimitReached:
    """`full` (the location holds too many of a sku to receive its units: 409, the units on hand
    refuse them) naming the receipt's lines of each such sku, as the contract's error shape does."""
    skus = {detail.get("sku") for detail in full.details}
    details = [
        {"field": f"lines[{i}].quantity", "message": f"{line.sku}: at most {MAX_ON_HAND:,} units may be on hand"}
        for i, line in enumerate(receipt.lines)
        if line.sku in skus
    ]
    return StockLimitReached(full.message, details=details or full.details)


def _same_request(po: PurchaseOrder, request: NewPurchaseOrder) -> PurchaseOrder:
    """`po`, made by an earlier create with the same Idempotency-Key, as that create made it (open,
    nothing received: only receipts and a cancel change an open PO since) when `request` asks for
    it again, however late; 409 when the key was used for another PO."""
    asked = (request.vendor_id, request.location_id, [(li.sku, li.quantity, li.unit_cost) for li in request.lines])
    made = (po.vendor_id, po.location_id, [(li.sku, li.quantity, li.unit_cost) for li in po.lines])
    if asked != made or not _due_as_asked(po, request.expected_at):
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
            details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
        )
    # An answer rebuilt from the stored PO, never written: model_copy, not a new version (_next).
    made = [line.model_copy(update={"received_quantity": 0}) for line in po.lines]
    as_made = {"status": PO.OPEN, "lines": made, "version": 1, "receipts": [], "updated_at": po.created_at}
    return po.model_copy(update=as_made)


def _due_as_asked(po: PurchaseOrder, expected_at: datetime | None) -> bool:
    """Whether `po`'s due date is what a create asking for `expected_at` made: that date, or with
    none, the vendor's lead time in whole days after `created_at` (whatever it is now: it may have
    changed since). A date a client gives is not that to the microsecond."""
    if expected_at is not None:
        return po.expected_at == expected_at
    return (po.expected_at - po.created_at) % timedelta(days=1) == timedelta(0)

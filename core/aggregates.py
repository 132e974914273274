"""Customer and report aggregates: the counter deltas one order change means, and their read views.

Each order document contributes a fixed set of counters (its customer's, and its day's report
rows); a change adds `contribution(new) - contribution(old)`. Every transition (allocation,
cancellation, a refund on a return, a unit cancellation, a failed payment) is that one
subtraction, so no rule per event type can drift from another, and the same pair of images
always yields the same deltas (a redelivered record is recognised by its (order, version) marker,
kept by the adapter in the same transaction as the counters).

Revenue is filed under the UTC day the order began to count it (its allocation: API.md "counted
when the order is allocated"), and later changes move it on that day: a change that begins the
counting names its day, one of an order already counting takes the day it was filed under. That
day is the order's creation day for most orders (allocated the day they were placed), so only an
order filed under another day (a backorder allocated later) records it, on a filing item written
with its counters, and only a change that moves an order's counted revenue reads it back. An order
counted before the filing rule existed (filed under its creation day, with no filing item) reads
as filed under its creation day, as it was.

A customer's `ordered` sums the grand totals of their orders not cancelled or failed (API.md), an
exchange's replacement as any order, though its credit (the refund its return's units were due,
README "Returns") pays part of it; `refunded` is what the refund records say the gateway gave back.
An earlier version counted a replacement's grand total less the credit it used and recorded so on
its filing item (the replacement's first record): a later change of such a replacement goes by
that record (Filing.credit), so it takes out exactly what it added.
"""

import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Protocol

from pydantic import BaseModel

from core.errors import InvalidRequest, NotFound
from core.models import Shown, VisibleName
from core.money import Money, minor_units, round_money
from core.status import OrderStatus, RefundStatus


class ReportKind(StrEnum):
    PRODUCTS = "products"
    CUSTOMERS = "customers"
    REGIONS = "regions"


# An order's revenue counts once it is allocated (API.md: "counted when the order is allocated"),
# and stays counted while it ships, is delivered and comes back (units refunded on a return are
# taken out line by line: line_revenue_kept); cancelling takes all of it out.
_COUNTED: frozenset[OrderStatus] = frozenset(
    {
        OrderStatus.ALLOCATED,
        OrderStatus.PARTIALLY_SHIPPED,
        OrderStatus.SHIPPED,
        OrderStatus.DELIVERED,
        OrderStatus.PARTIALLY_RETURNED,
        OrderStatus.RETURNED,
    }
)
# `ordered` sums the orders that were not cancelled or failed.
_NOT_ORDERED: frozenset[OrderStatus] = frozenset({OrderStatus.CANCELLED, OrderStatus.PAYMENT_FAILED})


def counts_revenue(document: Mapping[str, Any]) -> bool:
    status = document.get("status")
    if status == OrderStatus.ON_HOLD:  # held after allocation: still the revenue it was (the hold resumes to it)
        status = (document.get("hold") or {}).get("resume_to")
    return status in _COUNTED


Key = tuple[str, str]  # (pk, sk) of an aggregate item


@dataclass
class Contribution:
    """What one order document adds to each aggregate item: numeric counters by attribute."""

    counters: dict[Key, dict[str, Decimal]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, key: Key, attribute: str, value: Decimal | int) -> None:
        row = self.counters[key]
        row[attribute] = row.get(attribute, Decimal(0)) + Decimal(value)


@dataclass(frozen=True)
class CounterUpdate:
    """Atomic ADDs on one item (pk, sk), plus attributes it sets where the item has none yet (a
    customer's email and name: a change of an older order must not replace the latest order's,
    which CustomerSeen keeps)."""

    pk: str
    sk: str
    add: dict[str, Decimal]
    set: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CustomerSeen:
    """A new order of a customer: first/last order times are a min and a max, idempotent by
    nature, so they are kept outside the counters (a max cannot be an ADD); the customer's email
    and name are the latest order's, set with its `last_order_at`."""

    customer_id: str
    channel: str
    email: str
    at: str
    name: str | None = None


@dataclass(frozen=True)
class WentBy:
    """What changes of an order read of its filing and went by (None: none read it): the day its
    revenue was filed under, and whether its exchange credit was counted out of `ordered` (by an
    earlier version: kept on the markers, so that version, rolled back to, replaying a
    replacement's first record after its later ones goes by what they went by)."""

    day: str | None = None
    credit: bool | None = None


@dataclass(frozen=True)
class AggregateChange:
    order_id: str
    version: int
    updates: list[CounterUpdate]
    seen: CustomerSeen | None = None
    # (pk, sk, channel) of the report day registry items the counters need (written before them)
    report_days: list[tuple[str, str, str]] = field(default_factory=list)
    # The day the change begins filing the order's revenue under, when that is not the day the
    # order was placed (a backorder allocated days later): written with the counters, read back
    # by a later change that moves that revenue (AggregateStore.filing).
    filed_on: str | None = None
    # What the change read of the order's filing and went by, kept on its marker: a change applied
    # late (a parked record replayed) goes by what the changes applied after it went by.
    went_by: WentBy = WentBy()

    @property
    def empty(self) -> bool:
        return not self.updates and self.seen is None


@dataclass(frozen=True)
class Filing:
    """What the store recorded of how an order is counted (nothing, for nearly every order)."""

    day: str | None = None  # the day its revenue is filed under; None: the day it was placed
    # An earlier version counted the exchange credit it uses out of its customer's `ordered`.
    credit: bool = False
    # (version, day) of each change that filed the order's revenue under a day other than its
    # placing, oldest first. An order sent back to be sourced and allocated again on another day
    # is filed twice: a parked record of the first filing's time, replayed after the second,
    # goes by the first (day_before), not by the day the revenue moved to after it.
    days: tuple[tuple[int, str], ...] = ()

    def day_before(self, version: int) -> str | None:
        """The day the order's revenue was filed under as its version before `version` stood (None:
        the day it was placed). A filing recorded before filings were versioned has `day` alone."""
        if not self.days:
            return self.day
        earlier = [day for filed, day in sorted(self.days) if filed < version]
        return earlier[-1] if earlier else None


# The counters' partitions of the Catalog table (the events function writes these and no other
# aggregate's: template.yaml, its dynamodb:LeadingKeys condition).
CUSTOMER_PK = "customer#"  # + the customer's id: a row per channel
EMAIL_INDEX_PK = "customer-email#"  # + the address: the customers who ordered under it
REPORT_PK = "report#"  # + kind#currency#channel#day: a report's rows of a day
REPORT_CHANNELS_PK = "report-channels#"  # + the currency: the channels with rows, per day
FILING_PK = "report-filed#"  # + the order's id: the day its revenue is filed under, when not the day placed


def customer_key(customer_id: str, channel: str) -> Key:
    return CUSTOMER_PK + customer_id, channel


def email_key(email: str, customer_id: str) -> Key:
    """The email index item of a customer who ordered under `email`: the address trimmed, in any
    case, its accents composed (NFC), so "José" sent precomposed by one storefront and decomposed
    (e + U+0301) by another is one address, as it is to a person."""
    return email_partitions(email)[0], customer_id


def email_partitions(email: str) -> list[str]:
    """The email index partitions a search for `email` reads: email_key's, then, for an address
    with characters that decompose, the one its customers were indexed under before addresses were
    composed (the address lower-cased as the order gave it: decomposed, for those)."""
    searched = email.strip().lower()
    composed = EMAIL_INDEX_PK + unicodedata.normalize("NFC", searched)
    decomposed = EMAIL_INDEX_PK + unicodedata.normalize("NFD", searched)
    return [composed] if decomposed == composed else [composed, decomposed]


def report_pk(kind: ReportKind, currency: str, channel: str, day: str) -> str:
    return f"{REPORT_PK}{kind.value}#{currency}#{channel}#{day}"


def filing_key(order_id: str) -> Key:
    """The item naming the day an order's revenue is filed under, when not the day it was placed."""
    return FILING_PK + order_id, "revenue"


def report_channels_key(currency: str, day: str) -> Key:
    """The registry item of the channels with report rows in `currency` on `day`."""
    return REPORT_CHANNELS_PK + currency, day


def credit_in_use(document: Mapping[str, Any]) -> Decimal:
    """What of an exchange's credit the replacement `document` uses: its credit less what the
    exchange refunded of it at once (`credit_rest`, counted as refunded on the original order:
    Order.usable_credit), at most its grand total (the rest is refunded on the original order),
    nothing once it is cancelled or failed (the credit is given back on the original then)."""
    credit = document.get("exchange_credit")
    if not credit or document.get("status") in _NOT_ORDERED:
        return Decimal(0)
    rest = document.get("credit_rest")
    usable = Decimal(credit["amount"]) - (Decimal(rest["amount"]) if rest else Decimal(0))
    return max(min(usable, Decimal(document["totals"]["grand_total"]["amount"])), Decimal(0))


def contribution(document: Mapping[str, Any] | None, day: str = "", credit: bool = False) -> Contribution:
    """The counters an order document stands for, its revenue filed under `day` (YYYY-MM-DD) and,
    if `credit`, the exchange credit it uses taken out of `ordered` (already ordered on the original).
    Every row is its channel's: a view over all channels sums the channels' rows when read (a
    customer's are one partition; a report day lists its channels on a registry item), which
    halves the writes of keeping both."""
    result = Contribution()
    if not document:
        return result
    currency = document["currency"]
    channel = document["channel"]
    customer_id = document["customer"]["id"]
    status = document.get("status")
    key = customer_key(customer_id, channel)
    result.add(key, "orders_count", 1)
    if status not in _NOT_ORDERED:
        result.add(key, f"ordered_{currency}", Decimal(document["totals"]["grand_total"]["amount"]))
    if credit:
        result.add(key, f"ordered_{currency}", -credit_in_use(document))
    refunded = (document.get("payment") or {}).get("refunded") or {}
    result.add(key, f"refunded_{currency}", Decimal(refunded.get("amount", "0")))
    result.add(key, "returns_count", len(document.get("received_returns") or []))
    result.add(key, "payment_failures", 1 if status == OrderStatus.PAYMENT_FAILED else 0)
    if not counts_revenue(document):
        return result
    address = document.get("shipping_address") or {}
    region = f"{address.get('country', '')}#{address.get('region') or ''}"
    revenue = Decimal(0)
    refused = units_refund_refused(document)
    for line in document.get("lines") or []:
        units, line_revenue = line_revenue_kept(line, currency, refused.get(line["line_id"], 0))
        revenue += line_revenue
        key = (report_pk(ReportKind.PRODUCTS, currency, channel, day), line["sku"])
        result.add(key, "units", units)
        result.add(key, "revenue", line_revenue)
    for kind, sk in ((ReportKind.CUSTOMERS, customer_id), (ReportKind.REGIONS, region)):
        key = (report_pk(kind, currency, channel, day), sk)
        result.add(key, "orders", 1)
        result.add(key, "revenue", revenue)
    return result


def line_revenue_kept(line: Mapping[str, Any], currency: str, refund_refused: int = 0) -> tuple[int, Decimal]:
    """Units and revenue (quantity x unit price - discount) a line still counts: units refunded on
    a return are taken out at their share of the line's net, rounded half-even. Those are the units
    received back (`returned_quantity`) but `refund_refused` of them, whose return's refund the
    gateway refused (units_refund_refused): back, but not refunded, they stay sold."""
    quantity = int(line["quantity"])
    net = Decimal(line["unit_price"]["amount"]) * quantity - Decimal(line["discount"]["amount"])
    received = int(line.get("returned_quantity") or 0)
    returned = min(max(received - refund_refused, 0), quantity)
    if quantity == 0:
        return 0, Decimal(0)
    taken_out = round_money(net * returned / quantity, currency) if returned else Decimal(0)
    return quantity - returned, net - taken_out


# What settles a return's units other than its own refund: an exchange's credit (held for its
# replacement, or its units' worth once the replacement was placed), a replacement's units refunded
# from its credit, or a refund that gave nothing as nothing was refundable (its worth kept back,
# refunded once a capture makes it so). The order document's own fields (core.models.Order).
_SETTLED_BESIDES_REFUNDS = ("exchange_shares", "credit_holds", "credit_refunded_shares", "returns_kept_back")


def units_refund_refused(document: Mapping[str, Any]) -> dict[str, int]:
    """The units of each line (by line id) back on a return whose refund the gateway refused: every
    refund recorded for the return failed, none of their parts approved, and nothing else settled
    its units (_SETTLED_BESIDES_REFUNDS). API.md takes revenue out "when ... units are refunded on
    return": these were not, so they stay sold until a refund of them goes through (the workflow,
    or a receipt sent again, asks again). A pending refund counts as refunded, as everywhere
    (core.refunds.given_back_for_units): only the gateway's refusal keeps units sold, so a typical
    return moves revenue once. The units are those the return's last refused refund was for
    (PaymentRefund.lines: each attempt is for the return's units). {} for nearly every order,
    read from the document alone."""
    refunds = (document.get("payment") or {}).get("refunds") or []
    if not any(refund.get("status") == RefundStatus.FAILED for refund in refunds):
        return {}
    settled = {return_id for name in _SETTLED_BESIDES_REFUNDS for return_id in document.get(name) or {}}
    refused: dict[str, list[Mapping[str, Any]]] = {}
    for refund in refunds:
        return_id = refund.get("return_id")
        if not return_id or return_id in settled:
            continue
        approved = any(part.get("status") == RefundStatus.SUCCEEDED for part in refund.get("parts") or [])
        if refund.get("status", RefundStatus.SUCCEEDED) != RefundStatus.FAILED or approved:
            settled.add(return_id)
            refused.pop(return_id, None)
        elif refund.get("lines"):
            refused[return_id] = refund["lines"]
    units: dict[str, int] = {}
    for lines in refused.values():
        for share in lines:
            units[share["line_id"]] = units.get(share["line_id"], 0) + int(share["quantity"])
    return units


def _fixed_time(value: Any) -> str:
    """One RFC 3339 UTC format with microseconds, so stored times compare as strings."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def placed_day(document: Mapping[str, Any]) -> str:
    return _fixed_time(document["created_at"])[:10]


def _changed_day(document: Mapping[str, Any]) -> str:
    """The UTC day of the write that made `document` (its `updated_at`; an image without one,
    its creation)."""
    return _fixed_time(document.get("updated_at") or document["created_at"])[:10]


def _deltas(before: Contribution, after: Contribution) -> dict[Key, dict[str, Decimal]]:
    deltas = {}
    for key in sorted(set(before.counters) | set(after.counters)):
        was, now = before.counters.get(key, {}), after.counters.get(key, {})
        delta = {a: now.get(a, Decimal(0)) - was.get(a, Decimal(0)) for a in sorted(set(was) | set(now))}
        delta = {a: v for a, v in delta.items() if v != 0}
        if delta:
            deltas[key] = delta
    return deltas


# Stands for the day an order's revenue was filed under until a change needs to know it.
_FILED = "filed"


def aggregate_change(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    filing: Callable[[str], Filing] = lambda order_id: Filing(),
    later: Callable[[str, int], WentBy] = lambda order_id, version: WentBy(),
) -> AggregateChange:
    """The counter updates an order change means (`old` None for a new order): only the
    counters that differ, each as an atomic ADD of the difference. A change that begins counting
    the order's revenue files it under its own day; one of an order already counting moves it on
    the day it was filed under as its previous version stood. `filing(order_id)` says that day
    (Filing.day_before), and whether an earlier version
    counted a replacement's credit out of `ordered`; it is asked only by a change that moves either
    (a cancel, units returned or cancelled), never by a ship or a delivery, which move neither.

    A change that would record a filing (a day other than the order's placing) asks
    `later(order_id, version)` what the changes of the order already applied after it went by:
    none, but for a parked record replayed after them (EventsFailuresAlarm's runbook), which then
    goes by the same (a cancel applied first took the revenue out of the day it was placed), so
    each amount comes out of where it went in, whatever order the records were applied in."""
    order_id, version = str(new["id"]), int(new.get("version", 0))
    found: list[Filing] = []
    read: dict[str, Any] = {}

    def recorded() -> Filing:
        if not found:
            found.append(filing(order_id))
        return found[0]

    credit = False
    if old is not None and credit_in_use(old) != credit_in_use(new):
        credit = read["credit"] = recorded().credit
    asked: list[WentBy] = []

    def went_by_later() -> WentBy:
        if not asked:
            asked.append(later(order_id, version))
        return asked[0]

    was_counted, counted = old is not None and counts_revenue(old), counts_revenue(new)
    filed_on, day = None, _FILED
    if was_counted:
        deltas = _deltas(contribution(old, _FILED, credit), contribution(new, _FILED, credit))
        if any(key[0].startswith(REPORT_PK) for key in deltas):
            day = read["day"] = recorded().day_before(version) or placed_day(new)
            deltas = _deltas(contribution(old, day, credit), contribution(new, day, credit))
    else:
        day = _changed_day(new)
        if counted and day != placed_day(new):
            day = went_by_later().day or day
            filed_on = day if day != placed_day(new) else None
        deltas = _deltas(contribution(old, "", credit), contribution(new, day, credit))
    customer = new["customer"]
    updates: list[CounterUpdate] = []
    for key, delta in deltas.items():
        sets = {}
        if key[0].startswith(CUSTOMER_PK):
            sets = {"email": customer["email"], **({"name": customer["name"]} if customer.get("name") else {})}
        updates.append(CounterUpdate(key[0], key[1], delta, sets))
    report_days = []
    if any(update.pk.startswith(REPORT_PK) for update in updates):
        pk, sk = report_channels_key(new["currency"], day)
        report_days.append((pk, sk, str(new["channel"])))
    seen = None
    if old is None:
        seen = CustomerSeen(
            customer["id"], new["channel"], customer["email"], _fixed_time(new["created_at"]), customer.get("name")
        )
    return AggregateChange(order_id, version, updates, seen, report_days, filed_on, WentBy(**read))


# --- Read side --------------------------------------------------------------------------------


class CustomerTotal(Shown):
    currency: str
    ordered: Money
    refunded: Money


class CustomerView(Shown):
    """`GET /customers/{id}`: the contract's customer."""

    id: str
    # As its latest order gave them: one recorded before invisible characters were refused shows
    # each as U+FFFD, as that order does.
    email: Annotated[str, VisibleName]
    name: Annotated[str, VisibleName] | None = None
    orders_count: int
    first_order_at: str | None = None
    last_order_at: str | None = None
    totals: list[CustomerTotal]
    returns_count: int
    payment_failures: int


def merged(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A customer's rows of several channels as one: counters summed, the earliest first order
    and the latest last order, the email of the row with the latest order, and the name of the
    row whose name came from the latest order that gave one (`name_at`; a row named before names
    were timed, by its last order's time, as before)."""
    rows = sorted(rows, key=lambda row: str(row.get("last_order_at") or ""))
    result: dict[str, Any] = {}
    for row in rows:
        for name, value in row.items():
            if name in ("pk", "sk", "name", "name_at"):
                continue
            if name == "first_order_at":
                result[name] = min(result.get(name, value), value)
            elif isinstance(value, Decimal | int) and not isinstance(value, bool):
                result[name] = result.get(name, Decimal(0)) + value
            else:
                result[name] = value  # the latest row's email and last_order_at win
    named = [row for row in rows if row.get("name")]
    if named:
        result["name"] = max(named, key=lambda row: str(row.get("name_at") or row.get("last_order_at") or ""))["name"]
    return result


def customer_view(customer_id: str, item: Mapping[str, Any]) -> CustomerView | None:
    """A stored customer aggregate as the API shows it; None when it holds no order."""
    orders = int(item.get("orders_count") or 0)
    if orders <= 0:
        return None
    currencies = sorted({name.split("_", 1)[1] for name in item if name.startswith(("ordered_", "refunded_"))})
    totals = [
        CustomerTotal(
            currency=currency,
            ordered=Money.summed(Decimal(item.get(f"ordered_{currency}") or 0), currency),
            refunded=Money.summed(Decimal(item.get(f"refunded_{currency}") or 0), currency),
        )
        for currency in currencies
    ]
    return CustomerView(
        id=customer_id,
        email=str(item.get("email", "")),
        name=item.get("name"),
        orders_count=orders,
        first_order_at=item.get("first_order_at"),
        last_order_at=item.get("last_order_at"),
        totals=totals,
        returns_count=int(item.get("returns_count") or 0),
        payment_failures=int(item.get("payment_failures") or 0),
    )


class ProductRow(BaseModel, defer_build=True):
    sku: str
    units: int
    revenue: Money


class CustomerRow(BaseModel, defer_build=True):
    customer_id: str
    orders: int
    revenue: Money


class RegionRow(BaseModel, defer_build=True):
    country: str
    region: str | None
    orders: int
    revenue: Money


def top_rows(
    kind: ReportKind, currency: str, day_rows: Iterable[tuple[str, Mapping[str, Any]]], limit: int
) -> list[ProductRow] | list[CustomerRow] | list[RegionRow]:
    """Sums each row key over the days read ((sk, item) pairs), and keeps the `limit` highest
    by revenue (ties by key, so a page is stable). Rows whose counters net to nothing (an order
    allocated then cancelled) are left out."""
    sums: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for sk, item in day_rows:
        for attribute in ("units", "orders", "revenue"):
            sums[sk][attribute] += Decimal(item.get(attribute) or 0)
    count = "units" if kind is ReportKind.PRODUCTS else "orders"
    kept = [(sk, row) for sk, row in sums.items() if row[count] > 0 or row["revenue"] != 0]
    kept.sort(key=lambda pair: (-pair[1]["revenue"], pair[0]))

    def money(amount: Decimal) -> Money:
        return Money.summed(amount, currency)  # over many orders: beyond one order's limit, maybe

    top = kept[:limit]
    if kind is ReportKind.PRODUCTS:
        return [ProductRow(sku=sk, units=int(r["units"]), revenue=money(r["revenue"])) for sk, r in top]
    if kind is ReportKind.CUSTOMERS:
        return [CustomerRow(customer_id=sk, orders=int(r["orders"]), revenue=money(r["revenue"])) for sk, r in top]
    rows = []
    for sk, r in top:
        country, _, region = sk.partition("#")
        rows.append(
            RegionRow(country=country, region=region or None, orders=int(r["orders"]), revenue=money(r["revenue"]))
        )
    return rows


# --- Store port and the queries over it --------------------------------------------------------


class AggregateStore(Protocol):
    def apply(self, change: AggregateChange) -> bool:
        """Apply the change's counters once per (order, version), with its `filed_on` day when it
        has one, and what it `went_by` kept with its marker: False when already applied."""

    def filing(self, order_id: str) -> Filing:
        """The last `filed_on` day applied for the order (None when none was: its revenue is
        filed under the day it was placed) and every one with the version that applied it, and
        whether an earlier version counted the order's exchange credit out of `ordered` (it
        recorded so with a replacement's first record)."""

    def went_by(self, order_id: str, version: int) -> WentBy:
        """What the changes of the order applied after `version` went by (`AggregateChange.went_by`,
        the earliest that read each): the day, and the credit."""

    def customer_items(self, customer_id: str) -> dict[str, dict[str, Any]]:
        """The customer's rows by channel (one partition)."""

    def customer_ids(
        self, email: str, channel: str | None, limit: int, cursor: str | None
    ) -> tuple[list[str], str | None]:
        """Up to `limit` of the customers who ordered under `email` (any case) in `channel` (None:
        in any), after `cursor`, and the cursor of the next page (None: no more). The cursor names
        only a customer the page showed; InvalidCursor for one not issued for this email."""

    def report_channels(self, currency: str, start: str, end: str) -> dict[str, list[str]]:
        """The channels with report rows in `currency`, by day from `start` to `end` (inclusive)."""

    def report_rows(self, pks: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
        """The (sk, item) rows of the partitions `pks`, partition after partition in their order
        (a store may read them concurrently)."""


# A report reads one partition per day and channel with report rows (the day registry names
# them): the range is bounded so a request stays a bounded number of queries.
MAX_REPORT_DAYS = 366
DEFAULT_REPORT_DAYS = 30


class Aggregates:
    """`GET /customers` and `GET /reports/*` over the stored aggregates."""

    def __init__(self, store: AggregateStore, clock: Callable[[], datetime]):
        self._store = store
        self._clock = clock

    def customer(self, customer_id: str, channel: str | None) -> CustomerView:
        view = self._view(customer_id, channel)
        if view is None:
            raise NotFound(f"no customer {customer_id} with orders here")
        return view

    def customers_by_email(
        self, email: str, channel: str | None, limit: int = 25, cursor: str | None = None
    ) -> tuple[list[CustomerView], str | None]:
        """A page of the customers who ordered under `email`, and the next page's cursor."""
        # By the channels the email was used in: a channel key that searched another channel's
        # email would learn which of its own customers that address belongs to.
        ids, next_cursor = self._store.customer_ids(email, channel, limit, cursor)
        views = (self._view(customer_id, channel) for customer_id in ids)
        return [view for view in views if view is not None], next_cursor

    def _view(self, customer_id: str, channel: str | None) -> CustomerView | None:
        rows = self._store.customer_items(customer_id)
        if channel is not None:
            rows = {channel: rows[channel]} if channel in rows else {}
        return customer_view(customer_id, merged(rows.values()))

    def report(
        self,
        kind: ReportKind,
        currency: str,
        *,
        start: date | None,
        end: date | None,
        channel: str | None,
        limit: int,
    ) -> list[ProductRow] | list[CustomerRow] | list[RegionRow]:
        try:
            minor_units(currency)
        except ValueError as error:
            raise InvalidRequest(str(error), details=[{"field": "currency", "message": str(error)}]) from None
        end = end or self._clock().date()
        if start is None:
            # the first days of the calendar have no 30 days before them
            start = end - timedelta(days=min(DEFAULT_REPORT_DAYS - 1, (end - date.min).days))
        days = (end - start).days + 1
        if days < 1:
            raise InvalidRequest("from is after to", details=[{"field": "from", "message": "must not be after to"}])
        if days > MAX_REPORT_DAYS:
            message = f"a report covers at most {MAX_REPORT_DAYS} days"
            raise InvalidRequest(message, details=[{"field": "from", "message": message}])
        # Only the days and channels the registry names: a day without rows costs no query, which
        # keeps a year-long report of a channel that sells now and then to a handful of reads.
        channels = self._store.report_channels(currency, start.isoformat(), end.isoformat())
        pks = [
            report_pk(kind, currency, name, day)
            for day, on_day in sorted(channels.items())
            for name in on_day
            if channel is None or name == channel
        ]
        return top_rows(kind, currency, self._store.report_rows(pks), limit)

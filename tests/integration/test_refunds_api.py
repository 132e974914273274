"""POST and GET /orders/{id}/refunds in-process on moto: appeasements through the `test` gateway,
Idempotency-Key, the cap, a refused refund, scopes and channels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from core import hookimpl
from core.models import HistoryEntry, Order, OrderLine, Payment, PaymentRefund, Totals
from core.refunds import refund_id_for
from core.status import OrderStatus, PaymentStatus
from core.workflow_types import PaymentResult
from tests.e2e.client import assert_error
from tests.integration.in_process import InProcessApi, in_process_api
from tests.unit.conftest import a_stored_order, usd

APPROVES = "auth_" + "0" * 20
REFUSES = "auth_" + "1" * 20 + "_declines_refund"  # what tok_refund_decline's authorization looks like


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessApi]:
    with in_process_api() as started:
        yield started


def a_captured_order(order_id: str, *, authorization: str = APPROVES, captured: str = "30.00",
                     channel: str = "web") -> Order:  # fmt: skip
    """Stored as a shipped order whose whole 30.00 was captured (or `captured` of it)."""
    from functions.bootstrap import Config, bootstrap

    total, zero = usd("30.00"), usd("0.00")
    status = PaymentStatus.CAPTURED if usd(captured) == total else PaymentStatus.PARTIALLY_CAPTURED
    if usd(captured) == zero:
        status = PaymentStatus.AUTHORIZED
    order = a_stored_order(
        ("TSHIRT", 3), id=order_id, channel=channel,
        status=OrderStatus.SHIPPED if status is PaymentStatus.CAPTURED else OrderStatus.ALLOCATED,
        totals=Totals(subtotal=total, discount=zero, shipping=zero, tax=zero, grand_total=total),
        payment=Payment(method="test", status=status, authorized=total, captured=usd(captured), refunded=zero,
                        authorization=authorization),
    )  # fmt: skip
    created = HistoryEntry(at=order.created_at, type="created", to_status=OrderStatus.PENDING, actor="key_admin")
    bootstrap(Config.from_env()).order_repository.add(order, created, payment_token="tok_approve")
    return order


def order_id(n: int) -> str:
    return "ord_" + f"{n:a>24}".replace("0", "b").replace("1", "c")[:24]


def refund(api: InProcessApi, oid: str, amount: str, *, key: Any = None, headers: dict | None = None, **kw: Any):
    body = {"amount": {"amount": amount, "currency": "USD"}, "reason": "late delivery"}
    return api.post(f"/orders/{oid}/refunds", json=body, headers=headers, **({"key": key} if key else {}), **kw)


def issue_key(api: InProcessApi, *scopes: str, channel: str | None = None) -> str:
    body: dict[str, Any] = {"name": "cs", "scopes": list(scopes), **({"channel": channel} if channel else {})}
    answer = api.post("/api-keys", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["key"]


def test_an_appeasement_is_refunded_listed_and_counted(api):
    oid = order_id(1)
    a_captured_order(oid)

    answer = refund(api, oid, "5.00")

    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert made["id"].startswith("ref_") and made["order_id"] == oid
    assert (made["status"], made["amount"], made["reason"]) == (
        "succeeded", {"amount": "5.00", "currency": "USD"}, "late delivery",
    )  # fmt: skip
    order = api.get(f"/orders/{oid}").json()
    assert order["payment"]["refunded"]["amount"] == "5.00"
    assert order["payment"]["status"] == "partially_refunded"
    assert api.get(f"/orders/{oid}/refunds").json()["items"] == [made]
    history = [h["type"] for h in api.get(f"/orders/{oid}/history").json()["items"]]
    assert history[-2:] == ["refund_requested", "payment_refunded"]


def test_the_same_idempotency_key_refunds_once_and_another_body_under_it_is_409(api):
    oid = order_id(2)
    a_captured_order(oid)

    first = refund(api, oid, "5.00", headers={"Idempotency-Key": "appease-1"})
    again = refund(api, oid, "5.00", headers={"Idempotency-Key": "appease-1"})
    other = refund(api, oid, "6.00", headers={"Idempotency-Key": "appease-1"})

    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert_error(other, 409, "idempotency_key_reused")
    assert api.get(f"/orders/{oid}").json()["payment"]["refunded"]["amount"] == "5.00"
    assert len(api.get(f"/orders/{oid}/refunds").json()["items"]) == 1


def test_another_body_under_the_key_of_a_refund_left_pending_is_409_and_the_same_body_finishes_it(api):
    from functions.bootstrap import Config, bootstrap

    oid = order_id(7)
    order = a_captured_order(oid)
    # The first request held its refund and stopped before the gateway answered (a Lambda timeout,
    # or a 503 while the gateway stayed down): nothing was stored under the Idempotency-Key.
    held = PaymentRefund(id=refund_id_for(oid, "api:key_admin:appease-9"), amount=usd("5.00"),
                         reason="late delivery", status="pending", at=order.created_at)  # fmt: skip
    payment = order.payment.model_copy(update={"refunds": [held]})
    stored = order.model_copy(update={"payment": payment, "version": order.version + 1})
    bootstrap(Config.from_env()).order_repository.update(stored, order, [])

    other = refund(api, oid, "6.00", headers={"Idempotency-Key": "appease-9"})
    same = refund(api, oid, "5.00", headers={"Idempotency-Key": "appease-9"})

    assert_error(other, 409, "idempotency_key_reused")
    assert same.status_code == 201, same.text
    assert (same.json()["id"], same.json()["status"], same.json()["amount"]["amount"]) == (held.id, "succeeded", "5.00")
    assert api.get(f"/orders/{oid}").json()["payment"]["refunded"]["amount"] == "5.00"


def test_more_than_captured_minus_refunded_is_422_and_the_rest_can_be_refunded(api):
    oid = order_id(3)
    a_captured_order(oid)
    assert refund(api, oid, "25.00").status_code == 201

    assert_error(refund(api, oid, "5.01"), 422, "refund_exceeds_captured", "amount")
    last = refund(api, oid, "5.00")

    assert last.status_code == 201 and last.json()["status"] == "succeeded"
    payment = api.get(f"/orders/{oid}").json()["payment"]
    assert (payment["status"], payment["refunded"]["amount"]) == ("refunded", "30.00")


def test_a_refund_of_an_order_refunded_in_full_is_422_refund_exceeds_captured(api):
    # Captured minus refunded is 0: any amount is more than it (the contract's 422), not a 409.
    oid = order_id(73)
    a_captured_order(oid)
    assert refund(api, oid, "30.00").json()["status"] == "succeeded"

    assert_error(refund(api, oid, "0.01"), 422, "refund_exceeds_captured", "amount")
    assert api.get(f"/orders/{oid}").json()["payment"]["status"] == "refunded"


def test_a_refund_the_gateway_refuses_is_201_failed_and_never_counted(api):
    oid = order_id(4)
    a_captured_order(oid, authorization=REFUSES)

    answer = refund(api, oid, "30.00")

    assert answer.status_code == 201 and answer.json()["status"] == "failed"
    payment = api.get(f"/orders/{oid}").json()["payment"]
    assert (payment["status"], payment["refunded"]["amount"]) == ("captured", "0.00")
    assert [r["status"] for r in api.get(f"/orders/{oid}/refunds").json()["items"]] == ["failed"]
    history = [h["type"] for h in api.get(f"/orders/{oid}/history").json()["items"]]
    assert history[-3:] == ["refund_requested", "payment_refund_failed", "refund_failed"]


def test_a_refund_of_an_order_with_nothing_captured_is_422_refund_exceeds_captured_and_a_bad_amount_422(api):
    # API.md: "More than captured minus refunded → 422 `refund_exceeds_captured`". With nothing
    # captured that is 0, so any amount is more than it: the contract's 422, not a 409.
    oid = order_id(5)
    a_captured_order(oid, captured="0.00")

    assert_error(refund(api, oid, "1.00"), 422, "refund_exceeds_captured", "amount")
    assert api.get(f"/orders/{oid}/refunds").json()["items"] == []
    assert api.get(f"/orders/{oid}").json()["payment"]["status"] == "authorized"
    assert_error(refund(api, oid, "0.00"), 422)
    assert_error(refund(api, oid, "1.001"), 422)


def test_refunds_need_their_scope_and_another_channels_order_is_404(api):
    oid = order_id(6)
    a_captured_order(oid, channel="web")
    reader = issue_key(api, "orders:read", "orders:write")
    other_channel = issue_key(api, "refunds:write", "orders:read", channel="shop")
    own_channel = issue_key(api, "refunds:write", "orders:read", channel="web")

    assert_error(refund(api, oid, "1.00", key=reader), 403)
    assert_error(refund(api, oid, "1.00", key=other_channel), 404)
    assert_error(api.get(f"/orders/{oid}/refunds", key=other_channel), 404)
    assert_error(refund(api, "ord_" + "z" * 24, "1.00"), 404)
    assert refund(api, oid, "1.00", key=own_channel).status_code == 201
    assert len(api.get(f"/orders/{oid}/refunds", key=own_channel).json()["items"]) == 1


def test_the_refunds_of_an_order_are_a_list_in_the_contracts_shape(api):
    # API.md: a list answers {"items": [...], "next_cursor": "..." | null}; one page holds them all here.
    oid = order_id(72)
    a_captured_order(oid)
    assert refund(api, oid, "2.00").status_code == 201

    listed = api.get(f"/orders/{oid}/refunds")

    assert listed.status_code == 200, listed.text
    assert set(listed.json()) == {"items", "next_cursor"}
    assert listed.json()["next_cursor"] is None
    assert [item["amount"]["amount"] for item in listed.json()["items"]] == ["2.00"]


def test_the_refunds_of_an_order_are_paged_by_limit_and_cursor_oldest_first(api):
    oid = order_id(75)
    a_captured_order(oid)
    made = [refund(api, oid, amount).json()["id"] for amount in ("1.00", "2.00", "3.00")]

    first = api.get(f"/orders/{oid}/refunds", params={"limit": 2}).json()
    second = api.get(f"/orders/{oid}/refunds", params={"limit": 2, "cursor": first["next_cursor"]}).json()

    assert [r["id"] for r in first["items"]] == made[:2] and first["next_cursor"]
    assert ([r["id"] for r in second["items"]], second["next_cursor"]) == (made[2:], None)
    assert_error(api.get(f"/orders/{oid}/refunds", params={"limit": 0}), 422, None, "limit")
    assert_error(api.get(f"/orders/{oid}/refunds", params={"limit": 101}), 422, None, "limit")
    other = order_id(76)
    a_captured_order(other)
    foreign = api.get(f"/orders/{other}/refunds", params={"cursor": first["next_cursor"]})
    assert_error(foreign, 422, "invalid_cursor", "cursor")


class RefundPluginRemoved:
    """No payment plugin answers a refund any more: the plugin of the order's method was removed."""

    @hookimpl(wrapper=True)
    def oms_payment_refund(self):
        yield
        return None


def test_a_refund_left_pending_whose_payment_plugin_was_removed_is_502_and_stays_pending_until_it_is_back(api):
    # Before: the repeat answered 201 `failed` and freed the 5.00, though the first request may have
    # refunded it through the plugin: refunded again later, the customer got it twice.
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap

    oid = order_id(37)
    order = a_captured_order(oid)
    held = PaymentRefund(id=refund_id_for(oid, "api:key_admin:appease-37"), amount=usd("5.00"),
                         reason="late delivery", status="pending", at=order.created_at)  # fmt: skip
    payment = order.payment.model_copy(update={"refunds": [held]})
    stored = order.model_copy(update={"payment": payment, "version": order.version + 1})
    bootstrap(Config.from_env()).order_repository.update(stored, order, [])
    plugins, removed = container().plugins, RefundPluginRemoved()
    plugins.register(removed)
    try:
        repeats = [refund(api, oid, "5.00", headers={"Idempotency-Key": "appease-37"}) for _ in range(2)]
        fresh = refund(api, oid, "5.00")  # nothing ever asked a gateway for it: it fails at once
    finally:
        plugins.unregister(removed)

    for repeat in repeats:
        assert_error(repeat, 502, "payment_gateway_error")
        assert "no payment plugin takes method 'test'" in repeat.json()["error"]["message"]
    assert fresh.status_code == 201 and fresh.json()["status"] == "failed"
    listed = api.get(f"/orders/{oid}/refunds").json()["items"]
    assert [(r["id"], r["status"]) for r in listed] == [(held.id, "pending"), (fresh.json()["id"], "failed")]
    history = api.get(f"/orders/{oid}/history").json()["items"]
    unanswered = [h for h in history if h["type"] == "payment_refund_failed" and h["detail"]["refund_id"] == held.id]
    assert [h["detail"]["kind"] for h in unanswered] == ["no_plugin"]

    done = refund(api, oid, "5.00", headers={"Idempotency-Key": "appease-37"})  # the plugin is back
    assert done.status_code == 201, done.text
    assert (done.json()["id"], done.json()["status"]) == (held.id, "succeeded")
    assert api.get(f"/orders/{oid}").json()["payment"]["refunded"]["amount"] == "5.00"


class RefundCalls:
    """Records each refund asked of the payment plugin: (authorization, amount, idempotency key)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    @hookimpl(wrapper=True)
    def oms_payment_refund(self, authorization, amount, idempotency_key):
        self.calls.append((authorization, str(amount.amount), idempotency_key))
        return (yield)


def test_an_appeasement_spanning_two_authorizations_refunds_each_against_its_own_captures(api):
    # Before: the whole 25.00 was refunded against the renewed authorization, which captured only
    # 10.00 of it; a real gateway refuses that, or refunds a charge that was not the customer's.
    from core.models import EarlierCaptures
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap

    oid = order_id(151)
    order = a_captured_order(oid)
    renewed = "auth_" + "2" * 20
    stored = order.model_copy(update={
        "payment": order.payment.model_copy(update={"authorization": renewed}),
        "earlier_captures": [EarlierCaptures(authorization=APPROVES, captured=usd("20.00"))],
        "version": order.version + 1,
    })  # fmt: skip
    bootstrap(Config.from_env()).order_repository.update(stored, order, [])
    plugins, calls = container().plugins, RefundCalls()
    plugins.register(calls)
    try:
        answer = refund(api, oid, "25.00", headers={"Idempotency-Key": "appease-151"})
    finally:
        plugins.unregister(calls)

    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert (made["status"], made["amount"]["amount"]) == ("succeeded", "25.00")
    key = f"{oid}:refund:{made['id']}"
    assert calls.calls == [(APPROVES, "20.00", f"{key}:{APPROVES}"), (renewed, "5.00", f"{key}:{renewed}")]
    payment = api.get(f"/orders/{oid}").json()["payment"]
    assert payment["refunded"]["amount"] == "25.00"
    assert [(p["authorization"], p["amount"]["amount"], p["status"]) for p in payment["refunds"][0]["parts"]] == [
        (APPROVES, "20.00", "succeeded"), (renewed, "5.00", "succeeded")
    ]  # fmt: skip
    assert_error(refund(api, oid, "5.01"), 422, "refund_exceeds_captured", "amount")


def test_an_appeasement_whose_second_authorization_refuses_shows_what_went_back_and_what_did_not(api):
    # The 20.00 captured under the first authorization went back; the renewed one refused its 5.00.
    # Before: the answer and the list said 25.00 `failed` while `payment.refunded` said 20.00.
    from core.models import EarlierCaptures
    from core.refunds import went_back_id
    from functions.bootstrap import Config, bootstrap

    oid = order_id(152)
    order = a_captured_order(oid, authorization=REFUSES)
    stored = order.model_copy(update={
        "earlier_captures": [EarlierCaptures(authorization=APPROVES, captured=usd("20.00"))],
        "version": order.version + 1,
    })  # fmt: skip
    bootstrap(Config.from_env()).order_repository.update(stored, order, [])

    answer = refund(api, oid, "25.00", headers={"Idempotency-Key": "appease-152"})

    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert (made["status"], made["amount"]["amount"]) == ("failed", "5.00")
    assert refund(api, oid, "25.00", headers={"Idempotency-Key": "appease-152"}).json() == made
    first = api.get(f"/orders/{oid}/refunds", params={"limit": 1}).json()
    rest = api.get(f"/orders/{oid}/refunds", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [(r["id"], r["status"], r["amount"]["amount"]) for r in first["items"] + rest["items"]] == [
        (made["id"], "failed", "5.00"), (went_back_id(made["id"]), "succeeded", "20.00")
    ]  # fmt: skip
    assert rest["next_cursor"] is None
    assert api.get(f"/orders/{oid}").json()["payment"]["refunded"]["amount"] == "20.00"


def test_the_order_shows_a_split_refund_refused_in_part_as_the_refunds_list_does(api):
    # GET /orders/{id} showed the refund once, `failed` for 25.00 with its parts: its `succeeded`
    # refunds summed to 0.00 while `payment.refunded` said 20.00, and the list's ids were not there.
    import json

    from core.domain_events import api_order
    from core.models import EarlierCaptures
    from functions.bootstrap import Config, bootstrap

    oid = order_id(153)
    order = a_captured_order(oid, authorization=REFUSES)
    stored = order.model_copy(update={
        "earlier_captures": [EarlierCaptures(authorization=APPROVES, captured=usd("20.00"))],
        "version": order.version + 1,
    })  # fmt: skip
    repository = bootstrap(Config.from_env()).order_repository
    repository.update(stored, order, [])
    assert refund(api, oid, "25.00", headers={"Idempotency-Key": "appease-153"}).status_code == 201

    listed = [(r["id"], r["status"], r["amount"]["amount"]) for r in api.get(f"/orders/{oid}/refunds").json()["items"]]
    kept = repository.get(oid)
    for payment in (api.get(f"/orders/{oid}").json()["payment"], api_order(json.loads(kept.stored_json()))["payment"]):
        shown = [(r["id"], r["status"], r["amount"]["amount"]) for r in payment["refunds"]]
        assert shown == listed
        assert sum(float(amount) for _, status, amount in shown if status == "succeeded") == 20.00
        assert payment["refunded"]["amount"] == "20.00"
        assert [[part["status"] for part in r["parts"]] for r in payment["refunds"]] == [["failed"], ["succeeded"]]
    # What is stored is the refund as the gateway answered it, once.
    assert [(r.id, r.status, str(r.amount.amount)) for r in kept.payment.refunds] == [(listed[0][0], "failed", "25.00")]


class BidiReferences:
    """A gateway that approves every refund under a reference holding a right-to-left override, an
    invisible character and a terminal escape; records the authorization each refund names (what
    the OMS sends back to the gateway)."""

    REFERENCE = "re_\u202egnp.exe\u200b\x1b[2J"

    def __init__(self) -> None:
        self.named: list[str] = []

    @hookimpl(wrapper=True)
    def oms_payment_refund(self, authorization):
        self.named.append(authorization)
        yield  # the test gateway knows no such authorization: this one approves it
        return PaymentResult(outcome="approved", reference=self.REFERENCE)


def test_a_gateways_references_are_shown_escaped_and_sent_back_to_it_exactly(api):
    # Before: GET /orders/{id}, its history and the events showed an authorization or a refund's
    # reference as the gateway gave it, so a U+202E in it reordered what an operator read.
    from functions.api.dependencies import container
    from functions.bootstrap import Config, bootstrap

    oid = order_id(161)
    authorization = "auth_\u202e" + "0" * 20 + "\\x"
    a_captured_order(oid, authorization=authorization)
    plugins, gateway = container().plugins, BidiReferences()
    plugins.register(gateway)
    try:
        made = refund(api, oid, "5.00", headers={"Idempotency-Key": "appease-161"})
    finally:
        plugins.unregister(gateway)

    assert made.status_code == 201, made.text
    assert gateway.named == [authorization]  # named back to the gateway exactly
    stored = bootstrap(Config.from_env()).order_repository.get(oid)
    assert stored.payment.authorization == authorization
    assert stored.payment.refunds[0].reference == BidiReferences.REFERENCE
    shown_authorization = "auth_\\u202e" + "0" * 20 + "\\\\x"
    shown_reference = "re_\\u202egnp.exe\\u200b\\x1b[2J"
    payment = api.get(f"/orders/{oid}").json()["payment"]
    assert (payment["authorization"], payment["refunds"][0]["reference"]) == (shown_authorization, shown_reference)
    listed = api.get("/orders", params={"limit": 100}).json()["items"]
    assert [o["payment"]["authorization"] for o in listed if o["id"] == oid] == [shown_authorization]
    history = api.get(f"/orders/{oid}/history").json()["items"]
    refunded = [h["detail"] for h in history if h["type"] == "payment_refunded"]
    assert [detail["reference"] for detail in refunded] == [shown_reference]
    assert "\u202e" not in json.dumps(history, ensure_ascii=False)


def test_an_appeased_over_capture_is_kept_on_the_refund_and_a_cancel_that_raises_it_refunds_only_the_rest(api):
    # 90.00 captured of an order that a cancel of units left costing 77.14: the gateway refused the
    # refund of the 12.86 three times (left to a person), who appeases it as the runbook says. A
    # cancel of the rest then leaves the order costing 30.00, and its repeat settles the payment.
    # Before: the repeat asked the gateway for all 60.00 held beyond the total, the 12.86 appeased
    # with it (the customer paid back twice). Now the appeasement keeps what of it gave that back.
    from functions.bootstrap import Config, bootstrap

    oid = order_id(154)
    order = a_captured_order(oid)
    asked = [
        PaymentRefund(id=refund_id_for(oid, f"{oid}:cancellation:{n}"), amount=usd("12.86"), reason="units cancelled",
                      status="pending", kind="cancellation", at=order.created_at)
        for n in (1, 2, 3)
    ]  # fmt: skip
    total = usd("77.14")
    left = order.model_copy(update={
        "totals": order.totals.model_copy(update={"subtotal": total, "grand_total": total}),
        "payment": order.payment.model_copy(update={
            "authorized": usd("90.00"), "captured": usd("90.00"), "status": PaymentStatus.CAPTURED, "refunds": asked,
        }),
        "version": order.version + 1,
    })  # fmt: skip
    repository = bootstrap(Config.from_env()).order_repository
    repository.update(left, order, [])
    # Each written pending, then refused by the gateway (a refund never starts failed: check_successor).
    for pending in asked:
        refused = left.payment.with_failed_refund(pending.id, None, "refused")
        repository.update(refused_left := left.model_copy(update={"payment": refused, "version": left.version + 1}),
                          left, [])  # fmt: skip
        left = refused_left

    for _ in range(2):  # the appeasement's retry is the same refund
        given = refund(api, oid, "12.86", headers={"Idempotency-Key": "appease-154"})
        assert (given.status_code, given.json()["status"]) == (201, "succeeded")
    kept = repository.get(oid, consistent=True)
    assert kept.payment.refunds[-1].over_capture == usd("12.86")
    requested = [h for h in api.get(f"/orders/{oid}/history").json()["items"] if h["type"] == "refund_requested"]
    assert requested[-1]["detail"]["over_capture"] == {"amount": "12.86", "currency": "USD"}
    # The cancel of the rest (a PEN not shipped) wrote its lines and died before settling the payment.
    shipped = kept.lines[0].model_copy(update={"shipped_quantity": 3})
    cancelled = OrderLine(line_id="L2", sku="PEN", quantity=0, unit_price=usd("47.14"), discount=usd("0.00"),
                          tax=usd("0.00"), total=usd("0.00"), cancelled_quantity=1)  # fmt: skip
    update = {"lines": [shipped, cancelled], "totals": order.totals, "version": kept.version + 1}
    raised = kept.model_copy(update=update)
    repository.update(raised, kept, [])

    answer = api.post(f"/orders/{oid}/cancel", json={"reason": "the rest is not needed"})

    assert answer.status_code == 200, answer.text
    refunds = [(r["status"], r["amount"]["amount"]) for r in api.get(f"/orders/{oid}/refunds").json()["items"]]
    assert refunds == [("failed", "12.86")] * 3 + [("succeeded", "12.86"), ("succeeded", "47.14")]
    payment = answer.json()["payment"]
    assert (payment["captured"]["amount"], payment["refunded"]["amount"]) == ("90.00", "60.00")


def test_an_appeasement_naming_a_version_changed_since_is_409_and_refunds_nothing(api):
    # A CS agent offers 5.00 on the order they read; meanwhile a colleague gave 10.00 for the same
    # complaint. The 5.00 went back too (If-Match ignored): the customer was appeased twice.
    oid = order_id(170)
    seen = a_captured_order(oid)
    assert refund(api, oid, "10.00").status_code == 201
    moved = api.get(f"/orders/{oid}").json()
    history = api.get(f"/orders/{oid}/history").json()["items"]

    stale = refund(api, oid, "5.00", headers={"If-Match": str(seen.version)})

    error = assert_error(stale, 409, "version_conflict", "If-Match")
    assert error["details"] == [{"field": "If-Match", "message": f"current version is {moved['version']}"}]
    assert api.get(f"/orders/{oid}").json() == moved
    assert [item["amount"]["amount"] for item in api.get(f"/orders/{oid}/refunds").json()["items"]] == ["10.00"]
    assert api.get(f"/orders/{oid}/history").json()["items"] == history
    current = refund(api, oid, "5.00", headers={"If-Match": f'"{moved["version"]}"'})
    assert (current.status_code, current.json()["status"]) == (201, "succeeded"), current.text
    assert_error(refund(api, oid, "1.00", headers={"If-Match": "W/7"}), 400, "malformed_header")


def test_a_keyed_appeasement_retried_with_the_if_match_it_was_read_at_answers_the_refund_it_made(api):
    # Its own refund moved the order's version: the retry (the same If-Match, the same key) is the
    # same request, answered as the first, even once its idempotency record was lost.
    import boto3

    from tests.integration.test_cancel_units_api import forget_idempotency_records

    oid = order_id(171)
    order = a_captured_order(oid)
    headers = {"Idempotency-Key": "appease-seen", "If-Match": str(order.version)}
    first = refund(api, oid, "5.00", headers=headers)
    assert (first.status_code, first.json()["status"]) == (201, "succeeded"), first.text

    forget_idempotency_records(boto3.client("dynamodb", region_name="us-east-1"))
    lost = refund(api, oid, "5.00", headers=headers)

    assert (lost.status_code, lost.json()) == (201, first.json()), lost.text
    assert api.get(f"/orders/{oid}").json()["payment"]["refunded"]["amount"] == "5.00"
    assert_error(refund(api, oid, "5.00", headers={**headers, "Idempotency-Key": "appease-new"}), 409,
                 "version_conflict")  # fmt: skip

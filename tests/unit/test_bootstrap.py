"""The composition root: bootstrap(config, ...) takes what a test gives it and builds the rest on
first use; a handler module's WarmContainer keeps one container while warm, and tests override it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.models import utc_now
from functions.bootstrap import Config, Container, WarmContainer, bootstrap, forget_warm_containers
from tests.builders import product
from tests.fakes import FakeCatalog, FakeInventory, FakeOrders

CONFIG = Config(orders_table="orders", inventory_table="inventory", catalog_table="catalog", idempotency_table="idem")


def test_config_from_env_reads_the_tables_and_what_a_function_may_be_given(monkeypatch: pytest.MonkeyPatch):
    for name, value in {
        "ORDERS_TABLE": "o",
        "INVENTORY_TABLE": "i",
        "CATALOG_TABLE": "c",
        "IDEMPOTENCY_TABLE": "d",
        "OMS_CATALOG_CACHE_SECONDS": "2.5",
        "IMPORT_QUEUE_URL": "https://queue",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("LABELS_BUCKET", "ORDER_WORKFLOW_ARN"):
        monkeypatch.delenv(name, raising=False)

    assert Config.from_env() == Config(
        orders_table="o",
        inventory_table="i",
        catalog_table="c",
        idempotency_table="d",
        catalog_cache_seconds=2.5,
        import_queue_url="https://queue",
    )


def test_a_missing_table_name_fails_at_once(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ORDERS_TABLE", raising=False)

    with pytest.raises(KeyError, match="ORDERS_TABLE"):
        Config.from_env()


def test_given_parts_are_used_and_what_depends_on_them_is_built_on_them():
    catalog = FakeCatalog()
    catalog.put_product(product("MUG"))
    container = bootstrap(CONFIG, catalog_repository=catalog, inventory_repository=FakeInventory())

    assert container.catalog.get_product("MUG").sku == "MUG"  # through the cache, onto the fake
    assert container.inventory.summary("MUG").locations == []
    assert container.cached_catalog is container.cached_catalog  # built once per container


def test_a_part_that_does_not_exist_is_refused_by_name():
    with pytest.raises(TypeError, match="order_repo"):
        bootstrap(CONFIG, order_repo=FakeOrders())


def test_the_clock_is_a_part_too():
    fixed = utc_now()

    container = bootstrap(CONFIG, clock=lambda: fixed, catalog_repository=FakeCatalog())
    saved, created = container.catalog.put_product("MUG", _product_input())

    assert created and saved.updated_at == fixed


def test_a_function_that_needs_a_setting_it_lacks_says_which():
    container = bootstrap(CONFIG, sqs=object(), stepfunctions=object())

    with pytest.raises(RuntimeError, match="IMPORT_QUEUE_URL"):
        container.import_splitter()
    with pytest.raises(RuntimeError, match="ORDER_WORKFLOW_ARN"):
        _ = container.workflow_starter


@pytest.mark.parametrize(
    ("setting", "part"),
    [("pickup_expiry_days", "actions"), ("hold_expiry_days", "jeopardy_scan"), ("return_expiry_days", "jeopardy_scan")],
)
def test_a_negative_expiry_is_refused_as_0_means_never(setting: str, part: str):
    container = bootstrap(CONFIG._replace(**{setting: -1.0}), order_repository=FakeOrders())

    with pytest.raises(ValueError, match="must be 0 \\(never\\) or a positive number of days"):
        getattr(container, part)


@pytest.mark.parametrize(
    ("setting", "part"),
    [("pickup_expiry_days", "actions"), ("hold_expiry_days", "jeopardy_scan"), ("return_expiry_days", "jeopardy_scan")],
)
@pytest.mark.parametrize("days", [36501.0, 1e7, float("inf"), float("nan")])
def test_an_expiry_past_100_years_or_not_a_number_is_refused_where_it_is_read(setting: str, part: str, days: float):
    # Meant as "practically never" (0 is never), 1e7 days put a ready pickup's collect_by past the
    # calendar (every POST .../ready a 500) and a hold's or a return's cut-off before it (every
    # jeopardy pass crashed, marking nothing), as OMS_SLA's 999999d did; NaN and inf the same.
    container = bootstrap(CONFIG._replace(**{setting: days}), order_repository=FakeOrders())

    with pytest.raises(ValueError, match="days, at most 36500"):
        getattr(container, part)


@pytest.mark.parametrize(
    ("setting", "name", "part"),
    [
        ("authorization_valid_days", "OMS_AUTHORIZATION_VALID_DAYS", "actions"),
        ("reconcile_after_minutes", "RECONCILE_AFTER_MINUTES", "reconciler"),
        ("reconcile_after_minutes", "RECONCILE_AFTER_MINUTES", "jeopardy_scan"),
        ("reconcile_after_minutes", "RECONCILE_AFTER_MINUTES", "pending_refund_sweep"),
        ("reconcile_park_after_minutes", "RECONCILE_PARK_AFTER_MINUTES", "reconciler"),
        ("webhook_retry_base_seconds", "WEBHOOK_RETRY_BASE_SECONDS", "retry_schedule"),
        ("webhook_retry_max_delay_seconds", "WEBHOOK_RETRY_MAX_DELAY_SECONDS", "retry_schedule"),
        ("webhook_retry_window_seconds", "WEBHOOK_RETRY_WINDOW_SECONDS", "retry_schedule"),
        ("catalog_cache_seconds", "OMS_CATALOG_CACHE_SECONDS", "cached_catalog"),
    ],
)
@pytest.mark.parametrize("value", [-1.0, 1e10, float("inf"), float("nan")])
def test_a_duration_setting_that_would_fail_every_request_or_pass_is_refused_by_name(
    setting: str, name: str, part: str, value: float
):
    # Each of these, read from the environment as a float, was taken as it came: NaN or inf made
    # timedelta raise (ValueError, OverflowError) naming no setting, 1e10 minutes put a pass's
    # cut-off before year 1 (every reconciler and jeopardy pass an OverflowError), 1e10 days of
    # authorization made every capture's "lapsed?" sum leave the calendar, a NaN or negative
    # webhook delay every retry's, and an infinite catalog cache kept a warm container's first read
    # of the products and rules for ever. Refused where read, by name: the function's log line says
    # which setting, and its errors alarm fires.
    config = CONFIG._replace(order_workflow_arn="arn:workflow", returns_table="returns", **{setting: value})
    container = bootstrap(config, order_repository=FakeOrders(), stepfunctions=object(), dynamodb=object())

    with pytest.raises(ValueError, match=f"^{name} must be .*at most"):
        getattr(container, part)


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("AUTHORIZER_TIMEOUT_SECONDS", "-5"),
        ("AUTHORIZER_TIMEOUT_SECONDS", "1e10"),
        ("AUTHORIZER_CACHE_SECONDS", "-1"),
        ("AUTHORIZER_CACHE_SECONDS", "1e10"),
    ],
)
def test_the_authorizer_settings_a_revocation_waits_on_are_refused_by_name_as_every_duration_is(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
):
    # README, Configuration: a *_SECONDS setting that is negative or over 100 years is refused
    # where a function reads it. These two were taken as they came: a negative cache or timeout
    # meant "no second flush" in silence, so a revocation raced by an authorizer run would stand
    # in the gateway's cache for as long as the stage really caches, and nothing said why.
    for table, value in {"ORDERS_TABLE": "o", "INVENTORY_TABLE": "i", "CATALOG_TABLE": "c", "IDEMPOTENCY_TABLE": "d",
                         "AUTHORIZER_TIMEOUT_SECONDS": "5", "AUTHORIZER_CACHE_SECONDS": "5"}.items():  # fmt: skip
        monkeypatch.setenv(table, value)
    monkeypatch.setenv(name, raw)
    container = bootstrap(Config.from_env(), dynamodb=object(), apigateway=object())

    with pytest.raises(ValueError, match=f"^{name} must be 0 or a positive number of seconds, at most"):
        _ = container.api_keys


def test_a_numeric_setting_that_is_not_a_number_is_refused_by_name(monkeypatch: pytest.MonkeyPatch):
    # float() alone said "could not convert string to float: '15m'", naming no setting.
    for name in ("ORDERS_TABLE", "INVENTORY_TABLE", "CATALOG_TABLE", "IDEMPOTENCY_TABLE"):
        monkeypatch.setenv(name, "t")
    monkeypatch.setenv("RECONCILE_AFTER_MINUTES", "15m")

    with pytest.raises(ValueError, match=r"^RECONCILE_AFTER_MINUTES must be a number, not '15m'"):
        Config.from_env()


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "0x10", "5d", "1e400"])
def test_a_numeric_setting_that_is_no_finite_number_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, raw: str):
    for name in ("ORDERS_TABLE", "INVENTORY_TABLE", "CATALOG_TABLE", "IDEMPOTENCY_TABLE"):
        monkeypatch.setenv(name, "t")
    monkeypatch.setenv("OMS_PICKUP_EXPIRY_DAYS", raw)

    with pytest.raises(ValueError, match=r"^OMS_PICKUP_EXPIRY_DAYS must be a number"):
        Config.from_env()


@pytest.mark.parametrize(
    ("raw", "taken"),
    [
        ("30", 30.0),
        ("2.5", 2.5),
        (".5", 0.5),
        ("1e2", 100.0),
        ("", 7.0),
        (" 5 ", 5.0),
        ("1_0", 10.0),
        ("\u0665", 5.0),
        ("5.", 5.0),
        ("+5", 5.0),
    ],
)
def test_a_numeric_setting_is_taken_as_a_deploy_takes_it(monkeypatch: pytest.MonkeyPatch, raw: str, taken: float):
    # The function sees only what the deploy of its parameter let through, and CloudFormation's
    # grammar of a Number is not documented: a spelling it might take (" 5 ", as Java's number
    # parsing does) must not fail the function. `make run` still refuses what a deploy surely would.
    for name in ("ORDERS_TABLE", "INVENTORY_TABLE", "CATALOG_TABLE", "IDEMPOTENCY_TABLE"):
        monkeypatch.setenv(name, "t")
    monkeypatch.setenv("OMS_PICKUP_EXPIRY_DAYS", raw)

    assert Config.from_env().pickup_expiry_days == taken


def test_duration_settings_up_to_100_years_are_taken():
    settings = {
        "authorization_valid_days": 36500.0,
        "reconcile_after_minutes": 5.5,
        "webhook_retry_window_seconds": 0.0,
    }
    container = bootstrap(CONFIG._replace(**settings), order_repository=FakeOrders(), dynamodb=object())

    assert container.retry_schedule.window_seconds == 0.0
    assert container.pending_refund_sweep is not None
    assert container.actions is not None


@pytest.mark.parametrize("part", ["pending_refund_sweep", "authorization_sweep", "capture_sweep", "jeopardy_scan"])
@pytest.mark.parametrize("minutes", [0.05, 3.0, 5.0])
def test_a_reconcile_wait_of_5_minutes_or_less_is_refused_by_every_pass_that_waits_it(part: str, minutes: float):
    # Only the stalled-orders pass (Reconciler) refused it, naming no setting; the reconciler's
    # other passes and the jeopardy scan took it, each isolated from the failing one, and settled
    # refunds, authorizations and captures of orders whose execution or request may still be running.
    config = CONFIG._replace(
        order_workflow_arn="arn:workflow", returns_table="returns", reconcile_after_minutes=minutes
    )
    container = bootstrap(config, order_repository=FakeOrders(), stepfunctions=object(), dynamodb=object())

    with pytest.raises(ValueError, match=r"^RECONCILE_AFTER_MINUTES must be more than 5 minutes, at most 52560000"):
        getattr(container, part)


@pytest.mark.parametrize("park", [15.0, 10.0])
def test_a_park_wait_not_longer_than_the_restart_wait_is_refused_naming_both(park: float):
    config = CONFIG._replace(order_workflow_arn="arn:workflow", reconcile_park_after_minutes=park)
    container = bootstrap(config, order_repository=FakeOrders(), stepfunctions=object(), dynamodb=object())

    with pytest.raises(
        ValueError, match=r"^RECONCILE_PARK_AFTER_MINUTES must be more than RECONCILE_AFTER_MINUTES \(15\)"
    ):
        _ = container.reconciler


def test_a_warm_container_is_built_once_overridden_for_a_block_and_forgotten_on_request():
    built: list[Container] = []

    def build() -> Container:
        built.append(bootstrap(CONFIG))
        return built[-1]

    warm = WarmContainer(build)
    first = warm()
    assert warm() is first and len(built) == 1

    fake = bootstrap(CONFIG, order_repository=FakeOrders())
    with warm.override(fake):
        assert warm() is fake
    assert warm() is first

    forget_warm_containers()
    assert warm() is not first and len(built) == 2


def test_a_route_runs_on_the_container_a_test_puts_in_place():
    from functions.api.app import lambda_handler
    from functions.api.dependencies import container

    catalog = FakeCatalog()
    catalog.put_product(product("MUG", "4.50"))
    event = {
        "httpMethod": "GET",
        "resource": "/products/{sku}",
        "path": "/products/MUG",
        "pathParameters": {"sku": "MUG"},
        "headers": {},
        "requestContext": {"authorizer": {"key_id": "key_test", "scopes": "orders:read", "channel": ""}},
    }

    with container.override(bootstrap(CONFIG, catalog_repository=catalog)):
        response = lambda_handler(event, _Context())

    assert response["statusCode"] == 200, response["body"]
    assert json.loads(response["body"])["price"] == {"amount": "4.50", "currency": "USD"}


def _product_input() -> Any:
    from core.models import ProductInput
    from tests.builders import product_body

    return ProductInput.model_validate(product_body())


class _Context:
    function_name = "ApiFunction"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


@pytest.mark.parametrize("name", ["OMS_ENABLE_TEST_PAYMENTS", "WEBHOOK_ALLOW_LOCAL_HTTP"])
@pytest.mark.parametrize("raw", ["yes", "1", "on", "ture"])
def test_a_switch_that_is_neither_true_nor_false_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str
):
    # Anything but "true" silently meant false: OMS_ENABLE_TEST_PAYMENTS=yes left every payment
    # declined by no gateway, with nothing naming the setting.
    for table in ("ORDERS_TABLE", "INVENTORY_TABLE", "CATALOG_TABLE", "IDEMPOTENCY_TABLE"):
        monkeypatch.setenv(table, "t")
    monkeypatch.setenv(name, raw)

    with pytest.raises(ValueError, match=rf"^{name} must be true or false, not {raw!r}"):
        Config.from_env()


@pytest.mark.parametrize(
    ("raw", "taken"), [("true", True), ("false", False), ("", False), ("TRUE", True), (" False ", False)]
)
def test_a_switch_is_taken_as_true_or_false(monkeypatch: pytest.MonkeyPatch, raw: str, taken: bool):
    for table in ("ORDERS_TABLE", "INVENTORY_TABLE", "CATALOG_TABLE", "IDEMPOTENCY_TABLE"):
        monkeypatch.setenv(table, "t")
    monkeypatch.setenv("OMS_ENABLE_TEST_PAYMENTS", raw)

    assert Config.from_env().enable_test_payments is taken


@pytest.mark.parametrize(("cache", "expected"), [("300", 5.0), ("5", 5.0), ("0", 0.0), (None, 5.0)])
def test_a_revocation_waits_the_authorizers_timeout_only_where_its_answers_are_cached(
    monkeypatch: pytest.MonkeyPatch, cache: str | None, expected: float
):
    for name, value in {"ORDERS_TABLE": "o", "INVENTORY_TABLE": "i", "CATALOG_TABLE": "c", "IDEMPOTENCY_TABLE": "d",
                        "AUTHORIZER_TIMEOUT_SECONDS": "5"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    if cache is None:
        monkeypatch.delenv("AUTHORIZER_CACHE_SECONDS", raising=False)
    else:
        monkeypatch.setenv("AUTHORIZER_CACHE_SECONDS", cache)

    assert bootstrap(Config.from_env()).authorizer_settle_seconds == expected
    monkeypatch.delenv("AUTHORIZER_TIMEOUT_SECONDS")
    assert bootstrap(Config.from_env()).authorizer_settle_seconds == 0  # not told how long a run lasts: one flush


def test_the_api_function_is_told_the_authorizers_timeout_and_the_stages_cache():
    from infra.local.template import Template

    functions = Template.load().functions()
    told = functions["ApiFunction"]["Environment"]["Variables"]

    assert told["AUTHORIZER_TIMEOUT_SECONDS"] == str(functions["AuthorizerFunction"]["Timeout"])
    assert told["AUTHORIZER_CACHE_SECONDS"] == {"Ref": "AuthorizerCacheSeconds"}

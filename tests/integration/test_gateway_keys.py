"""Per-key usage plans on moto: POST /api-keys gives a key its own API Gateway key in the stage's
per-key plan, DELETE /api-keys/{id} deletes it, a gateway failure leaves no OMS key, the backfill
gives keys issued before theirs; the authorizer answers each key's gateway key as usageIdentifierKey
(its own, or the stage's shared one)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from core.access import NewApiKey, Scope
from core.errors import TransientError
from core.ports import ApiStage

STAGE = ApiStage(api_id="abc123", name="v1")  # events/authorizer_request.json's
PLAN = "oms-test-per-key"
SHARED = "oms-test-123456789012-shared"
EVENTS = Path(__file__).resolve().parents[2] / "events"


class Context:
    function_name = "AuthorizerFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:AuthorizerFunction"
    aws_request_id = "test-request"


@pytest.fixture
def gateway(aws, monkeypatch) -> Any:
    """moto's API Gateway with the per-key plan on the stage (and another plan of that name on
    another stage, which is not it), the functions told its name and the shared key's value."""
    client = boto3.client("apigateway", region_name="us-east-1")
    client.create_usage_plan(name=PLAN, apiStages=[{"apiId": "other", "stage": "v1"}])
    plan = client.create_usage_plan(
        name=PLAN, apiStages=[{"apiId": STAGE.api_id, "stage": STAGE.name}], throttle={"rateLimit": 5, "burstLimit": 10}
    )
    monkeypatch.setenv("GATEWAY_KEY_PLAN", PLAN)
    monkeypatch.setenv("GATEWAY_SHARED_KEY", SHARED)
    client.plan_id = plan["id"]
    return client


def keys(service) -> list[Any]:
    return service.list(100, None)[0]


def plan_keys(client) -> dict[str, str]:
    return {k["id"]: k["value"] for k in client.get_usage_plan_keys(usagePlanId=client.plan_id)["items"]}


def gateway_key_ids(client) -> set[str]:
    return {k["id"] for k in client.get_api_keys()["items"]}


def authorize(secret: str) -> dict[str, Any]:
    from functions.authorizer.app import lambda_handler

    event = json.loads((EVENTS / "authorizer_request.json").read_text())
    event["headers"] = {"Authorization": f"Bearer {secret}"}
    event["multiValueHeaders"] = {"Authorization": [f"Bearer {secret}"]}
    return lambda_handler(event, Context())


def service():
    from functions.api.dependencies import container

    return container().api_keys


def test_a_new_key_gets_its_own_gateway_key_in_the_stages_per_key_plan(gateway, aws):
    issued = service().issue(NewApiKey(name="storefront", scopes=[Scope.ORDERS_READ]), stage=STAGE)

    (own,) = plan_keys(gateway).items()
    assert gateway.get_api_key(apiKey=own[0])["name"] == issued.id
    assert authorize(issued.key)["usageIdentifierKey"] == own[1]
    # Never shown: not in the answer, not in the list.
    assert own[1] not in json.dumps(issued.model_dump(mode="json"))
    assert own[1] not in json.dumps([k.model_dump(mode="json") for k in keys(service())])


def test_post_api_keys_gives_the_key_one_in_the_plan_of_the_stage_that_served_it(gateway, aws):
    from functions.api.app import lambda_handler
    from tests.integration.test_handlers import Context as ApiContext
    from tests.integration.test_handlers import ensure_admin_key, event

    ensure_admin_key("oms_sample_admin_key_0123456789")
    request = event("api_get_order.json")
    request.update(httpMethod="POST", path="/api-keys", resource="/api-keys", pathParameters=None)
    request["body"] = json.dumps({"name": "warehouse", "scopes": ["fulfillment:write"]})
    request["requestContext"].update(
        apiId=STAGE.api_id, stage=STAGE.name, httpMethod="POST", resourcePath="/api-keys", path="/v1/api-keys"
    )
    response = lambda_handler(request, ApiContext())

    assert response["statusCode"] == 201, response["body"]
    issued = json.loads(response["body"])
    assert authorize(issued["key"])["usageIdentifierKey"] in plan_keys(gateway).values()


def test_revoking_a_key_deletes_its_gateway_key(gateway, aws):
    issued = service().issue(NewApiKey(name="gone", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    (own_id,) = plan_keys(gateway)

    # (No stage: moto has no API abc123 whose authorizer cache a revocation would flush.)
    service().revoke(issued.id)
    assert own_id not in gateway_key_ids(gateway)
    service().revoke(issued.id)  # again: gone already is no error


def test_a_gateway_failure_leaves_no_key_and_nothing_made_at_the_gateway(gateway, aws, monkeypatch):
    from functions.api.dependencies import container

    client = container().apigateway
    refused = ClientError({"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}}, "CreateUsagePlanKey")
    monkeypatch.setattr(client, "create_usage_plan_key", lambda **kwargs: (_ for _ in ()).throw(refused))
    before = [k.id for k in keys(service())]

    with pytest.raises(TransientError):
        service().issue(NewApiKey(name="half", scopes=[Scope.ORDERS_READ]), stage=STAGE)

    assert [k.id for k in keys(service())] == before
    assert gateway_key_ids(gateway) == set()  # the key made before the plan refused it, deleted


def test_a_key_that_could_not_be_stored_has_its_gateway_key_deleted(gateway, aws, monkeypatch):
    from functions.api.dependencies import container

    repository = container().api_keys._keys
    failed = ClientError({"Error": {"Code": "InternalServerError", "Message": "down"}}, "PutItem")
    monkeypatch.setattr(repository, "add", lambda *args, **kwargs: (_ for _ in ()).throw(failed))

    with pytest.raises(ClientError):
        service().issue(NewApiKey(name="unstored", scopes=[Scope.ORDERS_READ]), stage=STAGE)

    assert gateway_key_ids(gateway) == set()


def test_without_per_key_plans_a_key_gets_no_gateway_key_and_is_answered_the_shared_one(gateway, aws, monkeypatch):
    from functions.bootstrap import forget_warm_containers

    monkeypatch.setenv("GATEWAY_KEY_PLAN", "")
    forget_warm_containers()
    issued = service().issue(NewApiKey(name="plain", scopes=[Scope.ORDERS_READ]), stage=STAGE)

    assert gateway_key_ids(gateway) == set()
    assert authorize(issued.key)["usageIdentifierKey"] == SHARED


def test_a_keys_own_gateway_key_is_not_answered_while_per_key_plans_are_off(gateway, aws, monkeypatch):
    # Switched off, the plan is gone: its keys are in none, so the shared one meters every key.
    issued = service().issue(NewApiKey(name="before", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    monkeypatch.setenv("GATEWAY_KEY_PLAN", "")

    assert authorize(issued.key)["usageIdentifierKey"] == SHARED


def test_the_backfill_gives_each_key_issued_before_its_own_once(gateway, aws, monkeypatch):
    from functions.bootstrap import forget_warm_containers

    monkeypatch.setenv("GATEWAY_KEY_PLAN", "")
    forget_warm_containers()
    before = service().issue(NewApiKey(name="old", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    revoked = service().issue(NewApiKey(name="revoked", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    service().revoke(revoked.id)
    monkeypatch.setenv("GATEWAY_KEY_PLAN", PLAN)
    forget_warm_containers()
    assert authorize(before.key)["usageIdentifierKey"] == SHARED

    assert service().give_gateway_keys(STAGE) == (1, 0, 0)
    (own_value,) = plan_keys(gateway).values()
    assert authorize(before.key)["usageIdentifierKey"] == own_value
    assert service().give_gateway_keys(STAGE) == (0, 1, 0)  # a second run gives none
    assert len(plan_keys(gateway)) == 1


def test_the_backfill_command_gives_the_keys_theirs_and_says_how_many(gateway, aws, monkeypatch, capsys):
    from functions.bootstrap import forget_warm_containers
    from infra.backfill_gateway_keys import main

    monkeypatch.setenv("GATEWAY_KEY_PLAN", "")
    forget_warm_containers()
    before = service().issue(NewApiKey(name="old", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    arguments = ["--catalog-table", aws.tables["CatalogTable"], "--api-id", STAGE.api_id, "--stage", STAGE.name]

    main([*arguments, "--usage-plan", PLAN])
    assert capsys.readouterr().out.startswith("1 keys given a gateway key of their own, 0 already had one")

    monkeypatch.setenv("GATEWAY_KEY_PLAN", PLAN)
    assert authorize(before.key)["usageIdentifierKey"] in plan_keys(gateway).values()


def test_the_backfill_command_for_a_table_that_is_not_there_names_it_and_the_region(gateway, aws, monkeypatch, capsys):
    # Before: a botocore traceback ending "ResourceNotFoundException ... Query operation: Requested
    # resource not found", naming neither the table nor the region it was looked for in.
    from infra.backfill_gateway_keys import main

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    arguments = ["--catalog-table", "CatalogTable", "--api-id", STAGE.api_id, "--stage", STAGE.name]

    with pytest.raises(SystemExit) as refused:
        main([*arguments, "--usage-plan", PLAN])

    assert refused.value.code == 1
    assert capsys.readouterr().err.endswith(
        ": error: no table CatalogTable in us-east-1: name the stack's Catalog table, in the stack's region "
        "(AWS_DEFAULT_REGION or the profile's)\n"
    )


def test_the_backfill_passes_a_key_revoked_while_it_runs(gateway, aws, monkeypatch):
    # The backfill lists the keys, then a revocation deletes one's gateway key before the backfill
    # puts it in the plan: that key is passed (API Gateway answers NotFound), the rest are served.
    from functions.bootstrap import forget_warm_containers

    revoking = service().issue(NewApiKey(name="revoking", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    monkeypatch.setenv("GATEWAY_KEY_PLAN", "")
    forget_warm_containers()
    before = service().issue(NewApiKey(name="old", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    monkeypatch.setenv("GATEWAY_KEY_PLAN", PLAN)
    forget_warm_containers()
    keys_service = service()
    repository = keys_service._keys
    listed = repository.active_gateway_keys

    def listed_then_revoked() -> list[Any]:
        found = listed()
        keys_service.revoke(revoking.id)
        return found

    monkeypatch.setattr(repository, "active_gateway_keys", listed_then_revoked)

    assert keys_service.give_gateway_keys(STAGE) == (1, 0, 1)
    (own_id,) = gateway_key_ids(gateway)  # the revoked key's is not made again
    assert gateway.get_api_key(apiKey=own_id)["name"] == before.id
    assert authorize(before.key)["usageIdentifierKey"] == plan_keys(gateway)[own_id]


def test_the_backfill_passes_a_key_whose_issue_stored_its_record_only(gateway, aws, monkeypatch):
    # POST /api-keys stored the key's record (naming its gateway key), then failed on its lookup:
    # the issue deleted the gateway key, and the record, which no secret reaches, names one gone.
    # Every backfill run after it must still serve the other keys.
    from functions.bootstrap import forget_warm_containers

    repository = service()._keys
    transact = repository._client.transact_write_items
    down = ClientError({"Error": {"Code": "InternalServerError", "Message": "down"}}, "TransactWriteItems")

    def lookup_refused(**kwargs: Any) -> Any:
        if any(
            item.get("Put", {}).get("Item", {}).get("pk", {}).get("S", "").startswith("APIKEY#")
            for item in kwargs["TransactItems"]
        ):
            raise down
        return transact(**kwargs)

    monkeypatch.setattr(repository._client, "transact_write_items", lookup_refused)
    with pytest.raises(ClientError):
        service().issue(NewApiKey(name="half", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    monkeypatch.setattr(repository._client, "transact_write_items", transact)
    assert gateway_key_ids(gateway) == set()
    monkeypatch.setenv("GATEWAY_KEY_PLAN", "")
    forget_warm_containers()
    before = service().issue(NewApiKey(name="old", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    monkeypatch.setenv("GATEWAY_KEY_PLAN", PLAN)
    forget_warm_containers()

    assert service().give_gateway_keys(STAGE) == (1, 0, 1)
    assert service().give_gateway_keys(STAGE) == (0, 1, 1)  # and again: nothing twice, no failure
    assert authorize(before.key)["usageIdentifierKey"] in plan_keys(gateway).values()


def test_two_backfills_side_by_side_leave_each_key_one_gateway_key(gateway, aws, monkeypatch):
    # A second run starts and ends while the first is making a key's gateway key: the first's is
    # refused by the record, which names the second's, and deleted.
    from functions.bootstrap import forget_warm_containers

    monkeypatch.setenv("GATEWAY_KEY_PLAN", "")
    forget_warm_containers()
    before = service().issue(NewApiKey(name="old", scopes=[Scope.ORDERS_READ]), stage=STAGE)
    monkeypatch.setenv("GATEWAY_KEY_PLAN", PLAN)
    forget_warm_containers()
    first = service()
    forget_warm_containers()
    second = service()  # another process's: its own clients and plan lookup
    create = first._gateway_keys.create
    results = []

    def create_meanwhile_another_run(name: str, stage: ApiStage) -> Any:
        made = create(name, stage)
        results.append(second.give_gateway_keys(stage))
        return made

    monkeypatch.setattr(first._gateway_keys, "create", create_meanwhile_another_run)

    assert first.give_gateway_keys(STAGE) == (0, 0, 0)
    assert results == [(1, 0, 0)]
    (own_id,) = gateway_key_ids(gateway)
    assert authorize(before.key)["usageIdentifierKey"] == plan_keys(gateway)[own_id]

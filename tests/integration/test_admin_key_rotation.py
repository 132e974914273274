"""The deploy guide's key rotation, `python -m infra.admin_key`: the new secret works, the old one stops."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from infra import admin_key

AUTHORIZER_EVENT = json.loads((Path(__file__).resolve().parents[2] / "events" / "authorizer_request.json").read_text())


class Context:
    function_name = "AuthorizerFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:AuthorizerFunction"
    aws_request_id = "test-request"


def _rotate(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    monkeypatch.setattr(sys, "argv", ["python -m infra.admin_key", *args])
    admin_key.main()
    return capsys.readouterr().out.strip()


def _authorize(secret: str) -> dict:
    from functions.authorizer.app import lambda_handler

    header = f"Bearer {secret}"
    evt = {**AUTHORIZER_EVENT, "headers": {"Authorization": header}, "multiValueHeaders": {"Authorization": [header]}}
    return lambda_handler(evt, Context())


def test_rotating_the_admin_key_retires_the_previous_secret(aws, monkeypatch, capsys):
    table = aws.tables["CatalogTable"]
    first = _rotate(monkeypatch, capsys, "--table", table)
    second = _rotate(monkeypatch, capsys, "--table", table)

    assert first != second
    assert _authorize(second)["principalId"] == "key_admin"
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        _authorize(first)


def test_a_chosen_admin_secret_is_stored_and_a_short_one_refused(aws, monkeypatch, capsys):
    table = aws.tables["CatalogTable"]
    assert (
        _rotate(monkeypatch, capsys, "--table", table, "--key", "chosen_admin_secret_0123")
        == "chosen_admin_secret_0123"
    )
    assert _authorize("chosen_admin_secret_0123")["principalId"] == "key_admin"
    with pytest.raises(SystemExit):
        _rotate(monkeypatch, capsys, "--table", table, "--key", "too_short")
    assert _authorize("chosen_admin_secret_0123")["principalId"] == "key_admin"


@pytest.mark.parametrize(
    "chosen", ["chosen.admin+secret/0123", "chosen admin secret 0123", "chosen_admin_secret_" + "x" * 200]
)
def test_a_chosen_admin_secret_the_authorizer_cannot_read_is_refused_and_the_previous_one_kept(
    aws, monkeypatch, capsys, chosen: str
):
    # The authorizer reads a bearer key of 16-200 characters of A-Z, a-z, 0-9, "_" and "-" only:
    # stored, any other secret locked the admin out (it was refused, and the previous one retired).
    table = aws.tables["CatalogTable"]
    previous = _rotate(monkeypatch, capsys, "--table", table)

    with pytest.raises(SystemExit):
        _rotate(monkeypatch, capsys, "--table", table, "--key", chosen)

    assert _authorize(previous)["principalId"] == "key_admin"


def test_a_secret_the_authorizer_cannot_read_is_refused_by_the_key_service_itself(aws):
    # Whatever calls it (the rotation script and `make run` check first), a secret stored that the
    # authorizer refuses would retire the working admin secret and lock the admin out.
    from functions.api.dependencies import container

    container().api_keys.ensure_admin("previous_admin_secret_0123")

    with pytest.raises(ValueError):
        container().api_keys.ensure_admin("too short")
    assert _authorize("previous_admin_secret_0123")["principalId"] == "key_admin"


class _LookupWriteFails:
    """The Catalog table's client, except that writing an API key's lookup item fails (a rotation
    stopped half-way: a throttle, a timeout, the operator's Ctrl-C)."""

    def __init__(self, client):
        self._client = client

    def transact_write_items(self, **request):
        if any(
            item.get("Put", {}).get("Item", {}).get("pk", {}).get("S", "").startswith("APIKEY#")
            for item in request["TransactItems"]
        ):
            raise ConnectionError("the rotation stopped here")
        return self._client.transact_write_items(**request)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_rotation_that_stopped_half_way_and_is_run_again_retires_the_previous_secret(aws):
    from core.services import ApiKeyService
    from functions.adapters.dynamodb import DynamoApiKeys

    table = aws.tables["CatalogTable"]
    ApiKeyService(DynamoApiKeys(aws.dynamodb, table)).ensure_admin("leaked_admin_secret_0123")
    with pytest.raises(ConnectionError):
        ApiKeyService(DynamoApiKeys(_LookupWriteFails(aws.dynamodb), table)).ensure_admin("stopped_admin_secret_0123")

    # The operator runs the rotation again (with a new random secret, as infra.admin_key does).
    ApiKeyService(DynamoApiKeys(aws.dynamodb, table)).ensure_admin("fresh_admin_secret_01234")

    assert _authorize("fresh_admin_secret_01234")["principalId"] == "key_admin"
    for retired in ("leaked_admin_secret_0123", "stopped_admin_secret_0123"):
        with pytest.raises(Exception, match=r"^Unauthorized$"):
            _authorize(retired)


def test_a_chosen_admin_secret_that_is_another_keys_is_refused_and_both_keys_kept(aws, monkeypatch, capsys):
    # The storefront's secret at hand as `--key`: stored, it made the storefront's key the admin's.
    from core.access import NewApiKey, Scope
    from core.services import ApiKeyService
    from functions.adapters.dynamodb import DynamoApiKeys

    table = aws.tables["CatalogTable"]
    previous = _rotate(monkeypatch, capsys, "--table", table)
    shop = ApiKeyService(DynamoApiKeys(aws.dynamodb, table)).issue(NewApiKey(name="shop", scopes=[Scope.ORDERS_READ]))

    with pytest.raises(SystemExit) as refused:
        _rotate(monkeypatch, capsys, "--table", table, "--key", shop.key)

    assert refused.value.code != 0
    assert shop.key not in capsys.readouterr().out
    assert _authorize(previous)["principalId"] == "key_admin"
    assert _authorize(shop.key)["context"] == {
        "key_id": shop.id,
        "scopes": "orders:read",
        "channel": "",
        "location_ids": "",
    }


def test_an_admin_key_for_a_table_that_is_not_there_names_the_table_and_the_region(aws, monkeypatch, capsys):
    # A first deployer whose shell's region is not the one `sam deploy --guided` saved in
    # samconfig.toml, or who typed the logical id for the output's name. Before: a botocore
    # traceback ending "ResourceNotFoundException ... GetItem operation: Requested resource not
    # found", which named neither the table nor the region it was looked for in.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(SystemExit) as refused:
        _rotate(monkeypatch, capsys, "--table", "CatalogTable")

    assert refused.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "python -m infra.admin_key: error: no table CatalogTable in us-east-1: name the stack's "
        "CatalogTableName output, in the stack's region (AWS_DEFAULT_REGION or the profile's)\n"
    )

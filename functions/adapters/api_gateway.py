"""API Gateway: a stage's authorizer cache flushed on a revocation, and per-key usage plans' API keys."""

from __future__ import annotations

import contextlib
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.errors import TransientError
from core.ports import ApiStage, AuthorizerCache, GatewayKey, GatewayKeys


class ApiGatewayAuthorizerCache(AuthorizerCache):
    def __init__(self, client: Any):
        self._client = client

    def flush(self, stage: ApiStage) -> None:
        try:
            self._client.flush_stage_authorizers_cache(restApiId=stage.api_id, stageName=stage.name)
        except (ClientError, BotoCoreError) as error:
            # The key is revoked in the table already; only the cache may still let it in, for at
            # most AuthorizerCacheSeconds. Repeating the DELETE flushes again.
            raise TransientError(
                "the key is revoked but the gateway's authorizer cache could not be flushed: "
                "repeat the request to revoke it at once"
            ) from error


_NOT_MADE = "API Gateway did not make the key's usage plan key, so no key was issued: repeat the request"


class ApiGatewayKeys(GatewayKeys):
    """Each OMS key's own API Gateway key, in the stage's per-key usage plan (template.yaml's
    KeyUsagePlan), found by its name: the plan's id cannot be in the function's environment (the
    plan names the API, which refers to the function: a cycle)."""

    def __init__(self, client: Any, plan_name: str):
        self._client = client
        self._plan_name = plan_name
        self._plan_ids: dict[ApiStage, str] = {}  # kept while warm: a plan's id never changes

    def _plan_id(self, stage: ApiStage) -> str:
        if stage not in self._plan_ids:
            for page in self._client.get_paginator("get_usage_plans").paginate():
                for plan in page.get("items", []):
                    stages = {(s.get("apiId"), s.get("stage")) for s in plan.get("apiStages", [])}
                    if plan.get("name") == self._plan_name and (stage.api_id, stage.name) in stages:
                        self._plan_ids[stage] = plan["id"]
                        break
            if stage not in self._plan_ids:
                # The deploy's mistake, not the caller's: GATEWAY_KEY_PLAN names a plan the stage lacks.
                raise RuntimeError(f"no usage plan {self._plan_name!r} on stage {stage.name} of API {stage.api_id}")
        return self._plan_ids[stage]

    def create(self, name: str, stage: ApiStage) -> GatewayKey:
        plan_id = self._plan_id(stage)
        try:
            # API Gateway makes the value (random, 40 characters) when none is given.
            made = self._client.create_api_key(name=name, enabled=True)
        except (ClientError, BotoCoreError) as error:
            raise TransientError(_NOT_MADE) from error
        try:
            self._client.create_usage_plan_key(usagePlanId=plan_id, keyId=made["id"], keyType="API_KEY")
        except (ClientError, BotoCoreError) as error:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.delete_api_key(apiKey=made["id"])
            raise TransientError(_NOT_MADE) from error
        return GatewayKey(made["id"], made["value"])

    def add_to_plan(self, key_id: str, stage: ApiStage) -> bool:
        try:
            self._client.create_usage_plan_key(usagePlanId=self._plan_id(stage), keyId=key_id, keyType="API_KEY")
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code == "NotFoundException":  # the key is gone (the plan is found above)
                return False
            if code != "ConflictException":  # in the plan already
                raise
        return True

    def delete(self, key_id: str) -> None:
        try:
            self._client.delete_api_key(apiKey=key_id)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "NotFoundException":
                return  # deleted already: a repeated revoke
            raise TransientError(
                "the key is revoked but its usage plan key could not be deleted: repeat the request"
            ) from error
        except BotoCoreError as error:
            raise TransientError(
                "the key is revoked but its usage plan key could not be deleted: repeat the request"
            ) from error

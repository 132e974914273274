"""API Gateway's cache of authorizer answers, flushed when a key is revoked (FlushStageAuthorizersCache)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.errors import TransientError
from core.ports import ApiStage, AuthorizerCache


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

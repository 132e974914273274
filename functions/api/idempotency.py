"""Idempotency-Key support for POST routes, through powertools idempotency on DynamoDB.

Imported only when a request carries the header, so requests without one do not pay for it.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.shared.json_encoder import Encoder
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.serialization.base import BaseIdempotencySerializer
from botocore.exceptions import ClientError

from core.errors import Conflict, TransientError
from functions.adapters import order_codec
from functions.adapters.aws_errors import busy
from functions.api.app import logger
from functions.api.dependencies import container

TTL_SECONDS = 24 * 60 * 60


class DeflatedAnswers(BaseIdempotencySerializer):
    """An answer as a key's record keeps it: its JSON deflated with the preset dictionary of an
    order's item (functions/adapters/order_codec.py), in base64 under one field, as powertools
    stores the record's `data` as a string. Written when the request completes, the record is
    billed per started KB: an order's answer as plain JSON (~1.7 KB) made it two write units,
    deflated one (README, Decisions: "An Idempotency-Key's record keeps its answer deflated"). An
    answer that deflating would not make shorter (a webhook's id) is kept as it is."""

    FIELD = "deflated"

    def to_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        text = json.dumps(data, cls=Encoder, separators=(",", ":"), ensure_ascii=False).encode()
        deflated = base64.b64encode(order_codec.compress(text)).decode()
        return {self.FIELD: deflated} if len(deflated) < len(text) else data

    def from_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.keys() == {self.FIELD} and isinstance(data[self.FIELD], str):
            return json.loads(order_codec.decompress(data[self.FIELD]))
        # Kept as it is: a short answer, or one stored before answers were deflated (24 h after the
        # deploy that began deflating them). No answer is an object of that one field.
        return data


class PlainAnswers(DeflatedAnswers):
    """An answer kept as it is, read either way (PlainIdempotencyRecords true): the first deploy of
    an upgrade from a release that reads plain answers only, whose canary's old version (or a
    rollback to it) would answer a retry under a deflated record's key 500."""

    def to_dict(self, data: dict[str, Any]) -> dict[str, Any]:
        return data


ANSWERS = DeflatedAnswers()
PLAIN_ANSWERS = PlainAnswers()


# One runner per persistence layer (powertools: an instance keeps the first config it sees), i.e.
# per container; a few are kept so that a test's container and a stack's can alternate.
@functools.lru_cache(maxsize=4)
def _runner(
    persistence: DynamoDBPersistenceLayer, plain: bool = False
) -> tuple[Callable[..., dict[str, Any]], IdempotencyConfig]:
    config = IdempotencyConfig(
        event_key_jmespath="key",
        payload_validation_jmespath="payload",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=TTL_SECONDS,
    )

    @idempotent_function(
        data_keyword_argument="request",
        config=config,
        persistence_store=persistence,
        output_serializer=PLAIN_ANSWERS if plain else ANSWERS,
    )
    def run(request: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return compute()

    return run, config


def once(
    route: str,
    caller_key_id: str,
    key: str,
    payload: Any,
    compute: Callable[[], dict[str, Any]],
    lambda_context: Any,
) -> dict:
    """Run `compute` once per (route, caller, key) for 24 h and replay its result after that.
    A failure stores nothing, so a corrected retry with the same key runs again."""
    request = {"key": f"{route}#{caller_key_id}#{key}", "payload": payload}
    built = container()
    runner, config = _runner(built.idempotency_store, built.config.plain_idempotency_records)
    # Lets powertools expire an in-progress record when this invocation times out.
    config.register_lambda_context(lambda_context)
    outcome: dict[str, Any] = {}

    def computed() -> dict[str, Any]:
        try:
            outcome["result"] = compute()
        except Exception as error:
            outcome["error"] = error
            raise
        return outcome["result"]

    try:
        return runner(request=request, compute=computed)
    except IdempotencyPersistenceLayerError as failed:
        # The idempotency table failed the request (throttled, down) around `compute`, not within it.
        if "error" in outcome:
            # Its refusal stands (it changed nothing); only its record could not be deleted, which
            # expires with this invocation: a retry meanwhile is 409 request_in_progress.
            raise outcome["error"] from None
        if "result" in outcome:
            # Made, and only the record saying so was not saved: the answer is what it made, never a
            # 500 read as "failed" (an order placed, a refund made). The record left in progress
            # expires with this invocation; a retry after it runs again and finds that change by its
            # own keys (the order's id or created entry, the cancel's or hold's entry, the refund's id).
            logger.warning("idempotency record not saved: the request's change is answered", extra={"route": route})
            return outcome["result"]
        cause = failed.__cause__
        if isinstance(cause, ClientError) and busy(cause):
            # Not started: nothing was changed, and the same request may be repeated (503, Retry-After).
            raise TransientError("the OMS is busy: repeat the request shortly") from failed
        raise
    except IdempotencyValidationError:
        raise Conflict(
            "this Idempotency-Key was used with a different request body",
            code="idempotency_key_reused",
            details=[{"field": "Idempotency-Key", "message": "reuse a key only to retry the same request"}],
        ) from None
    except IdempotencyAlreadyInProgressError:
        raise Conflict(
            "a request with this Idempotency-Key is still being processed",
            code="request_in_progress",
            details=[{"field": "Idempotency-Key", "message": "retry after the first request completes"}],
        ) from None

"""API keys: issue, list, revoke (admin only)."""

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router

from core.access import ApiKey, IssuedApiKey, NewApiKey, Scope
from core.models import Shown
from core.ports import ApiStage
from functions.api.access import caller, requires
from functions.api.app import logger
from functions.api.dependencies import container
from functions.api.paths import existing
from functions.api.queries import Cursor, Limit
from functions.api.schemas import errors, ok

router = Router()

KeyIdPath = existing("API key", r"^key_[a-z0-9]{1,40}$", "API key id")


class ApiKeyPage(Shown):
    items: list[ApiKey]
    next_cursor: str | None = None


@router.post(
    "/api-keys",
    summary="Issue an API key (its secret is shown only in this response)",
    description="409 `api_key_replaced` when another admin revoked the key (or another issue replaced its secret) "
    "while it was being stored: its secret never works, and nothing else changed.",
    responses={**ok(201, IssuedApiKey, "The key, with its secret"), **errors(400, 403, 409, 413)},
)
@requires(Scope.ADMIN)
def issue_api_key(request: NewApiKey) -> Response[IssuedApiKey]:
    who = caller(router)
    # With per-key usage plans, the key's own API Gateway key goes in this stage's plan.
    context = router.current_event.request_context
    stage = ApiStage(api_id=context.api_id, name=context.stage)
    issued = container().api_keys.issue(request, created_by=who.key_id, stage=stage)
    # Who minted which credential, with what reach (never its secret): API Gateway's access log
    # names the route only.
    logger.info(
        "api key issued",
        extra={
            "api_key_id": issued.id,
            "key_id": who.key_id,
            "scopes": issued.scopes,
            "api_key_channel": issued.channel,
            "api_key_location_ids": issued.location_ids,
        },
    )
    return Response(201, content_types.APPLICATION_JSON, issued)


@router.get(
    "/api-keys",
    summary="List API keys (never their secrets)",
    responses={**ok(200, ApiKeyPage, "A page of keys"), **errors(403)},
)
@requires(Scope.ADMIN)
def list_api_keys(
    limit: Limit = 25,
    cursor: Cursor = None,
) -> ApiKeyPage:
    items, next_cursor = container().api_keys.list(limit, cursor)
    return ApiKeyPage(items=items, next_cursor=next_cursor)


@router.delete(
    "/api-keys/<key_id>",
    summary="Revoke an API key at once",
    responses={204: {"description": "Revoked"}, **errors(403, 404, 409)},
)
@requires(Scope.ADMIN)
# No return annotation: powertools would try to build a response schema from a bare Response.
def revoke_api_key(key_id: KeyIdPath):
    # The stage that served this request is the one whose authorizer cache may still hold the key:
    # read from the request, as the API's id cannot be in the function's environment (the API
    # refers to the function, so the function may not refer to the API: a template cycle).
    context = router.current_event.request_context
    who = caller(router)
    revoked = container().api_keys.revoke(
        key_id, by=who.key_id, stage=ApiStage(api_id=context.api_id, name=context.stage)
    )
    # A DELETE sent again (by another admin, or to flush again) names the key that did revoke it,
    # as the key records it: the line alone must not make the sender look like the one who cut it off.
    logger.info("api key revoked", extra={"api_key_id": key_id, "key_id": who.key_id, "revoked_by": revoked.revoked_by})
    return Response(204, content_types.APPLICATION_JSON, "")

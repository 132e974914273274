"""Health and the API's own description."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.models import Server
from pydantic import BaseModel

from functions.api.access import PUBLIC, requires

router = Router()


class Health(BaseModel):
    status: str


@router.get("/health", summary="Liveness", include_in_schema=True)
@requires(PUBLIC)
def health() -> Health:
    return Health(status="ok")


@router.get("/openapi.json", summary="This OpenAPI document", include_in_schema=False)
@requires(PUBLIC)
# No return annotation: powertools would try to build a response schema from a bare Response.
def openapi():
    from functions.api.app import app

    # The same servers entry Swagger UI at /docs uses: the stage, when the URL carries it.
    context = router.current_event.request_context
    stage_prefix = f"/{context.stage}"
    base = stage_prefix if context.stage and (context.path or "").startswith(stage_prefix) else "/"
    return Response(200, content_types.APPLICATION_JSON, app.get_openapi_json_schema(servers=[Server(url=base)]))
